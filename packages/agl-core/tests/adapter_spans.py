"""Span builders for the adapter tests: stored spans of one rollout and attempt, each span's id
derived from its sequence id so that parents are easy to name."""

from __future__ import annotations

from typing import Any

from agl.core.tracing import semconv
from agl.core.types import Span
from agl.core.types.spans import SpanStatus


def span(
    sequence_id: int,
    name: str = "step",
    attributes: dict[str, Any] | None = None,
    *,
    parent: int | None = None,
    attempt: str = "at-1",
    error: bool = False,
) -> Span:
    return Span(
        rollout_id="ro-1",
        attempt_id=attempt,
        sequence_id=sequence_id,
        trace_id="1" * 32,
        span_id=f"{sequence_id:016x}",
        parent_id=f"{parent:016x}" if parent is not None else None,
        name=name,
        status=SpanStatus(status_code="ERROR", description="boom") if error else SpanStatus(),
        attributes=attributes or {},
        start_time=1_700_000_000.0 + sequence_id / 1e3,
    )


def reward(sequence_id: int, value: float | None, **dimensions: float) -> Span:
    """An ``agl.reward`` span: the scalar reward (if any) and named dimensions."""
    attributes: dict[str, Any] = {semconv.SPAN_KIND: "reward", **{f"agl.reward.{k}": v for k, v in dimensions.items()}}
    if value is not None:
        attributes[semconv.REWARD] = value
    return span(sequence_id, "agl.reward", attributes)
