"""A trainer killed with SIGKILL (the OOM killer, ``kill -9``, a scheduler's hard stop) cannot end
what it started; Linux's parent-death signal (set through util-linux's ``setpriv``) must: no command
program or runner process may outlive it, holding ports, GPU memory or API quotas."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_runner_modes import LIMIT, is_gone, pid_of, start_hanging_train, wait_for_files

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


NO_SETPRIV = pytest.mark.skipif(shutil.which("setpriv") is None, reason="command programs are tied through setpriv")


@pytest.mark.parametrize("mode", [pytest.param("command", marks=NO_SETPRIV), "processes"])
def test_nothing_a_sigkilled_trainer_started_outlives_it(mode: str, tmp_path: Path) -> None:
    """`agl train` runs two hanging rollouts; once both announced their pid, the trainer gets
    SIGKILL, and both processes running them must end (a bounded poll, not a sleep)."""
    trainer, signals = start_hanging_train(tmp_path, mode, 2, stderr=subprocess.DEVNULL)
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
