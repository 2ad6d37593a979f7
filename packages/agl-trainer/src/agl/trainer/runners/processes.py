"""Mode ``processes``: each runner is a local process, ``python -m agl.trainer.runners.worker``.

For agents that need their own interpreter (CPU-bound Python, libraries that are not
thread-safe, crashes that must not take the trainer down). Children open the same store by
URL: a SQLite file (several processes share it safely) or a store server; an in-memory store
exists in this process only and is refused. The agent crosses as ``module:object``.

The trainer supervises its children: one that exits while the fit runs is replaced, and the
attempts it held are failed at once (so the store's retry config can requeue them) instead of
waiting for a heartbeat deadline, which only a rollout config with ``unresponsive_seconds`` has.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from contextlib import suppress

from agl.core.agent import LitAgent
from agl.core.ids import new_id
from agl.core.runner import check_runner_options
from agl.core.store.base import LightningStore
from agl.core.store.http import TOKEN_ENV
from agl.trainer.runners.base import RunnerGroup, RunnerLost, check_not_negative, fail_attempts_of
from agl.trainer.runners.specs import child_python_path, remote_agent_spec, shared_store_token, shared_store_url
from agl.trainer.runners.worker import WAKE

logger = logging.getLogger(__name__)


class _Child:
    def __init__(self, process: asyncio.subprocess.Process, worker_id: str) -> None:
        self.process = process
        self.worker_id = worker_id
        self.exited = asyncio.ensure_future(process.wait())


class ProcessRunners(RunnerGroup):
    """``max_restarts``: how many children may be replaced in one fit before the fit fails (a
    child that cannot even import the agent would otherwise be restarted forever).
    ``stop_seconds``: how long a child may take to stop before it is killed."""

    mode = "processes"

    def __init__(
        self,
        store: LightningStore,
        agent: LitAgent | str | None,
        *,
        max_concurrency: int = 1,
        heartbeat_seconds: float = 5.0,
        poll_seconds: float = 1.0,
        max_restarts: int = 10,
        stop_seconds: float = 10.0,
    ) -> None:
        check_runner_options(max_concurrency, heartbeat_seconds, poll_seconds)
        check_not_negative(max_restarts=max_restarts, stop_seconds=stop_seconds)
        url = shared_store_url(store)
        if url is None:
            raise ValueError(
                "runner_mode='processes' needs a store other processes can open: a SQLite file "
                "(sqlite:///path.db) or a store server (http://...); an in-memory store lives in this process only"
            )
        self.agent_spec = remote_agent_spec(agent, self.mode)
        self.store = store
        self.store_url = url
        self.store_token = shared_store_token(store)
        self.options = [
            f"--max-concurrency={max_concurrency}",
            f"--heartbeat-seconds={heartbeat_seconds}",
            f"--poll-seconds={poll_seconds}",
        ]
        self.max_restarts = max_restarts
        self.stop_seconds = stop_seconds
        self.children: list[_Child] = []
        self.restarts = 0

    @property
    def pids(self) -> list[int]:
        return [child.process.pid for child in self.children]

    async def start(self, n: int) -> None:
        for _ in range(n):
            self.children.append(await self._spawn())

    async def _spawn(self) -> _Child:
        worker_id = new_id("wk")
        environment = {**os.environ, "PYTHONPATH": child_python_path()}
        if self.store_token:  # in the environment: a command line is every local user's to read
            environment[TOKEN_ENV] = self.store_token
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agl.trainer.runners.worker",
            f"--store={self.store_url}",
            f"--agent={self.agent_spec}",
            f"--worker-id={worker_id}",
            *self.options,
            stdin=asyncio.subprocess.PIPE,
            env=environment,
        )
        return _Child(process, worker_id)

    def wake(self) -> None:
        for child in self.children:
            if child.process.returncode is None and child.process.stdin is not None:
                with suppress(ConnectionError, RuntimeError):  # it is exiting; watch will see to it
                    child.process.stdin.write(WAKE)

    async def watch(self) -> None:
        if not self.children:
            raise RunnerLost("no runners were started")
        while True:
            await asyncio.wait([child.exited for child in self.children], return_when=asyncio.FIRST_COMPLETED)
            for index, child in enumerate(self.children):
                if not child.exited.done():
                    continue
                code = child.process.returncode
                logger.warning("runner process %d (%s) exited with %s", child.process.pid, child.worker_id, code)
                await self._fail_attempts_of(child, code)
                if self.restarts >= self.max_restarts:
                    raise RunnerLost(f"runner processes exited {self.restarts + 1} times; the last with status {code}")
                self.restarts += 1
                self.children[index] = await self._spawn()

    async def _fail_attempts_of(self, child: _Child, code: int | None) -> None:
        how = f"signal {-code}" if code is not None and code < 0 else f"status {code}"
        await fail_attempts_of(self.store, child.worker_id, f"runner process {child.process.pid} exited with {how}")

    async def stop(self) -> None:
        for child in self.children:
            if child.process.stdin is not None:
                child.process.stdin.close()  # end of file: the worker stops cleanly
        if self.children:
            _, late = await asyncio.wait([child.exited for child in self.children], timeout=self.stop_seconds)
            for child in self.children:
                if child.exited in late:
                    logger.warning(
                        "runner process %d did not stop in %s s; killing it", child.process.pid, self.stop_seconds
                    )
                    with suppress(ProcessLookupError):
                        child.process.send_signal(signal.SIGKILL)
            await asyncio.gather(*(child.exited for child in self.children), return_exceptions=True)
            for child in self.children:
                if child.exited in late:
                    await self._fail_attempts_of(child, child.process.returncode)
        self.children = []
