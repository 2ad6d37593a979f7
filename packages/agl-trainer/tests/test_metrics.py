"""Metrics of a fit: metrics.jsonl and reward.png in the output directory, written by the trainer's
built-in observer through the same hooks a third-party plugin observes."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from step_log import StepLog

from agl.core.agent import rollout
from agl.core.store.base import LightningStore
from agl.trainer import Algorithm, AlgorithmContext, Trainer
from agl.trainer.metrics import reward_series
from agl.trainer.progress import ProgressDisplay

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@rollout
def reward_is_x(task: dict[str, Any]) -> float:
    return float(task["x"])


class ThreeSteps(Algorithm):
    """Runs the train and val datasets three times, a step each, so the chart has a line to draw."""

    async def run(self, context: AlgorithmContext) -> None:
        for step in range(3):
            metrics: dict[str, float] = {}
            for mode, dataset in (("train", context.train_dataset), ("val", context.val_dataset or [])):
                rollouts = await context.enqueue_and_wait(dataset, mode)
                rewards = [await context.reward(r) or 0.0 for r in rollouts]
                metrics[f"{mode}/reward_mean"] = sum(rewards) / len(rewards) + step
            context.log_step(step, metrics)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_baseline_writes_its_step_and_a_reward_chart(store: LightningStore, tmp_path: Path) -> None:
    trainer = Trainer("baseline", store=store, output_dir=tmp_path / "run")
    await trainer.fit_async(reward_is_x, [{"x": 1}, {"x": 0}], [{"x": 0.5}])
    [record] = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert isinstance(record.pop("time"), float)
    assert record == {
        "step": 0,
        "train/rollouts": 2.0,
        "train/succeeded": 2.0,
        "train/reward_mean": 0.5,
        "val/rollouts": 1.0,
        "val/succeeded": 1.0,
        "val/reward_mean": 0.5,
    }
    assert (tmp_path / "run" / "reward.png").read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.jsonl", "reward.png"]


async def test_a_plugin_sees_the_steps_in_order_as_metrics_jsonl_has_them(
    store: LightningStore, tmp_path: Path
) -> None:
    recorder = StepLog()
    trainer = Trainer(ThreeSteps(), store=store, plugins=[recorder], output_dir=tmp_path)
    await trainer.fit_async(reward_is_x, [{"x": 1}, {"x": 0}], [{"x": 0.25}])
    assert recorder.seen == [
        (0, {"train/reward_mean": 0.5, "val/reward_mean": 0.25}),
        (1, {"train/reward_mean": 1.5, "val/reward_mean": 1.25}),
        (2, {"train/reward_mean": 2.5, "val/reward_mean": 2.25}),
    ]
    written = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], {k: v for k, v in r.items() if k.endswith("reward_mean")}) for r in written] == recorder.seen
    assert (tmp_path / "reward.png").read_bytes().startswith(PNG_SIGNATURE)
    assert trainer.plugins.get_plugins() >= {recorder}  # the built-in observer was for this fit only
    assert not any(type(p).__name__ == "MetricsWriter" for p in trainer.plugins.get_plugins())


async def test_without_an_output_dir_nothing_is_written(
    store: LightningStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    await Trainer("baseline", store=store).fit_async(reward_is_x, [{"x": 1}])
    assert list(tmp_path.iterdir()) == []


async def test_without_matplotlib_the_chart_is_skipped_with_one_line(
    store: LightningStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ["matplotlib", *(m for m in sys.modules if m.startswith("matplotlib."))]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it raises ImportError
    with caplog.at_level(logging.INFO, logger="agl.trainer.metrics"):
        await Trainer("baseline", store=store, output_dir=tmp_path).fit_async(reward_is_x, [{"x": 1}])
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    assert [r.message for r in caplog.records if r.name == "agl.trainer.metrics"] == [
        "matplotlib is not installed (pip install 'agl-trainer[charts]'): no reward chart"
    ]


async def test_the_progress_display_counts_rollouts_and_steps_and_prints_each_step(store: LightningStore) -> None:
    shown = io.StringIO()
    display = ProgressDisplay(Console(file=shown, width=80))  # not a terminal: plain lines, as in a log
    await Trainer(ThreeSteps(), store=store, plugins=[display]).fit_async(reward_is_x, [{"x": 1}], [{"x": 0}])
    rollouts, steps = display.progress.tasks
    assert (rollouts.completed, steps.completed) == (6, 3)
    assert display.progress.live.is_started is False
    assert [line for line in shown.getvalue().splitlines() if line.startswith("step")] == [
        f"step {step}  train/reward_mean {step + 1}  val/reward_mean {step}" for step in range(3)
    ]


class NotFiniteStep(Algorithm):
    """Logs a step whose loss diverged (NaN), whose gradient norm overflowed, and whose reward is fine."""

    async def run(self, context: AlgorithmContext) -> None:
        rollouts = await context.enqueue_and_wait(context.train_dataset, "train")
        reward = await context.reward(rollouts[0])
        context.log_step(0, {"loss": float("nan"), "grad_norm": float("inf"), "train/reward_mean": reward or 0.0})
        context.log_step(1, {"train/reward_mean": float("-inf")})


def refuse_constant(name: str) -> None:
    raise ValueError(f"not JSON: {name}")


@pytest.mark.parametrize("url", ["memory://", "sqlite"])
async def test_a_metric_that_is_not_finite_is_null_in_metrics_jsonl_and_absent_from_the_store(
    url: str, tmp_path: Path, tracing: None
) -> None:
    """``json.dumps`` wrote NaN and Infinity bare, which no JSON parser but Python's reads; the step's
    span kept NaN in a memory store and came back with null from SQLite."""
    from agl.core import open_store
    from agl.core.tracing.semconv import TRAINER_METRIC_PREFIX, TRAINER_STEP

    store = open_store(f"sqlite:///{tmp_path}/store.db" if url == "sqlite" else url, watchdog_interval=None)
    try:
        trainer = Trainer(NotFiniteStep(), store=store, output_dir=tmp_path / "run", record_steps=True)
        await trainer.fit_async(reward_is_x, [{"x": 1}])
        [run] = [found for found in await store.query_rollouts() if found.mode is None]
        spans = [span for span in await store.query_spans(run.rollout_id, "latest") if span.name == TRAINER_STEP]
    finally:
        await store.close()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=refuse_constant) for line in lines]
    assert [{k: v for k, v in r.items() if k != "time"} for r in records] == [
        {"step": 0, "loss": None, "grad_norm": None, "train/reward_mean": 1.0},
        {"step": 1, "train/reward_mean": None},
    ]
    metrics = [{k: v for k, v in s.attributes.items() if k.startswith(TRAINER_METRIC_PREFIX)} for s in spans]
    assert metrics == [{TRAINER_METRIC_PREFIX + "train/reward_mean": 1.0}, {}]
    assert reward_series(records) == {"train/reward_mean": [(0, 1.0)]}  # read back, a null step has no point
    assert (tmp_path / "run" / "reward.png").read_bytes().startswith(PNG_SIGNATURE)
