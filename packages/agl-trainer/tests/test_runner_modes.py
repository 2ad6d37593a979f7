"""Every runner mode runs the same small job; a killed runner process costs one retried attempt;
Ctrl-C ends `agl train` with every child gone.

Agents come from `agents_for_runner_tests`, a module child processes import by name. Tests
synchronise on files the agents write (`wait_for_files`), never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from agl.core import open_store
from agl.core.store.base import LightningStore
from agl.core.types import LLM, RolloutConfig
from agl.trainer import Algorithm, AlgorithmContext, Trainer, hookimpl
from agl.trainer.runners.processes import ProcessRunners
from agl.trainer.runners.specs import child_python_path

LIMIT = 60.0
NEVER = 3600.0
"""A poll interval longer than any test: runners that find work anyway were woken."""
INSTRUMENT = str(Path(sys.executable).parent / "opentelemetry-instrument")
PROGRAM = str(Path(__file__).parent / "program_for_command_tests.py")
PROGRAM_COMMAND = [INSTRUMENT, sys.executable, PROGRAM]
PROGRAM_ENV = {
    # The program uses the OpenTelemetry API only; importing every installed framework for its
    # instrumentor would cost seconds per rollout.
    "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": ",".join(e.name for e in entry_points(group="opentelemetry_instrumentor"))
}
TRAIN = [{"x": 1}, {"x": 2}, {"x": 0}, {"x": 0.5}]
VAL = [{"x": 3}]


@pytest.fixture
async def sqlite_store(tmp_path: Path, tracing: None) -> AsyncIterator[LightningStore]:
    opened = open_store(f"sqlite:///{tmp_path}/store.db")
    yield opened
    await opened.close()


async def wait_for_files(folder: Path, count: int, timeout: float = LIMIT) -> list[Path]:
    """The first ``count`` files an agent wrote into ``folder`` (checked every 50 ms, up to ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        found = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(found)} of {count} files in {folder} after {timeout} s")
        await asyncio.sleep(0.05)


def pid_of(signal_file: Path) -> int:
    return int(signal_file.name.split("-", 1)[0])


def is_gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status  # a zombie has exited; only its entry waits for a reaper


async def job_rollouts(store: LightningStore) -> list[Any]:
    return [r for r in await store.query_rollouts() if r.mode is not None]


class ChildWatcher:
    """Notes the runner processes once they are started (the fit-start hook comes after)."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    @hookimpl
    def agl_fit_start(self, trainer: Trainer) -> None:
        self.pids = list(getattr(trainer.runners, "pids", []))


@pytest.mark.parametrize("mode", ["async", "threads", "processes"])
async def test_each_mode_completes_the_same_small_job(mode: str, sqlite_store: LightningStore) -> None:
    children = ChildWatcher()
    trainer = Trainer(
        "baseline",
        store=sqlite_store,
        n_runners=2,
        agent="agents_for_runner_tests:double",
        runner_mode=mode,
        # Idle runners that never poll again: the val rollouts, queued later, reach them only by a wake-up.
        runner_options={"poll_seconds": NEVER} if mode == "processes" else None,
        plugins=[children],
    )
    metrics = await asyncio.wait_for(trainer.fit_async(None, TRAIN, VAL), LIMIT)
    assert metrics["train/succeeded"] == 4.0 and metrics["train/reward_mean"] == pytest.approx(1.75)
    assert metrics["val/reward_mean"] == 6.0
    rollouts = await job_rollouts(sqlite_store)
    assert len(rollouts) == 5 and all(r.status == "succeeded" for r in rollouts)
    for rollout in rollouts:
        assert [s.name for s in await sqlite_store.query_spans(rollout.rollout_id) if s.name == "agent.rollout"]
    assert len(children.pids) == (2 if mode == "processes" else 0)
    assert all(is_gone(pid) for pid in children.pids)  # the algorithm's end stopped them all
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("agl-runner-")]


async def test_a_runner_thread_whose_loop_is_blocked_is_left_behind_not_waited_for(
    sqlite_store: LightningStore, tmp_path: Path
) -> None:
    import agents_for_runner_tests

    signals = tmp_path / "signals"
    signals.mkdir()

    class StartsOne(Algorithm):
        async def run(self, context: AlgorithmContext) -> str:
            await context.store.enqueue_rollout({"signals": str(signals)}, mode="train")
            context.trainer.wake_runners()
            await wait_for_files(signals, 1)  # the agent now holds its runner's loop
            return "ended"

    trainer = Trainer(
        StartsOne(),
        store=sqlite_store,
        agent=agents_for_runner_tests.blocks_its_loop,
        runner_mode="threads",
        runner_options={"stop_seconds": 0.5},
    )
    try:
        assert await asyncio.wait_for(trainer.fit_async(None, []), LIMIT) == "ended"
        [rollout] = await job_rollouts(sqlite_store)
        [attempt] = await sqlite_store.query_attempts(rollout.rollout_id)
        assert attempt.status == "failed" and "did not stop" in attempt.metadata["error"]
    finally:
        agents_for_runner_tests.RELEASE.set()


async def test_processes_refuse_an_in_memory_store(store: LightningStore) -> None:
    trainer = Trainer("baseline", store=store, agent="agents_for_runner_tests:double", runner_mode="processes")
    with pytest.raises(ValueError, match="in-memory store lives in this process only"):
        await trainer.fit_async(None, TRAIN)


async def test_a_module_level_agent_object_is_named_for_the_children(sqlite_store: LightningStore) -> None:
    import agents_for_runner_tests

    runners = ProcessRunners(sqlite_store, agents_for_runner_tests.double)
    assert runners.agent_spec == "agents_for_runner_tests:double"


async def test_a_killed_runner_process_is_replaced_and_its_rollout_retried(
    sqlite_store: LightningStore, tmp_path: Path
) -> None:
    signals = tmp_path / "signals"
    signals.mkdir()
    trainer = Trainer(
        "baseline",
        store=sqlite_store,
        agent="agents_for_runner_tests:announce_then_hang",
        runner_mode="processes",
        rollout_config=RolloutConfig(max_attempts=2, retry_condition=("failed", "unresponsive")),
    )
    fit = asyncio.ensure_future(trainer.fit_async(None, [{"signals": str(signals), "hang_attempts": 1}]))
    [hanging] = await wait_for_files(signals, 1)
    killed = pid_of(hanging)
    os.kill(killed, signal.SIGKILL)
    metrics = await asyncio.wait_for(fit, LIMIT)

    assert metrics["train/succeeded"] == 1.0 and metrics["train/reward_mean"] == 1.0
    [rollout] = await job_rollouts(sqlite_store)
    first, second = await sqlite_store.query_attempts(rollout.rollout_id)
    assert first.attempt_id == hanging.name.split("-", 1)[1]
    assert first.status == "failed" and f"runner process {killed} exited with signal 9" in first.metadata["error"]
    assert second.status == "succeeded" and second.worker_id != first.worker_id
    assert isinstance(trainer.runners, ProcessRunners) and trainer.runners.restarts == 1


class Resumes:
    """SIGCONTs a frozen process once the rollout it froze in has ended (so it can stop cleanly)."""

    def __init__(self) -> None:
        self.pid: int | None = None

    @hookimpl
    def agl_rollout_end(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGCONT)


async def test_a_frozen_runner_is_found_by_its_missing_heartbeats(sqlite_store: LightningStore, tmp_path: Path) -> None:
    """The store's own detection, for a runner that is alive but silent (a hung machine): no
    heartbeat for ``unresponsive_seconds`` makes the attempt unresponsive, and the retry config
    gives the rollout to the other runner."""
    signals = tmp_path / "signals"
    signals.mkdir()
    resumes = Resumes()
    trainer = Trainer(
        "baseline",
        store=sqlite_store,
        n_runners=2,
        agent="agents_for_runner_tests:announce_then_hang",
        runner_mode="processes",
        runner_options={"heartbeat_seconds": 0.2, "poll_seconds": 0.2},
        rollout_config=RolloutConfig(unresponsive_seconds=1.0, max_attempts=2, retry_condition=("unresponsive",)),
        plugins=[resumes],
    )
    fit = asyncio.ensure_future(trainer.fit_async(None, [{"signals": str(signals), "hang_attempts": 1}]))
    [hanging] = await wait_for_files(signals, 1)
    resumes.pid = pid_of(hanging)
    os.kill(resumes.pid, signal.SIGSTOP)
    metrics = await asyncio.wait_for(fit, LIMIT)

    assert metrics["train/succeeded"] == 1.0
    [rollout] = await job_rollouts(sqlite_store)
    first, second = await sqlite_store.query_attempts(rollout.rollout_id)
    assert first.status == "unresponsive" and second.status == "succeeded"
    assert second.worker_id != first.worker_id
    assert isinstance(trainer.runners, ProcessRunners) and trainer.runners.restarts == 0


@pytest.mark.parametrize("exporter", ["agl_store", "otlp"])
async def test_command_mode_runs_an_unchanged_program_per_rollout(exporter: str, sqlite_store: LightningStore) -> None:
    """The same job as a program: the reward function sees its stdout and its spans, which reach
    the store through agl's exporter or plain OTLP (identity from OTEL_RESOURCE_ATTRIBUTES)."""
    options = {
        "command": PROGRAM_COMMAND,
        "reward": "agents_for_runner_tests:reward_from_output",
        "env": {**PROGRAM_ENV, "OTEL_TRACES_EXPORTER": exporter},
    }
    trainer = Trainer("baseline", store=sqlite_store, n_runners=2, runner_mode="command", runner_options=options)
    resources = {"llm": LLM(endpoint="http://127.0.0.1:9/v1", model="toy-model", api_key="secret")}
    metrics = await asyncio.wait_for(trainer.fit_async(None, TRAIN, VAL, resources), LIMIT)
    assert metrics["train/succeeded"] == 4.0 and metrics["train/reward_mean"] == pytest.approx(1.75)
    assert metrics["val/reward_mean"] == 6.0
    rollouts = await job_rollouts(sqlite_store)
    assert len(rollouts) == 5 and all(r.status == "succeeded" for r in rollouts)
    spans = await sqlite_store.query_spans(rollouts[0].rollout_id)
    [work] = [span for span in spans if span.name == "program.work"]
    assert work.attributes["program.base_url"] == "http://127.0.0.1:9/v1"
    assert {"agent.rollout", "agl.reward"} <= {span.name for span in spans}


async def test_a_program_exiting_non_zero_fails_its_attempt(sqlite_store: LightningStore) -> None:
    trainer = Trainer(
        "baseline", store=sqlite_store, runner_mode="command", runner_options={"command": PROGRAM_COMMAND}
    )
    metrics = await asyncio.wait_for(trainer.fit_async(None, [{"exit": 3}, {"x": 1}]), LIMIT)
    assert metrics["train/succeeded"] == 1.0
    failed = [r for r in await job_rollouts(sqlite_store) if r.status == "failed"]
    [attempt] = await sqlite_store.query_attempts(failed[0].rollout_id)
    assert "exited with status 3" in attempt.metadata["error"]


async def test_a_program_killed_by_a_signal_fails_its_attempt_naming_the_signal(sqlite_store: LightningStore) -> None:
    """The OOM killer's SIGKILL read "exited with status -9"."""
    trainer = Trainer(
        "baseline", store=sqlite_store, runner_mode="command", runner_options={"command": PROGRAM_COMMAND}
    )
    metrics = await asyncio.wait_for(trainer.fit_async(None, [{"kill": int(signal.SIGKILL)}, {"x": 1}]), LIMIT)
    assert metrics["train/succeeded"] == 1.0  # the next rollout still runs
    [failed] = [r for r in await job_rollouts(sqlite_store) if r.status == "failed"]
    [attempt] = await sqlite_store.query_attempts(failed.rollout_id)
    assert attempt.metadata["error"].endswith("was killed by signal 9 (SIGKILL)")


async def test_what_a_program_leaves_behind_ends_with_its_attempt(sqlite_store: LightningStore, tmp_path: Path) -> None:
    """A process the program started and did not wait for outlived the fit and the trainer, and
    its spans would have landed under an attempt already over."""
    signals = tmp_path / "signals"
    signals.mkdir()
    options = {"command": PROGRAM_COMMAND, "env": PROGRAM_ENV}
    trainer = Trainer("baseline", store=sqlite_store, runner_mode="command", runner_options=options)
    try:
        metrics = await asyncio.wait_for(trainer.fit_async(None, [{"x": 1, "leave_behind": str(signals)}]), LIMIT)
        assert metrics["train/succeeded"] == 1.0
        [left] = await wait_for_files(signals, 1)
        assert is_gone(pid_of(left))
    finally:
        for path in await wait_for_files(signals, 0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid_of(path), signal.SIGKILL)


@pytest.mark.parametrize(
    ("mode", "stop", "status", "says"),
    [
        ("processes", signal.SIGINT, 130, "interrupted"),
        ("command", signal.SIGINT, 130, "interrupted"),
        ("command", signal.SIGTERM, 143, "terminated"),
    ],
    ids=["processes-ctrl-c", "command-ctrl-c", "command-sigterm"],
)
def test_ctrl_c_or_sigterm_stops_agl_train_and_every_runner_process(
    mode: str, stop: signal.Signals, status: int, says: str, tmp_path: Path
) -> None:
    """SIGINT (Ctrl-C), or SIGTERM (a job scheduler's stop, which by default killed the trainer at
    once, leaving its programs running and its rollouts marked running), once both runners are
    inside a hanging rollout: `agl train` must exit (a timeout of the wait is the failure) and
    take every process it started with it."""
    trainer, signals = start_hanging_train(tmp_path, mode, 4, stderr=subprocess.PIPE, text=True)
    try:
        running = asyncio.run(wait_for_files(signals, 2))
        trainer.send_signal(stop)
        _, stderr = trainer.communicate(timeout=LIMIT)  # a timeout here is the failure: a hang
    finally:
        trainer.kill()
    assert trainer.returncode == status, stderr
    assert f"{says}: runners stopped" in stderr
    runner_pids = {pid_of(path) for path in running}
    assert len(runner_pids) == 2 and trainer.pid not in runner_pids
    assert all(is_gone(pid) for pid in runner_pids)
    statuses = asyncio.run(rollout_statuses(f"sqlite:///{tmp_path}/store.db"))
    assert statuses["run"] == ["failed"]  # the training run ends with the interrupted fit
    assert statuses["train"].count("failed") == 2  # the two in flight; the others never started


def start_hanging_train(tmp_path: Path, mode: str, rollouts: int, **popen: Any) -> tuple[subprocess.Popen, Path]:
    """`agl train` (2 runners, a SQLite store in ``tmp_path``) over ``rollouts`` tasks that hang, run
    by runner processes or command programs (``mode``); each running rollout writes its pid into the
    folder returned with the process."""
    signals = tmp_path / "signals"
    signals.mkdir()
    tasks = [{"signals": str(signals), "hang_attempts": 99}] * rollouts
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(task) + "\n" for task in tasks))
    command = [sys.executable, "-m", "agl.core.cli", "train", "--algorithm", "baseline", "--dataset", "train.jsonl"]
    command += ["--runners", "2", "--store", f"sqlite:///{tmp_path}/store.db"]
    if mode == "processes":
        command += ["--runner-mode", "processes", "--agent", "agents_for_runner_tests:announce_then_hang"]
    else:
        command += ["--command", shlex.join(PROGRAM_COMMAND)]
    environment = {**os.environ, **PROGRAM_ENV, "PYTHONPATH": child_python_path()}
    return subprocess.Popen(command, cwd=tmp_path, env=environment, **popen), signals


async def rollout_statuses(url: str) -> dict[str, list[str]]:
    store = open_store(url, read_only=True)
    try:
        statuses: dict[str, list[str]] = {}
        for rollout in await store.query_rollouts():
            statuses.setdefault(rollout.mode or "run", []).append(rollout.status)
        return statuses
    finally:
        await store.close()
