"""The training run in the store: one rollout per `fit`, one ``agl.trainer.step`` span per step.

The store has no metrics table, and metrics.jsonl only exists where the trainer ran; a rollout
is what every store backend, the store server and the ``agl`` CLI already show
(``agl rollouts list``, ``agl spans ROLLOUT_ID``). The run's rollout skips the queue (runners
never see it), has no mode and carries ``{"agl.trainer.run": true}`` in its metadata; its
attempt ends succeeded or failed with the fit. A metric that is NaN or infinite is left out of its
step's span (metrics.jsonl has it as null): a span attribute cannot be null, and a NaN would be kept
by a memory store but come back as null from SQLite or over HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import math
from concurrent.futures import Future
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from agl.core.store.base import LightningStore
from agl.core.tracing.semconv import TRAINER_METRIC_PREFIX, TRAINER_RUN, TRAINER_STEP
from agl.core.types import AttemptedRollout

logger = logging.getLogger(__name__)


class TrainingRun:
    """Records one fit. `log_step` is sync (algorithms call it from their loop or a thread); the
    writes are chained on the fit's loop so the spans keep step order, and `finish` waits for them."""

    def __init__(self, store: LightningStore, attempted: AttemptedRollout, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.rollout_id = attempted.rollout_id
        self.attempt_id = attempted.attempt.attempt_id
        self._loop = loop
        # A private provider: these spans are written straight to the store, not exported by the
        # process's tracing (which may not be set up, or may point elsewhere).
        self._tracer = TracerProvider().get_tracer("agl.trainer")
        self._last: asyncio.Future[None] | Future[None] | None = None

    @classmethod
    async def begin(cls, store: LightningStore, description: dict[str, Any]) -> TrainingRun:
        attempted = await store.start_rollout(description, mode=None, metadata={TRAINER_RUN: True})
        await store.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id, status="running")
        return cls(store, attempted, asyncio.get_running_loop())

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        span = self._tracer.start_span(
            TRAINER_STEP,
            attributes={TRAINER_STEP: step, **_finite_attributes(metrics)},
        )
        span.end()
        previous = self._last
        write = self._write(span, previous)
        if _running_loop() is self._loop:
            self._last = asyncio.ensure_future(write)
        else:
            self._last = asyncio.run_coroutine_threadsafe(write, self._loop)

    async def _write(self, span: Any, previous: asyncio.Future[None] | Future[None] | None) -> None:
        await _settled(previous)
        try:
            await self.store.add_otel_span(self.rollout_id, self.attempt_id, span)
        except Exception as error:  # the metrics still reach the hooks and metrics.jsonl
            logger.warning("could not store the metrics of a step in %s: %s", self.rollout_id, error)

    async def finish(self, error: BaseException | None) -> None:
        await _settled(self._last)
        status = "succeeded" if error is None else "failed"
        metadata = {} if error is None else {"error": f"{type(error).__name__}: {error}".rstrip(": ")}
        await self.store.update_attempt(self.rollout_id, self.attempt_id, status=status, metadata=metadata)


def _finite_attributes(metrics: dict[str, float]) -> dict[str, float]:
    """The step's metrics as span attributes, those that are NaN or infinite left out."""
    values = {TRAINER_METRIC_PREFIX + name: float(value) for name, value in metrics.items()}
    return {key: value for key, value in values.items() if math.isfinite(value)}


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _settled(write: asyncio.Future[None] | Future[None] | None) -> None:
    """Wait for an earlier write, from this loop or another thread; its failure was logged already."""
    if write is not None:
        await asyncio.gather(asyncio.wrap_future(write), return_exceptions=True)
