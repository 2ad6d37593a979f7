"""Mode ``async`` (the default): runners are asyncio tasks on the trainer's own event loop.

Cheapest: no copies of the agent, no second connection to the store, wake-ups are immediate.
An async agent shares the loop; a sync one runs in a thread per rollout (as `Runner` does).
"""

from __future__ import annotations

import asyncio

from agl.core.agent import LitAgent
from agl.core.runner import Runner
from agl.core.store.base import LightningStore
from agl.trainer.runners.base import RunnerGroup, RunnerLost
from agl.trainer.runners.specs import as_agent


class AsyncRunners(RunnerGroup):
    mode = "async"

    def __init__(self, store: LightningStore, agent: LitAgent | str | None, *, max_concurrency: int = 1) -> None:
        self.store = store
        self.agent = as_agent(agent)
        self.max_concurrency = max_concurrency
        self.runners: list[Runner] = []
        self._tasks: list[asyncio.Task[int]] = []
        self._stop = asyncio.Event()

    async def start(self, n: int) -> None:
        self._stop = asyncio.Event()
        self.runners = [Runner(self.agent, self.store, max_concurrency=self.max_concurrency) for _ in range(n)]
        self._tasks = [
            asyncio.create_task(runner.run(stop=self._stop), name=f"agl-runner-{i}")
            for i, runner in enumerate(self.runners)
        ]

    def wake(self) -> None:
        for runner in self.runners:
            runner.wake()

    async def watch(self) -> None:
        if not self._tasks:
            raise RunnerLost("no runners were started")
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        ended = done.pop()
        error = None if ended.cancelled() else ended.exception()
        raise RunnerLost(f"runner {ended.get_name()} stopped before the algorithm finished") from error

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
