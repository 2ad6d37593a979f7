"""The trainer with real runners, a memory store and real tracing: hooks, baseline, clean stops."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agl.core import open_store
from agl.core.agent import rollout
from agl.core.cli import app
from agl.core.store.base import LightningStore
from agl.core.tracing import emit_reward
from agl.core.types import PromptTemplate, Rollout
from agl.trainer import Algorithm, AlgorithmContext, Trainer, UnknownAlgorithm, hookimpl, plugin_manager

LIMIT = 30.0


@rollout
def reward_is_x(task: dict[str, Any]) -> float:
    return float(task["x"])


class Recorder:
    """Observes every run hook, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    @hookimpl
    def agl_fit_start(self, trainer: Trainer) -> None:
        self.events.append(("fit_start", trainer))

    @hookimpl
    def agl_rollout_end(self, rollout: Rollout) -> None:  # a hook may take only the arguments it needs
        self.events.append(("rollout_end", rollout.input["x"], rollout.status))

    @hookimpl
    def agl_step_end(self, step: int, metrics: dict[str, float]) -> None:
        self.events.append(("step_end", step, metrics))

    @hookimpl
    def agl_fit_end(self, trainer: Trainer, result: Any) -> None:
        self.events.append(("fit_end", result, [task.done() for task in asyncio.all_tasks() if _is_runner(task)]))


def _is_runner(task: asyncio.Task[Any]) -> bool:
    return task.get_name().startswith("agl-runner-")


async def test_baseline_reports_mean_reward_per_mode_and_leaves_rollouts_in_the_store(store: LightningStore) -> None:
    trainer = Trainer("baseline", store=store, n_runners=2)
    train = [{"x": 1}, {"x": 0}, {"x": 0.5}]
    metrics = await trainer.fit_async(reward_is_x, train, [{"x": 1}, {"x": 0.25}])
    assert metrics == {
        "train/rollouts": 3.0,
        "train/succeeded": 3.0,
        "train/reward_mean": pytest.approx(0.5),
        "val/rollouts": 2.0,
        "val/succeeded": 2.0,
        "val/reward_mean": pytest.approx(0.625),
    }
    rollouts = await store.query_rollouts()
    assert sorted((r.mode, r.input["x"], r.status) for r in rollouts) == [
        ("train", 0, "succeeded"),
        ("train", 0.5, "succeeded"),
        ("train", 1, "succeeded"),
        ("val", 0.25, "succeeded"),
        ("val", 1, "succeeded"),
    ]
    spans = await store.query_spans(rollouts[0].rollout_id)
    assert any(span.name == "agent.rollout" for span in spans)


async def test_failed_rollouts_count_but_have_no_reward(store: LightningStore) -> None:
    @rollout
    def picky(task: dict[str, Any]) -> float:
        if task["x"] < 0:
            raise ValueError("negative")
        return float(task["x"])

    metrics = await Trainer("baseline", store=store).fit_async(picky, [{"x": 1}, {"x": -1}, {"x": 0}])
    assert metrics["train/rollouts"] == 3.0
    assert metrics["train/succeeded"] == 2.0
    assert metrics["train/reward_mean"] == pytest.approx(0.5)


async def test_a_reward_emitted_before_the_agent_failed_is_not_counted(store: LightningStore) -> None:
    """The rollout failed, but the reward it emitted on its way (a partial score) went into the mean:
    a baseline, and `Trainer.dev`, reported reward 1 for an agent that failed every task."""

    @rollout
    def fails_after_scoring(task: dict[str, Any]) -> float:
        emit_reward(1.0)
        if task["x"] < 0:
            raise ValueError("negative")
        return 0.0

    metrics = await Trainer("baseline", store=store).fit_async(fails_after_scoring, [{"x": -1}, {"x": 1}])
    assert metrics == {"train/rollouts": 2.0, "train/succeeded": 1.0, "train/reward_mean": 0.0}
    metrics = await Trainer("baseline", store=store).fit_async(fails_after_scoring, [{"x": -1}])
    assert metrics == {"train/rollouts": 1.0, "train/succeeded": 0.0}


async def test_the_run_hooks_are_called_in_order(store: LightningStore) -> None:
    recorder = Recorder()
    trainer = Trainer("baseline", store=store, plugins=[recorder])
    metrics = await trainer.fit_async(reward_is_x, [{"x": 1}, {"x": 0}])
    names = [event[0] for event in recorder.events]
    assert names == ["fit_start", "rollout_end", "rollout_end", "step_end", "fit_end"]
    assert recorder.events[0] == ("fit_start", trainer)
    assert recorder.events[1:3] == [("rollout_end", 1, "succeeded"), ("rollout_end", 0, "succeeded")]
    assert recorder.events[3] == ("step_end", 0, metrics)
    assert recorder.events[4] == ("fit_end", metrics, [])  # the runner tasks are gone by then


async def test_an_algorithm_error_still_stops_the_runners_and_ends_the_fit(store: LightningStore) -> None:
    class Crashes(Algorithm):
        async def run(self, context: AlgorithmContext) -> None:
            await context.enqueue_and_wait([{"x": 1}], timeout=LIMIT)
            raise RuntimeError("algorithm bug")

    recorder = Recorder()
    trainer = Trainer(Crashes(), store=store, plugins=[recorder])
    with pytest.raises(RuntimeError, match="algorithm bug"):
        await trainer.fit_async(reward_is_x, [])
    kind, result, runners_left = recorder.events[-1]
    assert kind == "fit_end" and isinstance(result, RuntimeError) and runners_left == []
    assert [r.status for r in await store.query_rollouts()] == ["succeeded"]


async def test_a_named_algorithm_gets_its_options_and_a_context(store: LightningStore) -> None:
    seen: dict[str, Any] = {}

    class Probe(Algorithm):
        def __init__(self, *, answer: int) -> None:
            self.answer = answer

        async def run(self, context: AlgorithmContext) -> int:
            seen["latest"] = await context.store.get_latest_resources()
            seen["context"] = context
            update = await context.publish_resources({"prompt": PromptTemplate(template="better {x}")})
            seen["published"] = update
            return self.answer

    class Registers:
        @hookimpl
        def agl_register_algorithms(self, register: Any) -> None:
            register("probe", Probe)

    manager = plugin_manager([Registers()], load_entrypoints=False)
    trainer = Trainer("probe", store=store, plugins=manager, algorithm_options={"answer": 42})
    initial = {"prompt": PromptTemplate(template="{x}")}
    assert await trainer.fit_async(reward_is_x, [{"x": 1}], [{"x": 2}], initial) == 42
    context = seen["context"]
    assert context.train_dataset == [{"x": 1}] and context.val_dataset == [{"x": 2}]
    assert seen["latest"].resources == initial and seen["latest"].resources_id == context.resources_id
    assert seen["published"].resources_id == context.resources_id and seen["published"].version == 2


def test_an_unknown_algorithm_names_the_installed_ones() -> None:
    with pytest.raises(UnknownAlgorithm, match=r"'nope'.*baseline"):
        Trainer("nope", store=object())  # type: ignore[arg-type]


def test_fit_and_dev_run_synchronously(tracing: None) -> None:
    store = open_store("memory://", watchdog_interval=None)
    trainer = Trainer("baseline", store=store, agent=reward_is_x)
    metrics = trainer.dev(dataset=[{"x": 1}] * 6 + [{"x": 0}])
    assert metrics["train/rollouts"] == 4.0  # the first few tasks only
    assert metrics["train/reward_mean"] == 1.0


def test_a_second_fit_on_another_store_in_the_same_process_still_sees_its_rewards(tracing: None) -> None:
    """A process sets up tracing once, for the first fit's store; the second fit's rollouts must
    still send their spans (rewards included) to the second store, not to the first, now closed."""
    for _ in range(2):
        store = open_store("memory://", watchdog_interval=None)
        metrics = Trainer("baseline", store=store).fit(reward_is_x, [{"x": 1}, {"x": 0}])
        assert metrics["train/reward_mean"] == 0.5
        asyncio.run(store.close())


async def test_each_step_is_a_span_of_the_training_run_rollout(store: LightningStore) -> None:
    class ThreeSteps(Algorithm):
        async def run(self, context: AlgorithmContext) -> str:
            context.log_step(0, {"train/reward_mean": 0.5})
            await asyncio.to_thread(context.log_step, 1, {"train/reward_mean": 0.75, "loss": 2})  # from a thread
            context.log_step(2, {"train/reward_mean": 1.0})
            return "done"

    trainer = Trainer(ThreeSteps(), store=store, agent=reward_is_x, record_steps=True)
    assert await trainer.fit_async(None, []) == "done"
    [run] = await store.query_rollouts()
    assert run.mode is None and run.metadata == {"agl.trainer.run": True} and run.status == "succeeded"
    assert run.input == {"algorithm": "ThreeSteps", "agent": "reward_is_x", "runner_mode": "async", "n_runners": 1}
    assert trainer.run is not None and trainer.run.rollout_id == run.rollout_id
    spans = await store.query_spans(run.rollout_id)
    assert [span.name for span in spans] == ["agl.trainer.step"] * 3
    assert [span.attributes for span in spans] == [
        {"agl.trainer.step": 0, "agl.trainer.metric.train/reward_mean": 0.5},
        {"agl.trainer.step": 1, "agl.trainer.metric.train/reward_mean": 0.75, "agl.trainer.metric.loss": 2.0},
        {"agl.trainer.step": 2, "agl.trainer.metric.train/reward_mean": 1.0},
    ]


def test_agl_spans_shows_a_training_run_step_by_step(tmp_path: Path, tracing: None) -> None:
    """The run's tree in the CLI: each step's number, its time and the metrics read first (reward
    means, validation, then the loss, which a narrow terminal cuts first); other metrics stay in --json."""

    class TwoSteps(Algorithm):
        async def run(self, context: AlgorithmContext) -> None:
            context.log_step(0, {"val/accuracy": 0.25})
            context.log_step(1, {"seconds": 12.34, "loss": 0.5, "train/reward_mean": 0.75, "grad_norm": 3.0})

    url = f"sqlite:///{tmp_path}/store.db"
    on_disk = open_store(url, watchdog_interval=None)
    try:
        Trainer(TwoSteps(), store=on_disk, agent=reward_is_x).fit(None, [])
        [run] = asyncio.run(on_disk.query_rollouts())
    finally:
        asyncio.run(on_disk.close())
    shown = CliRunner().invoke(app, ["spans", run.rollout_id, "--store", url], env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.stdout
    assert shown.stdout.splitlines()[1:] == [
        "├── step 0  val/accuracy 0.25",
        "└── step 1  12.3 s  train/reward_mean 0.75  loss 0.5",
        "2 spans · 0 LLM calls · reward -",
    ]


async def test_a_failed_fit_fails_its_training_run(store: LightningStore) -> None:
    class Crashes(Algorithm):
        async def run(self, context: AlgorithmContext) -> None:
            context.log_step(0, {"loss": 1.0})
            raise RuntimeError("algorithm bug")

    with pytest.raises(RuntimeError, match="algorithm bug"):
        await Trainer(Crashes(), store=store, agent=reward_is_x, record_steps=True).fit_async(None, [])
    [run] = await store.query_rollouts()
    assert run.status == "failed"
    [attempt] = await store.query_attempts(run.rollout_id)
    assert attempt.metadata["error"] == "RuntimeError: algorithm bug"
    assert [span.attributes["agl.trainer.step"] for span in await store.query_spans(run.rollout_id)] == [0]


async def test_a_memory_store_keeps_no_training_run_by_default(store: LightningStore) -> None:
    await Trainer("baseline", store=store).fit_async(reward_is_x, [{"x": 1}])
    assert [r.mode for r in await store.query_rollouts()] == ["train"]


async def test_a_store_on_disk_keeps_the_training_run_by_default(tmp_path: Path, tracing: None) -> None:
    on_disk = open_store(f"sqlite:///{tmp_path}/store.db", watchdog_interval=None)
    try:
        await Trainer("baseline", store=on_disk).fit_async(reward_is_x, [{"x": 1}])
        [run] = [r for r in await on_disk.query_rollouts() if r.mode is None]
        [step] = await on_disk.query_spans(run.rollout_id)
        assert step.attributes["agl.trainer.metric.train/reward_mean"] == 1.0
    finally:
        await on_disk.close()
