"""The README's main job, `examples/train_sentiment.py`, run as a newcomer runs it (a subprocess, the
default SQLite store in its working directory), on the tiny test model so it fits in CI time: the
demo's own agent and task set go through serving, the proxy, the instrumentation and GRPO, and
what it prints and leaves behind is what the README promises."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

from agl.core import open_store
from agl.core.tracing import semconv
from agl.trainer.testing import build_tiny_model

DEMO = Path(__file__).parents[1] / "examples" / "train_sentiment.py"
STEPS, TASKS_PER_STEP, ANSWERS_PER_TASK, VALIDATION_TASKS = 2, 2, 8, 14


def test_the_demo_trains_and_leaves_its_run_in_the_store(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "tiny")
    finished = subprocess.run(
        [sys.executable, str(DEMO), "--steps", str(STEPS), "--model", str(model), "--top-layers", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    printed = finished.stdout
    # The progress display prints a line per step (on stderr), with its reward, as the run goes.
    assert [int(n) for n in re.findall(r"^step (\d+)", finished.stderr, re.MULTILINE)] == list(range(STEPS + 1))
    assert len(re.findall(r"^step \d+  [\d.]+ s  train/reward_mean ", finished.stderr, re.MULTILINE)) == STEPS
    assert re.search(r"accuracy on held-out reviews: \d\.\d\d before training, \d\.\d\d after 2 GRPO steps", printed)
    chart = re.search(r"reward per step: (\S+)", printed)
    assert chart and (tmp_path / chart.group(1)).is_file()
    checkpoint = re.search(r"trained model: (\S+)", printed)
    assert checkpoint and (tmp_path / checkpoint.group(1) / "config.json").is_file()

    store = open_store(f"sqlite:///{tmp_path / '.agl' / 'store.db'}", read_only=True)
    rollouts = asyncio.run(store.query_rollouts())
    train = [r for r in rollouts if r.mode == "train"]
    val = [r for r in rollouts if r.mode == "val"]
    # A review whose answers all scored alike is replaced by a fresh one (the demo's resample_tied).
    metrics = (tmp_path / chart.group(1)).with_name("metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line) for line in metrics]
    resampled = [step["resampled"] for step in steps if step["step"] > 0]
    assert len(resampled) == STEPS
    assert len(train) == ANSWERS_PER_TASK * (STEPS * TASKS_PER_STEP + sum(resampled))
    assert len(val) == 2 * VALIDATION_TASKS  # before and after
    assert all(r.status == "succeeded" for r in train + val)
    spans = asyncio.run(store.query_spans(train[0].rollout_id))
    calls = [s for s in spans if s.attributes.get(semconv.LLM_CALL)]
    # The agent's openai instrumentation and the proxy both record the call; the proxy's has token ids.
    assert len({s.attributes[semconv.RESPONSE_ID] for s in calls}) == 1
    assert any(s.attributes.get(semconv.RESPONSE_TOKEN_IDS) for s in calls)
    assert any(s.attributes.get(semconv.REWARD) is not None for s in spans)
    asyncio.run(store.close())
    assert f"{len(rollouts)} rollouts, {len(train) + len(val)} LLM calls" in printed
