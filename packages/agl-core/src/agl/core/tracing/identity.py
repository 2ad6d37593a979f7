"""Where a finished span is filed: shared by the OTLP route and the store exporter.

Identity comes from ``agl.rollout.id``/``agl.attempt.id`` on the span, then on its resource.
A span with none is kept under a per-trace observed rollout ``ro-trace-<trace id>``. A span's
``agl.sequence_id`` (stamped at start by agl's processor) is kept; without one, the start time
in microseconds orders it (exporters send children before parents, in separate batches).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agl.core.ids import sequence_clock
from agl.core.tracing.semconv import ATTEMPT_ID, ROLLOUT_ID, SEQUENCE_ID


@dataclass(frozen=True, slots=True)
class Filing:
    rollout_id: str
    attempt_id: str | None
    """None when only the rollout is named: the caller picks its latest attempt."""
    sequence_id: int
    new_rollout_metadata: dict[str, Any] | None
    """Metadata for the rollout if it must be created (per-trace observed rollouts)."""


def file_span(
    attributes: Mapping[str, Any], resource_attributes: Mapping[str, Any], trace_id: str, start_time: float | None
) -> Filing:
    rollout_id = _text(attributes, resource_attributes, ROLLOUT_ID)
    attempt_id = _text(attributes, resource_attributes, ATTEMPT_ID)
    metadata = None
    if rollout_id is None:
        rollout_id = f"ro-trace-{trace_id}"
        attempt_id = attempt_id or f"at-trace-{trace_id}"
        service = resource_attributes.get("service.name")
        metadata = {"trace_id": trace_id, **({"service": service} if isinstance(service, str) else {})}
    sequence_id = attributes.get(SEQUENCE_ID)
    if not isinstance(sequence_id, int) or isinstance(sequence_id, bool) or sequence_id < 0:
        sequence_id = sequence_clock(start_time) if start_time else 0  # 0: the store numbers it
    return Filing(rollout_id, attempt_id, sequence_id, metadata)


def _text(attributes: Mapping[str, Any], resource_attributes: Mapping[str, Any], key: str) -> str | None:
    for source in (attributes, resource_attributes):
        value = source.get(key)
        if isinstance(value, str) and value:
            return value
    return None
