"""Stamps every span, when it starts, with its rollout, attempt and sequence id.

The rollout comes from the in-process context (`rollout_context`, set by the runner), else from
``AGL_ROLLOUT_ID``/``AGL_ATTEMPT_ID`` (a program run by a runner as a subprocess), else from the
process's own observed rollout. Numbering at start, not at export, is what puts a parent before
its children.
"""

from __future__ import annotations

import os

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from agl.core.tracing.context import ActiveRollout, current_rollout
from agl.core.tracing.semconv import ATTEMPT_ID, ROLLOUT_ID, SEQUENCE_ID

ROLLOUT_ENV = "AGL_ROLLOUT_ID"
ATTEMPT_ENV = "AGL_ATTEMPT_ID"


class RolloutSpanProcessor(SpanProcessor):
    def __init__(self, process_rollout: ActiveRollout) -> None:
        rollout_id, attempt_id = os.environ.get(ROLLOUT_ENV), os.environ.get(ATTEMPT_ENV)
        # A program launched for a rollout files everything under it; any other program gets one
        # observed rollout of its own.
        self.fallback = ActiveRollout(rollout_id, attempt_id) if rollout_id and attempt_id else process_rollout

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        active = current_rollout() or self.fallback
        span.set_attributes(
            {ROLLOUT_ID: active.rollout_id, ATTEMPT_ID: active.attempt_id, SEQUENCE_ID: active.next_sequence_id()}
        )

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
