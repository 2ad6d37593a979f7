"""Unusual but plausible inputs and agent behaviour: the fit ends with every rollout accounted for,
or with one line naming the problem; nothing is left for the next fit on the store to run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agl.core import open_store
from agl.core.agent import rollout
from agl.core.cli import add_plugin_commands, app
from agl.core.store.base import LightningStore
from agl.core.types import RolloutConfig, Span
from agl.trainer import RolloutsIncomplete, Trainer

LIMIT = 60.0


@rollout
def reward_from_task(task: dict[str, Any]) -> float:
    return float(task["reward"])  # "nan", "inf": the task itself must stay JSON


@rollout
def exits_on_one(task: dict[str, Any]) -> float:
    if task["x"] == 1:
        sys.exit(3)
    return 1.0


@rollout
async def exits_on_one_async(task: dict[str, Any]) -> float:
    if task["x"] == 1:
        sys.exit(3)
    return 1.0


async def _attempt_errors(store: LightningStore) -> dict[str, str | None]:
    """Each train rollout's status and its latest attempt's error, by the task's ``x``/``reward``."""
    errors = {}
    for found in await store.query_rollouts(mode="train"):
        attempt = await store.get_latest_attempt(found.rollout_id)
        key = str(found.input.get("x", found.input.get("reward")))
        errors[key] = f"{found.status}: {attempt.metadata.get('error') if attempt else None}"
    return errors


@pytest.mark.parametrize("url", ["memory://", "sqlite"])
async def test_a_reward_that_is_not_finite_fails_its_rollout(url: str, tmp_path: Path, tracing: None) -> None:
    """NaN and infinity have no JSON: a SQLite store kept the rollout succeeded without a reward,
    a memory store kept the NaN and every mean over it."""
    store = open_store(f"sqlite:///{tmp_path}/store.db" if url == "sqlite" else url, watchdog_interval=None)
    try:
        tasks = [{"reward": "nan"}, {"reward": "1.0"}, {"reward": "-inf"}]
        metrics = await Trainer("baseline", store=store, record_steps=False).fit_async(reward_from_task, tasks)
        assert metrics == {"train/rollouts": 3.0, "train/succeeded": 1.0, "train/reward_mean": 1.0}
        errors = await _attempt_errors(store)
    finally:
        await store.close()
    assert errors["nan"] == "failed: ValueError: the agent returned the reward nan; a reward must be a finite number"
    assert errors["-inf"] == "failed: ValueError: the agent returned the reward -inf; a reward must be a finite number"


@pytest.mark.parametrize("agent", [exits_on_one, exits_on_one_async], ids=["sync", "async"])
def test_an_agent_calling_sys_exit_fails_its_rollout_not_the_fit(agent: Any, tmp_path: Path, tracing: None) -> None:
    """`SystemExit` from an agent used to leave the runner's task, end the event loop and so the
    whole fit (with the exit status the agent chose), leaving the rest of the tasks unrun."""
    url = f"sqlite:///{tmp_path}/store.db"
    store = open_store(url, watchdog_interval=None)
    try:
        metrics = Trainer("baseline", store=store).fit(agent, [{"x": 0}, {"x": 1}, {"x": 2}])
    finally:
        asyncio.run(store.close())
    assert metrics == {"train/rollouts": 3.0, "train/succeeded": 2.0, "train/reward_mean": 1.0}

    async def read() -> tuple[dict[str, str | None], list[str]]:
        reopened = open_store(url, watchdog_interval=None)
        try:
            runs = await reopened.query_rollouts(status_in=["succeeded"])
            return await _attempt_errors(reopened), [run.rollout_id for run in runs if run.mode is None]
        finally:
            await reopened.close()

    errors, training_runs = asyncio.run(read())
    assert errors == {
        "0": "succeeded: None",
        "1": "failed: AgentExited: the agent called sys.exit(3)",
        "2": "succeeded: None",
    }
    assert len(training_runs) == 1  # the fit itself ended as a success


@pytest.mark.parametrize("retry", [False, True], ids=["no-retry", "retry-failed"])
async def test_a_fit_that_gives_up_cancels_the_rollouts_it_left_queued(store: LightningStore, retry: bool) -> None:
    """An algorithm that times out (or fails, or is interrupted) left its rollouts queued, and
    stopping failed the one in flight back into the queue when retries were on: the next fit's
    runners on the same store ran all of them before its own tasks."""
    ran: list[dict[str, Any]] = []

    @rollout
    async def records(task: dict[str, Any]) -> float:
        ran.append(task)
        return 1.0

    config = RolloutConfig(max_attempts=3, retry_condition=("failed",)) if retry else None
    giving_up = Trainer("baseline", store=store, rollout_config=config, algorithm_options={"timeout": 0})
    with pytest.raises(RolloutsIncomplete):
        await giving_up.fit_async(records, [{"fit": 1, "i": i} for i in range(5)])
    left = [found.status for found in await store.query_rollouts(mode="train")]
    assert len(left) == 5 and set(left) <= {"cancelled", "failed", "succeeded"}

    ran.clear()
    metrics = await Trainer("baseline", store=store).fit_async(records, [{"fit": 2}])
    assert metrics["train/succeeded"] == 1.0
    assert ran == [{"fit": 2}]


def reward_printed(task: Any, output: str, spans: list[Span]) -> float:
    return float(output.strip())


@pytest.fixture
def background_pid(tmp_path: Path) -> Iterator[Path]:
    """Where the program writes the pid of the process it leaves behind; killed after the test."""
    path = tmp_path / "background.pid"
    yield path
    with suppress(FileNotFoundError, ProcessLookupError, ValueError):
        os.kill(int(path.read_text()), signal.SIGKILL)


async def test_a_command_leaving_a_background_process_ends_with_the_program(
    tmp_path: Path, background_pid: Path, tracing: None
) -> None:
    """The background process inherits the program's stdout; the runner read stdout to its end,
    so the rollout waited for that process instead of for the program."""
    program = ["sh", "-c", f"sleep 600 & echo $! > {background_pid}; echo 0.5"]
    options = {"command": program, "reward": reward_printed}
    store = open_store(f"sqlite:///{tmp_path}/store.db", watchdog_interval=None)
    try:
        trainer = Trainer(
            "baseline", store=store, runner_mode="command", runner_options=options, algorithm_options={"timeout": LIMIT}
        )
        metrics = await trainer.fit_async(None, [{"x": 1}])
    finally:
        await store.close()
    assert metrics == {"train/rollouts": 1.0, "train/succeeded": 1.0, "train/reward_mean": 0.5}


def test_processes_refuse_bad_runner_options_before_starting_any(tmp_path: Path, tracing: None) -> None:
    """Each child refused the option in its own stderr and died; the fit failed only after
    `max_restarts` of them, with `RunnerLost` naming none of it."""
    store = open_store(f"sqlite:///{tmp_path}/store.db", watchdog_interval=None)
    trainer = Trainer(
        "baseline",
        store=store,
        agent="agents_for_runner_tests:double",
        runner_mode="processes",
        runner_options={"max_concurrency": 0},
    )
    try:
        with pytest.raises(ValueError, match="max_concurrency must be at least 1, not 0"):
            trainer.fit(train_dataset=[{"x": 1}])
    finally:
        asyncio.run(store.close())


@pytest.fixture(scope="module")
def cli() -> CliRunner:
    assert add_plugin_commands(app) == []
    return CliRunner()


@pytest.fixture
def cli_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`agl train` arguments for an agent in the current directory, over a memory store."""
    (tmp_path / "edge_cli_agent.py").write_text(
        "from agl.core.agent import rollout\n\n@rollout\ndef agent(task):\n    return 1.0\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    return ["train", "--algorithm", "baseline", "--agent", "edge_cli_agent:agent", "--store", "memory://"]


@pytest.mark.parametrize("content", ["", "\n  \n"], ids=["empty", "blank-lines"])
def test_train_refuses_a_dataset_without_tasks(
    cli: CliRunner, cli_agent: list[str], tmp_path: Path, content: str
) -> None:
    """It trained on nothing and exited 0, printing ``{}``."""
    (tmp_path / "train.jsonl").write_text(content)
    result = cli.invoke(app, [*cli_agent, "--dataset", "train.jsonl"])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == "error: train.jsonl: no tasks (expected one JSON value per line)"
    assert not (tmp_path / "agl-runs").exists()


def test_train_reports_rollouts_outliving_the_timeout_in_one_line(
    cli: CliRunner, cli_agent: list[str], tmp_path: Path, tracing: None
) -> None:
    """`RolloutsIncomplete` (as `RunnerLost`) ended `agl train` with a traceback."""
    (tmp_path / "train.jsonl").write_text(json.dumps({"x": 1}) + "\n")
    result = cli.invoke(app, [*cli_agent, "--dataset", "train.jsonl", "--option", "timeout=0"])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == "error: 1 of 1 rollouts unfinished after 0 s"


def test_a_plain_function_as_the_agent_is_refused_in_words(tmp_path: Path) -> None:
    def undecorated(task: dict[str, Any]) -> float:
        return 1.0

    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    with pytest.raises(TypeError, match=r"^the agent is a function, not a LitAgent: decorate a function with @rollout"):
        Trainer("baseline", store=store).fit(undecorated, [{"x": 1}])  # type: ignore[arg-type]
    assert asyncio.run(store.statistics()).rollouts == 0
    asyncio.run(store.close())
