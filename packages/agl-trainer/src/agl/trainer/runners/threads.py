"""Mode ``threads``: each runner in its own thread with its own event loop.

For agents that block their loop (sync libraries called from ``async def``) or hold the GIL only
part of the time: one stuck runner no longer stalls the others or the algorithm. The store is
shared as an object; every backend is safe across threads.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import suppress

from agl.core.agent import LitAgent
from agl.core.runner import Runner
from agl.core.store.base import LightningStore
from agl.trainer.runners.base import RunnerGroup, RunnerLost, check_not_negative, fail_attempts_of
from agl.trainer.runners.specs import as_agent

logger = logging.getLogger(__name__)


class _RunnerThread:
    """One runner and the loop it runs on; `stop` and `wake` are safe from any thread."""

    def __init__(self, index: int, runner: Runner, ended: asyncio.Future[str]) -> None:
        self.runner = runner
        self.name = f"agl-runner-{index}"
        self._ended = ended
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name=self.name, daemon=True)

    def start(self) -> None:
        self.thread.start()
        self._ready.wait()  # so stop/wake find the loop

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as error:  # reported to the trainer through `ended`
            self.error = error
        finally:
            self._ready.set()
            main_loop = self._ended.get_loop()
            with suppress(RuntimeError):  # the trainer's loop is gone: nobody is watching
                main_loop.call_soon_threadsafe(lambda: self._ended.done() or self._ended.set_result(self.name))

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self.runner.run(stop=self._stop)

    def _call(self, callback: object) -> None:
        if self._loop is not None:
            with suppress(RuntimeError):  # the thread's loop already closed
                self._loop.call_soon_threadsafe(callback)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self._stop is not None:
            self._call(self._stop.set)

    def wake(self) -> None:
        self._call(self.runner.wake)


class ThreadRunners(RunnerGroup):
    """``stop_seconds``: how long each runner may take to stop. A thread cannot be killed: one whose
    loop an agent blocks for longer is left behind (a daemon, it ends with the process) and the
    attempts it held are failed, so stopping never hangs."""

    mode = "threads"

    def __init__(
        self,
        store: LightningStore,
        agent: LitAgent | str | None,
        *,
        max_concurrency: int = 1,
        stop_seconds: float = 10.0,
    ) -> None:
        check_not_negative(stop_seconds=stop_seconds)
        self.store = store
        self.agent = as_agent(agent)
        self.max_concurrency = max_concurrency
        self.stop_seconds = stop_seconds
        self._threads: list[_RunnerThread] = []
        self._ended: asyncio.Future[str] | None = None

    async def start(self, n: int) -> None:
        self._ended = asyncio.get_running_loop().create_future()
        for index in range(n):
            runner = Runner(self.agent, self.store, max_concurrency=self.max_concurrency)
            thread = _RunnerThread(index, runner, self._ended)
            self._threads.append(thread)
            thread.start()

    def wake(self) -> None:
        for thread in self._threads:
            thread.wake()

    async def watch(self) -> None:
        if self._ended is None:
            raise RunnerLost("no runners were started")
        name = await asyncio.shield(self._ended)
        error = next((t.error for t in self._threads if t.name == name), None)
        raise RunnerLost(f"runner thread {name} stopped before the algorithm finished") from error

    async def stop(self) -> None:
        for thread in self._threads:
            thread.stop()
        deadline = time.monotonic() + self.stop_seconds
        for thread in self._threads:
            await asyncio.to_thread(thread.thread.join, max(0.0, deadline - time.monotonic()))
            if thread.thread.is_alive():
                logger.warning(
                    "runner thread %s did not stop in %s s; leaving it behind", thread.name, self.stop_seconds
                )
                await fail_attempts_of(self.store, thread.runner.worker_id, f"runner thread {thread.name} did not stop")
        self._threads = []
