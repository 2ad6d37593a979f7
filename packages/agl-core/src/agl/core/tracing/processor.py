"""Stamps every span, when it starts, with its rollout, attempt and sequence id.

The rollout comes from the in-process context (`rollout_context`, set by the runner), else from
``AGL_ROLLOUT_ID``/``AGL_ATTEMPT_ID`` (a program run by a runner as a subprocess), else from the
span's resource (``agl.rollout.id``/``agl.attempt.id`` in ``OTEL_RESOURCE_ATTRIBUTES``), else
from the process's own observed rollout. Numbering at start, not at export, is what puts a parent before
its children.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from agl.core.tracing.context import ActiveRollout, current_rollout
from agl.core.tracing.semconv import ATTEMPT_ID, ROLLOUT_ID, SEQUENCE_ID

ROLLOUT_ENV = "AGL_ROLLOUT_ID"
ATTEMPT_ENV = "AGL_ATTEMPT_ID"

logger = logging.getLogger(__name__)


class RolloutSpanProcessor(SpanProcessor):
    def __init__(self, process_rollout: ActiveRollout) -> None:
        rollout_id, attempt_id = os.environ.get(ROLLOUT_ENV), os.environ.get(ATTEMPT_ENV)
        self.launched = ActiveRollout(rollout_id, attempt_id) if rollout_id and attempt_id else None
        self.process = process_rollout
        self._by_resource: dict[tuple[str, str], ActiveRollout] = {}
        self._last_resource: tuple[Resource | None, ActiveRollout | None] = (None, None)
        self.before_shutdown: Callable[[], None] | None = None
        """Run when the provider shuts down. agl adds its processor before any exporting one, and the
        provider shuts its processors down in that order, so spans sent now still go out."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        active = current_rollout() or self.launched or self._from_resource(span) or self.process
        span.set_attributes(
            {ROLLOUT_ID: active.rollout_id, ATTEMPT_ID: active.attempt_id, SEQUENCE_ID: active.next_sequence_id()}
        )

    def _from_resource(self, span: Span) -> ActiveRollout | None:
        resource, last = span.resource, self._last_resource  # one tuple: threads see a matching pair
        if resource is last[0]:  # a provider has one resource: its attributes are read once
            return last[1]
        rollout = self._rollout_of(resource)
        self._last_resource = resource, rollout
        return rollout

    def _rollout_of(self, resource: Resource | None) -> ActiveRollout | None:
        # Each lookup that misses raises and catches a KeyError inside the SDK's attribute mapping.
        attributes = resource.attributes if resource is not None else {}
        rollout_id, attempt_id = attributes.get(ROLLOUT_ID), attributes.get(ATTEMPT_ID)
        if not (isinstance(rollout_id, str) and isinstance(attempt_id, str) and rollout_id and attempt_id):
            return None
        key = (rollout_id, attempt_id)
        if key not in self._by_resource:  # one numbering per attempt, shared by every span
            self._by_resource[key] = ActiveRollout(rollout_id, attempt_id)
        return self._by_resource[key]

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        if self.before_shutdown is None:
            return
        try:
            self.before_shutdown()
        except Exception:  # a provider's shutdown must not fail for agl's sake
            logger.warning("agl could not finish tracing before the provider shut down", exc_info=True)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def has_rollout_processor(provider: object) -> bool:
    """Whether an SDK tracer provider already runs agl's processor, however it was added."""
    # The SDK keeps its processors in a multi-processor; walk nested ones too.
    pending: list[object] = [getattr(provider, "_active_span_processor", None)]
    while pending:
        processor = pending.pop()
        if isinstance(processor, RolloutSpanProcessor):
            return True
        pending.extend(getattr(processor, "_span_processors", ()))
    return False
