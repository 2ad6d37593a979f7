"""`Trainer`: runs an algorithm against agents executed by runners, all sharing one store.

Runners here are asyncio tasks in the process that calls `Trainer.fit` (an async agent shares the
event loop; a sync agent runs in a thread per rollout, as `Runner` does). Runners as separate
threads, processes, subprocess agents or on a Ray cluster are not implemented yet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from agl.core.agent import LitAgent
from agl.core.runner import Runner
from agl.core.store import LightningStore, open_store
from agl.core.tracing.configure import flush_spans, setup_tracing
from agl.core.types import NamedResources
from agl.trainer.algorithm import Algorithm, AlgorithmContext
from agl.trainer.metrics import MetricsWriter
from agl.trainer.plugins import PluginManager, algorithms, plugin_manager

logger = logging.getLogger(__name__)

DEV_TASKS = 4
"""How many tasks `Trainer.dev` runs."""


class UnknownAlgorithm(LookupError):
    def __init__(self, name: str, available: Iterable[str]) -> None:
        names = ", ".join(sorted(available)) or "none"
        super().__init__(f"no algorithm named {name!r} is installed (installed: {names}); see `agl algorithms`")


class Trainer:
    """Train ``agent`` with ``algorithm`` (an `Algorithm`, or the name of a registered one).

    ``store``: default `open_store()` (``$AGL_STORE``, else the local SQLite file). ``n_runners``
    runners run as asyncio tasks in this process. ``plugins``: extra plugin objects registered on
    top of the installed ones (observers of the hooks, or algorithms of your own), or a ready
    `PluginManager` (tests build one with `plugin_manager`).
    ``algorithm_options`` go to the factory of a named algorithm.
    ``output_dir``: where each fit writes ``metrics.jsonl`` and ``reward.png`` (default: nowhere).
    ``progress``: show finished rollouts and steps on stderr while fitting.
    """

    def __init__(
        self,
        algorithm: str | Algorithm,
        *,
        store: LightningStore | None = None,
        n_runners: int = 1,
        agent: LitAgent | None = None,
        plugins: Iterable[Any] | PluginManager | None = None,
        algorithm_options: dict[str, Any] | None = None,
        output_dir: str | Path | None = None,
        progress: bool = False,
    ) -> None:
        if n_runners < 1:
            raise ValueError(f"n_runners must be at least 1, not {n_runners}")
        self.plugins = plugins if isinstance(plugins, PluginManager) else plugin_manager(plugins or ())
        self.algorithm = self._resolve(algorithm, algorithm_options or {})
        self.store = store if store is not None else open_store()
        self.n_runners = n_runners
        self.agent = agent
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.progress = progress
        self.runners: list[Runner] = []

    def _resolve(self, algorithm: str | Algorithm, options: dict[str, Any]) -> Algorithm:
        if not isinstance(algorithm, str):
            return algorithm
        available = algorithms(self.plugins)
        if algorithm not in available:
            raise UnknownAlgorithm(algorithm, available)
        created = available[algorithm][0](**options)
        if not isinstance(created, Algorithm):
            raise TypeError(f"the factory of algorithm {algorithm!r} returned {type(created).__name__}, not Algorithm")
        return created

    def fit(
        self,
        agent: LitAgent | None = None,
        train_dataset: Sequence[Any] = (),
        val_dataset: Sequence[Any] | None = None,
        resources: NamedResources | None = None,
    ) -> Any:
        """Run the algorithm to its end and return its result (see `fit_async`)."""
        return asyncio.run(self.fit_async(agent, train_dataset, val_dataset, resources))

    async def fit_async(
        self,
        agent: LitAgent | None = None,
        train_dataset: Sequence[Any] = (),
        val_dataset: Sequence[Any] | None = None,
        resources: NamedResources | None = None,
    ) -> Any:
        """Publish ``resources``, start the runners, run the algorithm, then stop the runners
        (also when the algorithm fails or is interrupted) and return the algorithm's result."""
        agent = agent or self.agent
        if agent is None:
            raise ValueError("fit needs an agent (pass it to fit or to Trainer)")
        setup_tracing(store=self.store)
        resources_id = None
        if resources:
            resources_id = (await self.store.add_resources(resources)).resources_id
        context = AlgorithmContext(
            store=self.store,
            train_dataset=list(train_dataset),
            val_dataset=list(val_dataset) if val_dataset is not None else None,
            initial_resources=resources,
            resources_id=resources_id,
            hooks=self.plugins.hook,
            trainer=self,
        )
        stop = asyncio.Event()
        self.runners = [Runner(agent, self.store, max_concurrency=1) for _ in range(self.n_runners)]
        runs = [
            asyncio.create_task(runner.run(stop=stop), name=f"agl-runner-{i}") for i, runner in enumerate(self.runners)
        ]
        observers = self._observers()
        for observer in observers:
            self.plugins.register(observer)
        result: Any = None
        try:
            self.plugins.hook.agl_fit_start(trainer=self)
            result = await _first_to_end(self.algorithm.run(context), runs)
            return result
        except BaseException as error:  # KeyboardInterrupt and cancellation too: hooks still see the end
            result = error
            raise
        finally:
            stop.set()
            await asyncio.gather(*runs, return_exceptions=True)
            await asyncio.to_thread(flush_spans)
            try:
                self.plugins.hook.agl_fit_end(trainer=self, result=result)
            finally:
                for observer in observers:
                    self.plugins.unregister(observer)

    def _observers(self) -> list[Any]:
        """The built-in observers this fit asked for: plugins of the same hooks as anyone's, registered
        for the fit only, so a `PluginManager` shared between trainers does not collect them."""
        observers: list[Any] = []
        if self.output_dir is not None:
            observers.append(MetricsWriter(self.output_dir))
        if self.progress:
            from agl.trainer.progress import ProgressDisplay  # rich only when a display is asked for

            observers.append(ProgressDisplay())
        return observers

    def wake_runners(self) -> None:
        """Let idle runners dequeue now: rollouts were just queued (they would otherwise find
        them only at their next poll)."""
        for runner in self.runners:
            runner.wake()

    def dev(
        self, agent: LitAgent | None = None, dataset: Sequence[Any] = (), resources: NamedResources | None = None
    ) -> Any:
        """A quick check that the agent runs: the ``baseline`` algorithm over the first few tasks."""
        quick = Trainer(
            "baseline",
            store=self.store,
            n_runners=self.n_runners,
            agent=agent or self.agent,
            plugins=self.plugins,
            progress=self.progress,
        )
        return quick.fit(train_dataset=list(dataset)[:DEV_TASKS], resources=resources)


async def _first_to_end(work: Any, runs: list[asyncio.Task[int]]) -> Any:
    """Await the algorithm; a runner that dies (a bug, not a failed rollout) fails the fit at once
    instead of leaving the algorithm waiting for rollouts nobody will run."""
    algorithm = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({algorithm, *runs}, return_when=asyncio.FIRST_COMPLETED)
            if algorithm in done:
                return algorithm.result()
            for run in done:
                runs.remove(run)
                error = run.exception()
                raise RuntimeError("a runner stopped before the algorithm finished") from error
    finally:
        if not algorithm.done():
            algorithm.cancel()
            await asyncio.gather(algorithm, return_exceptions=True)
