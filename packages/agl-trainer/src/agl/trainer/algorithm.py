"""The algorithm contract: an `Algorithm` gets an `AlgorithmContext` and trains through the store.

An algorithm never runs agents itself. It publishes resources (prompts, model endpoints), queues
tasks as rollouts, waits for the runners to finish them, reads their rewards and spans (through
the context's adapter), reports metrics per step, and publishes better resources.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from agl.core.adapters import TraceMessagesAdapter
from agl.core.errors import InvalidTransition
from agl.core.store.base import LightningStore
from agl.core.types import (
    NamedResources,
    ResourcesUpdate,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutRequest,
    RolloutStatus,
)

if TYPE_CHECKING:
    from agl.trainer.trainer import Trainer

REWARD = "agl.reward"
UNFINISHED: tuple[RolloutStatus, ...] = ("queuing", "preparing", "running", "requeuing")


class Algorithm(abc.ABC):
    """Subclass and implement `run`; register a factory for it with ``agl_register_algorithms``."""

    name: str = ""

    @abc.abstractmethod
    async def run(self, context: AlgorithmContext) -> Any:
        """Train; what it returns is what `Trainer.fit` returns (and ``agl_fit_end`` gets)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name or type(self).__name__!r}>"


class RolloutsIncomplete(RuntimeError):
    """`AlgorithmContext.enqueue_and_wait` timed out before every rollout finished."""


@dataclass
class AlgorithmContext:
    """What an algorithm works with; built by the `Trainer` for one `fit`."""

    store: LightningStore
    train_dataset: Sequence[Any]
    val_dataset: Sequence[Any] | None
    initial_resources: NamedResources | None
    resources_id: str | None
    """Id under which the initial resources were published (``None`` when there were none)."""
    hooks: pluggy.HookRelay
    trainer: Trainer
    adapter: Any = field(default_factory=TraceMessagesAdapter)
    """Turns one attempt's spans into training data (``adapter.adapt(spans)``)."""
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("agl.trainer.algorithm"))
    rollout_config: RolloutConfig | None = None
    """The default config of queued rollouts (`Trainer(rollout_config=...)`): timeouts and retries."""
    _unfinished: set[str] = field(default_factory=set, init=False, repr=False)
    """Rollouts queued by `enqueue_and_wait` and not yet seen finished."""

    async def enqueue_and_wait(
        self,
        tasks: Sequence[Any],
        mode: RolloutMode | None = "train",
        resources_id: str | None = None,
        *,
        timeout: float | None = None,
        config: RolloutConfig | None = None,
    ) -> list[Rollout]:
        """Queue one rollout per task, wait until all are finished, and return them in task order.

        ``resources_id`` pins the resources the runners give the agent (default: the latest).
        ``config`` (default: ``rollout_config``) sets timeouts and retries. Calls
        ``agl_rollout_end`` for each. Raises `RolloutsIncomplete` after ``timeout`` seconds.
        """
        config = config or self.rollout_config
        requests = [RolloutRequest(input=task, mode=mode, resources_id=resources_id, config=config) for task in tasks]
        queued = await self.store.enqueue_many_rollouts(requests)
        self.trainer.wake_runners()
        ids = [rollout.rollout_id for rollout in queued]
        self._unfinished.update(ids)
        finished = {rollout.rollout_id: rollout for rollout in await self.store.wait_for_rollouts(ids, timeout)}
        self._unfinished.difference_update(finished)
        if len(finished) < len(ids):
            raise RolloutsIncomplete(f"{len(ids) - len(finished)} of {len(ids)} rollouts unfinished after {timeout} s")
        ordered = [finished[rollout_id] for rollout_id in ids]
        for rollout in ordered:
            self.hooks.agl_rollout_end(trainer=self.trainer, rollout=rollout)
        return ordered

    async def cancel_unfinished(self) -> int:
        """Cancel the rollouts this fit queued that are still waiting or running (the algorithm failed,
        timed out or was interrupted), so that the next fit on the store does not run them first.
        Returns how many."""
        ids = list(self._unfinished)
        self._unfinished.clear()
        cancelled = 0
        if ids:
            for rollout in await self.store.query_rollouts(rollout_id_in=ids, status_in=UNFINISHED):
                with suppress(InvalidTransition):  # it finished meanwhile
                    await self.store.update_rollout(rollout.rollout_id, status="cancelled")
                    cancelled += 1
        return cancelled

    async def reward(self, rollout: Rollout) -> float | None:
        """The final reward of the rollout's latest attempt: the last ``agl.reward`` among its spans.
        None when the rollout did not succeed: a reward it emitted before failing is a partial score,
        not its result (averaged in, an agent failing every task could score well)."""
        if rollout.status != "succeeded":
            return None
        spans = await self.store.query_spans(rollout.rollout_id, "latest")
        rewards = [span.attributes[REWARD] for span in spans if _is_number(span.attributes.get(REWARD))]
        return float(rewards[-1]) if rewards else None

    async def publish_resources(self, resources: NamedResources) -> ResourcesUpdate:
        """Publish ``resources`` as the next version of this fit's resources (they become the latest)."""
        if self.resources_id is None:
            update = await self.store.add_resources(resources)
            self.resources_id = update.resources_id
            return update
        return await self.store.update_resources(self.resources_id, resources)

    async def republish_initial_resources(self, why: str) -> None:
        """Publish the fit's initial resources again, under an id of their own, as the latest: after
        an algorithm stops a model endpoint it published (its LLM proxy), left the latest, that
        endpoint would give any agent run after the fit a connection error. The fit's own id keeps
        what its rollouts ran with. A failure is logged, not raised: the fit's own error, if any,
        matters more."""
        try:
            update = await self.store.add_resources(dict(self.initial_resources or {}))
        except Exception as error:
            self.logger.warning("%s; the fit's initial resources could not be published again: %s", why, error)
            return
        self.logger.info("%s; the fit's initial resources are the latest again, as %s", why, update.resources_id)

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        """Report one step's metrics: logged, recorded in the store as a span of the training run
        (when the trainer records steps), and passed to every ``agl_step_end`` hook."""
        self.logger.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if self.trainer.run is not None:
            self.trainer.run.log_step(step, metrics)
        self.hooks.agl_step_end(trainer=self.trainer, step=step, metrics=dict(metrics))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
