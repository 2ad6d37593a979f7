"""`Trainer`: runs an algorithm against agents executed by runners, all sharing one store.

Where the runners run is the ``runner_mode`` (see `agl.trainer.runners`): asyncio tasks in this
process by default, or threads, local processes, a command per rollout, or Ray actors. The
trainer holds any of them through the same four calls: start, wake, watch, stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from agl.core.agent import LitAgent
from agl.core.store import LightningStore, open_store
from agl.core.tracing.configure import flush_spans, setup_tracing
from agl.core.types import NamedResources, RolloutConfig
from agl.trainer.algorithm import Algorithm, AlgorithmContext
from agl.trainer.metrics import MetricsWriter
from agl.trainer.plugins import PluginManager, algorithms, plugin_manager
from agl.trainer.runners import DEFAULT_MODE, RunnerGroup, RunnerLost, check_mode, create_runner_group
from agl.trainer.training_run import TrainingRun

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
    runners run as ``runner_mode`` says (default ``"async"``: asyncio tasks in this process; see
    `agl.trainer.runners`), with ``runner_options`` as that mode's keyword arguments. ``agent``: a
    `LitAgent` or its ``"module:object"`` name (what processes and Ray import).
    ``rollout_config``: the default `RolloutConfig` of the rollouts the algorithm queues (timeouts,
    retries of failed or unresponsive attempts). ``record_steps``: also keep each step's metrics in
    the store (`agl.trainer.training_run`); by default unless the store is in memory, where nobody
    else could read them. ``plugins``: extra plugin objects registered on
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
        agent: LitAgent | str | None = None,
        runner_mode: str = DEFAULT_MODE,
        runner_options: dict[str, Any] | None = None,
        rollout_config: RolloutConfig | None = None,
        record_steps: bool | None = None,
        plugins: Iterable[Any] | PluginManager | None = None,
        algorithm_options: dict[str, Any] | None = None,
        output_dir: str | Path | None = None,
        progress: bool = False,
    ) -> None:
        if n_runners < 1:
            raise ValueError(f"n_runners must be at least 1, not {n_runners}")
        self.runner_mode = check_mode(runner_mode)
        self.runner_options = dict(runner_options or {})
        self.rollout_config = rollout_config
        self.record_steps = record_steps
        self.plugins = plugins if isinstance(plugins, PluginManager) else plugin_manager(plugins or ())
        self.algorithm = self._resolve(algorithm, algorithm_options or {})
        self.store = store if store is not None else open_store()
        self.n_runners = n_runners
        self.agent = agent
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.progress = progress
        self.runners: RunnerGroup | None = None
        self.run: TrainingRun | None = None
        """This fit's record in the store (``None`` when steps are not recorded)."""

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
        agent: LitAgent | str | None = None,
        train_dataset: Sequence[Any] = (),
        val_dataset: Sequence[Any] | None = None,
        resources: NamedResources | None = None,
    ) -> Any:
        """Run the algorithm to its end and return its result (see `fit_async`)."""
        return asyncio.run(self.fit_async(agent, train_dataset, val_dataset, resources))

    async def fit_async(
        self,
        agent: LitAgent | str | None = None,
        train_dataset: Sequence[Any] = (),
        val_dataset: Sequence[Any] | None = None,
        resources: NamedResources | None = None,
    ) -> Any:
        """Publish ``resources``, start the runners, run the algorithm, then stop the runners
        (also when the algorithm fails or is interrupted) and return the algorithm's result."""
        agent = agent or self.agent
        if agent is None and self.runner_mode != "command":  # a command is its own agent
            raise ValueError("fit needs an agent (pass it to fit or to Trainer)")
        if agent is not None and not isinstance(agent, LitAgent | str):
            raise TypeError(
                f"the agent is a {type(agent).__name__}, not a LitAgent: decorate a function with @rollout,"
                " or pass 'module:object'"
            )
        runners = create_runner_group(self.runner_mode, self.store, agent, self.runner_options)
        setup_tracing(store=self.store)
        resources_id = None
        if resources:
            resources_id = (await self.store.add_resources(resources)).resources_id
        self.run = await self._begin_run(agent) if self._records_steps() else None
        context = AlgorithmContext(
            store=self.store,
            train_dataset=list(train_dataset),
            val_dataset=list(val_dataset) if val_dataset is not None else None,
            initial_resources=resources,
            resources_id=resources_id,
            hooks=self.plugins.hook,
            trainer=self,
            rollout_config=self.rollout_config,
        )
        self.runners = runners
        observers = self._observers()
        for observer in observers:
            self.plugins.register(observer)
        result: Any = None
        try:
            await runners.start(self.n_runners)
            self.plugins.hook.agl_fit_start(trainer=self)
            result = await _first_to_end(self.algorithm.run(context), runners)
            return result
        except BaseException as error:  # KeyboardInterrupt and cancellation too: hooks still see the end
            result = error
            raise
        finally:
            await runners.stop()
            await _cancel_leftovers(context)
            await asyncio.to_thread(flush_spans)
            try:
                if self.run is not None:
                    await _finish_run(self.run, result)
                self.plugins.hook.agl_fit_end(trainer=self, result=result)
            finally:
                for observer in observers:
                    self.plugins.unregister(observer)

    def _records_steps(self) -> bool:
        if self.record_steps is not None:
            return self.record_steps
        from agl.core.store.memory import InMemoryLightningStore

        return not isinstance(self.store, InMemoryLightningStore)

    async def _begin_run(self, agent: LitAgent | str | None) -> TrainingRun:
        description = {
            "algorithm": self.algorithm.name or type(self.algorithm).__name__,
            "agent": agent if isinstance(agent, str) or agent is None else agent.name,
            "runner_mode": self.runner_mode,
            "n_runners": self.n_runners,
        }
        return await TrainingRun.begin(self.store, description)

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
        if self.runners is not None:
            self.runners.wake()

    def dev(
        self, agent: LitAgent | str | None = None, dataset: Sequence[Any] = (), resources: NamedResources | None = None
    ) -> Any:
        """A quick check that the agent runs: the ``baseline`` algorithm over the first few tasks."""
        quick = Trainer(
            "baseline",
            store=self.store,
            n_runners=self.n_runners,
            agent=agent or self.agent,
            runner_mode=self.runner_mode,
            runner_options=self.runner_options,
            rollout_config=self.rollout_config,
            record_steps=self.record_steps,
            plugins=self.plugins,
            progress=self.progress,
        )
        return quick.fit(train_dataset=list(dataset)[:DEV_TASKS], resources=resources)


async def _cancel_leftovers(context: AlgorithmContext) -> None:
    """Rollouts a failed or interrupted fit left queued would otherwise be the first work of the
    next fit's runners on the same store."""
    try:
        cancelled = await context.cancel_unfinished()
    except Exception as error:  # the fit's own outcome matters more than this clean-up
        logger.warning("could not cancel the rollouts the fit left unfinished: %s", error)
        return
    if cancelled:
        logger.warning("cancelled %d rollouts the fit queued and did not see finish", cancelled)


async def _finish_run(run: TrainingRun, result: Any) -> None:
    """Mark the fit's training run succeeded or failed. A store that is gone by now (the fit's last
    store call) is logged, not raised: the fit's own result or error, and the ``agl_fit_end``
    hooks after this, matter more than the record."""
    try:
        await run.finish(result if isinstance(result, BaseException) else None)
    except Exception as error:
        logger.warning("could not mark the training run %s finished: %s", run.rollout_id, error)


async def _first_to_end(work: Any, runners: RunnerGroup) -> Any:
    """Await the algorithm; runners that are lost (a bug or a dead machine, not a failed rollout)
    fail the fit at once instead of leaving the algorithm waiting for rollouts nobody will run."""
    algorithm = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(runners.watch())
    try:
        await asyncio.wait({algorithm, watch}, return_when=asyncio.FIRST_COMPLETED)
        if algorithm.done():
            return algorithm.result()
        error = watch.exception()
        raise error if isinstance(error, RunnerLost) else RunnerLost("the runners stopped") from error
    finally:
        for task in (algorithm, watch):
            if not task.done():
                task.cancel()
        await asyncio.gather(algorithm, watch, return_exceptions=True)
