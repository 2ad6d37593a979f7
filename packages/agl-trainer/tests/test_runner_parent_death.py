"""A trainer killed with SIGKILL (the OOM killer, ``kill -9``, a scheduler's hard stop) cannot end
what it started; Linux's parent-death signal must: no command program or runner process may
outlive it, holding ports, GPU memory or API quotas."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_runner_modes import LIMIT, PROGRAM_COMMAND, PROGRAM_ENV, is_gone, pid_of, wait_for_files

from agl.trainer.runners.specs import child_python_path

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")


def wait_until_gone(pids: set[int], timeout: float = LIMIT) -> set[int]:
    """The pids still alive after polling every 50 ms for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = {pid for pid in pids if not is_gone(pid)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = {pid for pid in alive if not is_gone(pid)}
    return alive


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("mode", ["command", "processes"])
def test_nothing_a_sigkilled_trainer_started_outlives_it(mode: str, tmp_path: Path) -> None:
    """`agl train` runs two hanging rollouts; once both announced their pid, the trainer gets
    SIGKILL, and both processes running them must end (a bounded poll, not a sleep)."""
    signals = tmp_path / "signals"
    signals.mkdir()
    tasks = [{"signals": str(signals), "hang_attempts": 99}] * 2
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(task) + "\n" for task in tasks))
    command = [sys.executable, "-m", "agl.core.cli", "train", "--algorithm", "baseline", "--dataset", "train.jsonl"]
    command += ["--runners", "2", "--store", f"sqlite:///{tmp_path}/store.db"]
    if mode == "processes":
        command += ["--runner-mode", "processes", "--agent", "agents_for_runner_tests:announce_then_hang"]
    else:
        command += ["--command", shlex.join(PROGRAM_COMMAND)]
    environment = {**os.environ, **PROGRAM_ENV, "PYTHONPATH": child_python_path()}
    trainer = subprocess.Popen(command, cwd=tmp_path, env=environment, stderr=subprocess.DEVNULL)
    running: set[int] = set()
    try:
        running = {pid_of(path) for path in asyncio.run(wait_for_files(signals, 2))}
        assert trainer.pid not in running
        trainer.kill()
        trainer.wait(timeout=LIMIT)
        assert wait_until_gone(running) == set()
    finally:
        trainer.kill()
        kill_all({pid for pid in running if not is_gone(pid)})
