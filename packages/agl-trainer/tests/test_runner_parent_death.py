"""A trainer killed with SIGKILL (the OOM killer, ``kill -9``, a scheduler's hard stop) cannot end
what it started; Linux's parent-death signal (set through util-linux's ``setpriv``) must: no command
program or runner process may outlive it, holding ports, GPU memory or API quotas."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_runner_modes import LIMIT, is_gone, pid_of, start_hanging_train, wait_for_files

from agl.core import open_store
from agl.trainer import Trainer

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


def test_a_setpriv_without_the_option_leaves_programs_untied_but_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tracing: None
) -> None:
    """util-linux before 2.33 has a ``setpriv`` without ``--pdeathsig``: wrapped in it, every program
    exited 1 at once. Probed first: the programs run as they are, with a warning."""
    from agl.trainer.runners import command

    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "setpriv").write_text("#!/bin/sh\necho \"setpriv: unrecognized option '$1'\" >&2\nexit 1\n")
    (tools / "setpriv").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    command._setpriv.cache_clear()
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", watchdog_interval=None)
    options = {"command": [sys.executable, "-c", "print(0.5)"], "reward": printed}
    try:
        with caplog.at_level(logging.WARNING, logger=command.__name__):
            trainer = Trainer("baseline", store=store, runner_mode="command", runner_options=options)
            assert trainer.fit(None, [{"x": 1}])["train/reward_mean"] == 0.5
        assert "util-linux before 2.33" in caplog.text
    finally:
        command._setpriv.cache_clear()
        asyncio.run(store.close())


def printed(task: object, output: str, spans: object) -> float:
    return float(output)
