"""OTLP/HTTP trace ingest (``POST /v1/traces``): any OpenTelemetry exporter can point here.

Each span is filed under ``agl.rollout.id``/``agl.attempt.id`` (span attributes, then resource
attributes). Spans without them are kept, not dropped: each trace becomes an observed rollout
(``ro-trace-<trace id>``), which ends when the trace's root span arrives. A span that carries an
``agl.sequence_id`` (set at span start by agl's tracing runtime) keeps it; the others are
numbered by their start time in microseconds: exporters send a span when it *ends*, children
before parents and often in separate batches, so only the start time orders a parent first.
One request is one transaction.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from agl.core.otlp import (
    OtlpBodyTooLarge,
    OtlpDecodeError,
    OtlpSpan,
    OtlpUnsupportedMediaType,
    decode_traces,
    decompress,
    rollout_identity,
    span_resource,
    to_span,
)
from agl.core.server.metrics import Metrics
from agl.core.server.settings import ServerSettings
from agl.core.store.base import LightningStore
from agl.core.store.wire import error_body
from agl.core.types import Span, SpanResource

SEQUENCE_ID_ATTRIBUTE = "agl.sequence_id"
PROTOBUF = "application/x-protobuf"


def build(store: LightningStore, metrics: Metrics, settings: ServerSettings) -> APIRouter:
    router = APIRouter(tags=["otlp"])

    @router.post(
        "/v1/traces",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {PROTOBUF: {"schema": {"type": "string", "format": "binary"}}, "application/json": {}},
            }
        },
        responses={400: {"description": "Malformed OTLP body"}, 413: {}, 415: {}},
    )
    async def export_traces(request: Request) -> Response:
        """An OTLP ``ExportTraceServiceRequest``, protobuf or JSON, optionally gzip/deflate-compressed."""
        content_type = request.headers.get("content-type", "")
        try:
            body = decompress(
                await request.body(), request.headers.get("content-encoding"), settings.max_decompressed_bytes
            )
            decoded = decode_traces(body, content_type)
        except OtlpDecodeError as error:
            return JSONResponse(error_body(error).model_dump(), status_code=_status_of(error))
        spans, new_rollouts = await _file(store, decoded)
        if spans:
            await store.add_observed_spans(spans, new_rollout_metadata=new_rollouts)
            metrics.spans.labels("otlp").inc(len(spans))
        # An empty ExportTraceServiceResponse: full success.
        if content_type.split(";", 1)[0].strip().lower() == PROTOBUF:
            return Response(b"", media_type=PROTOBUF)
        return Response(b"{}", media_type="application/json")

    return router


def _status_of(error: OtlpDecodeError) -> int:
    if isinstance(error, OtlpBodyTooLarge):
        return 413
    if isinstance(error, OtlpUnsupportedMediaType):
        return 415
    return 400  # OTLP/HTTP: bad data is 400, and the exporter must not retry it


async def _file(store: LightningStore, decoded: list[OtlpSpan]) -> tuple[list[Span], dict[str, dict[str, str]]]:
    """Give every span its rollout and attempt; describe the per-trace rollouts to create."""
    spans: list[Span] = []
    new_rollouts: dict[str, dict[str, str]] = {}
    latest_attempts: dict[str, str] = {}
    resources: dict[int, SpanResource] = {}  # spans of one resource share its attribute dict
    for span in decoded:
        rollout_id, attempt_id = rollout_identity(span)
        if rollout_id is None:
            rollout_id = f"ro-trace-{span.trace_id}"
            attempt_id = attempt_id or f"at-trace-{span.trace_id}"
            service = span.resource_attributes.get("service.name")
            new_rollouts[rollout_id] = {"trace_id": span.trace_id, **({"service": service} if service else {})}
        elif attempt_id is None:
            if rollout_id not in latest_attempts:
                latest = await store.get_latest_attempt(rollout_id)
                latest_attempts[rollout_id] = latest.attempt_id if latest else f"at-{rollout_id.removeprefix('ro-')}"
            attempt_id = latest_attempts[rollout_id]
        sequence_id = span.attributes.get(SEQUENCE_ID_ATTRIBUTE)
        if not isinstance(sequence_id, int) or isinstance(sequence_id, bool) or sequence_id < 0:
            sequence_id = round(span.start_time * 1e6) if span.start_time else 0  # 0: the store numbers it
        resource = resources.get(id(span.resource_attributes))
        if resource is None:
            resource = resources[id(span.resource_attributes)] = span_resource(span)
        spans.append(
            to_span(span, rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=sequence_id, resource=resource)
        )
    return spans, new_rollouts
