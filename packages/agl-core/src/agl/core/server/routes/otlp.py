"""OTLP/HTTP trace ingest (``POST /v1/traces``): any OpenTelemetry exporter can point here.

Each span is filed as `agl.core.tracing.identity.file_span` says: under its
``agl.rollout.id``/``agl.attempt.id``, else under a per-trace observed rollout that ends when the
trace's root span arrives. One request is one transaction.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from agl.core.otlp import (
    OtlpBodyTooLarge,
    OtlpDecodeError,
    OtlpSpan,
    OtlpUnsupportedMediaType,
    decode_traces,
    decompress,
    span_resource,
    to_span,
)
from agl.core.server.metrics import Metrics
from agl.core.server.settings import ServerSettings
from agl.core.store.base import LightningStore
from agl.core.store.wire import error_body
from agl.core.tracing.identity import file_span
from agl.core.types import Span, SpanResource

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


async def _file(store: LightningStore, decoded: list[OtlpSpan]) -> tuple[list[Span], dict[str, dict[str, Any]]]:
    """Give every span its rollout and attempt; describe the per-trace rollouts to create."""
    spans: list[Span] = []
    new_rollouts: dict[str, dict[str, Any]] = {}
    latest_attempts: dict[str, str] = {}
    resources: dict[int, SpanResource] = {}  # spans of one resource share its attribute dict
    for span in decoded:
        filing = file_span(span.attributes, span.resource_attributes, span.trace_id, span.start_time)
        attempt_id = filing.attempt_id
        if attempt_id is None:  # only the rollout is named: its latest attempt
            if filing.rollout_id not in latest_attempts:
                latest = await store.get_latest_attempt(filing.rollout_id)
                latest_attempts[filing.rollout_id] = latest.attempt_id if latest else f"at-{filing.rollout_id[3:]}"
            attempt_id = latest_attempts[filing.rollout_id]
        if filing.new_rollout_metadata is not None:
            new_rollouts[filing.rollout_id] = filing.new_rollout_metadata
        resource = resources.get(id(span.resource_attributes))
        if resource is None:
            resource = resources[id(span.resource_attributes)] = span_resource(span)
        spans.append(
            to_span(
                span,
                rollout_id=filing.rollout_id,
                attempt_id=attempt_id,
                sequence_id=filing.sequence_id,
                resource=resource,
            )
        )
    return spans, new_rollouts
