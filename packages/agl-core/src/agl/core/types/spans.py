"""A persisted OpenTelemetry span, stamped with the rollout and attempt it belongs to.

Attribute values are any JSON value (not only OTel's primitives), so whole message lists are
kept as one structured attribute; ``sequence_id`` orders spans within an attempt and is
assigned when the span starts, so a parent always sorts before its children.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agl.core.types.fields import Id

SpanKind = Literal["INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"]
StatusCode = Literal["UNSET", "OK", "ERROR"]

Attributes = dict[str, Any]
"""JSON values. Checked when a store serialises the span, not here: pydantic's JsonValue
validator calls back into Python for every nested value, which tripled the cost of a span."""
MAX_INT64 = 2**63 - 1
"""Integers that are stored in database columns fit in 64 bits."""


class SpanStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    status_code: StatusCode = "UNSET"
    description: str | None = None


class SpanEvent(BaseModel):
    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    name: str
    timestamp: float | None = None
    attributes: Attributes = Field(default_factory=dict)


class SpanLink(BaseModel):
    model_config = ConfigDict(frozen=True)

    trace_id: str
    span_id: str
    attributes: Attributes = Field(default_factory=dict)


class SpanResource(BaseModel):
    model_config = ConfigDict(frozen=True)

    attributes: Attributes = Field(default_factory=dict)
    schema_url: str = ""


class Span(BaseModel):
    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    rollout_id: Id
    attempt_id: Id
    sequence_id: int = Field(ge=0, le=MAX_INT64)
    trace_id: Id
    span_id: Id
    parent_id: str | None = None
    name: str
    kind: SpanKind = "INTERNAL"
    status: SpanStatus = SpanStatus()
    attributes: Attributes = Field(default_factory=dict)
    events: list[SpanEvent] = Field(default_factory=list)
    links: list[SpanLink] = Field(default_factory=list)
    start_time: float | None = None
    end_time: float | None = None
    resource: SpanResource = SpanResource()

    @classmethod
    def from_otel(cls, readable_span: Any, *, rollout_id: str, attempt_id: str, sequence_id: int) -> Span:
        """Convert an OpenTelemetry SDK ``ReadableSpan`` (nanosecond times, int ids)."""
        context = readable_span.get_span_context()
        parent = readable_span.parent
        status = readable_span.status
        resource = readable_span.resource
        return cls(
            rollout_id=rollout_id,
            attempt_id=attempt_id,
            sequence_id=sequence_id,
            trace_id=format(context.trace_id, "032x"),
            span_id=format(context.span_id, "016x"),
            parent_id=format(parent.span_id, "016x") if parent is not None else None,
            name=readable_span.name,
            kind=readable_span.kind.name,
            status=SpanStatus(status_code=status.status_code.name, description=status.description),
            attributes=_plain_attributes(readable_span.attributes),
            events=[
                SpanEvent(name=e.name, timestamp=_seconds(e.timestamp), attributes=_plain_attributes(e.attributes))
                for e in readable_span.events
            ],
            links=[
                SpanLink(
                    trace_id=format(link.context.trace_id, "032x"),
                    span_id=format(link.context.span_id, "016x"),
                    attributes=_plain_attributes(link.attributes),
                )
                for link in readable_span.links
            ],
            start_time=_seconds(readable_span.start_time),
            end_time=_seconds(readable_span.end_time),
            resource=SpanResource(
                attributes=_plain_attributes(resource.attributes if resource is not None else None),
                schema_url=(resource.schema_url if resource is not None else "") or "",
            ),
        )


def _seconds(nanoseconds: int | None) -> float | None:
    return None if nanoseconds is None else nanoseconds / 1e9


def _plain_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """OTel hands out immutable mappings and tuples; store plain dicts and lists."""
    if not attributes:
        return {}
    return {
        key: list(value) if isinstance(value, Sequence) and not isinstance(value, str | bytes) else value
        for key, value in attributes.items()
    }
