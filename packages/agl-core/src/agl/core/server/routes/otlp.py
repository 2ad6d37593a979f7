"""OTLP/HTTP trace ingest (``POST /v1/traces``): any OpenTelemetry exporter can point here.

Each span is filed as `agl.core.tracing.identity.file_span` says: under its
``agl.rollout.id``/``agl.attempt.id``, else under a per-trace observed rollout that ends when the
trace's root span arrives. One request is one transaction.

As OTLP/HTTP asks, a failed request is answered with a ``google.rpc.Status`` in the request's
encoding (the token check and body limit do the same for this path), and a span whose own fields
are invalid is refused alone, in a partial success (a body none of whose spans can be read is a 400).

Spans travel as documents, not `Span` models: `decode_documents` builds the dict that
``Span.model_dump()`` would give, this route fills in the rollout, attempt and sequence ids and
serialises it with ``orjson`` as it is decoded, and a `LifecycleStore` (SQLite, memory) stores
that JSON. For LLM-sized spans the models
(validation, then pydantic's serializer) cost more than decoding the protobuf; the JSON stored is
byte for byte the same (``tests/test_otlp_documents.py``). Any other store gets models.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio.to_thread
import orjson
from fastapi import APIRouter, Request, Response

from agl.core.errors import AglError
from agl.core.ids import sequence_clock
from agl.core.otlp import (
    OtlpBodyTooLarge,
    OtlpDecodeError,
    OtlpUnsupportedMediaType,
    decode_documents,
    decompress,
    error_status,
    export_response,
    load_protobuf,
    wants_json,
)
from agl.core.server.errors import error_response
from agl.core.server.metrics import Metrics
from agl.core.server.settings import ServerSettings
from agl.core.store.base import LightningStore
from agl.core.store.lifecycle import LifecycleStore
from agl.core.tracing.identity import file_span
from agl.core.tracing.semconv import ATTEMPT_ID, ROLLOUT_ID, SEQUENCE_ID, SPAN_DROPPED
from agl.core.types import Span
from agl.core.types.spans import MAX_INT64

PROTOBUF = "application/x-protobuf"
logger = logging.getLogger(__name__)
MAX_ID_LENGTH = 256
"""`agl.core.types.fields.Id`'s bound, checked here because documents skip the model's validation."""


def build(store: LightningStore, metrics: Metrics, settings: ServerSettings) -> APIRouter:
    router = APIRouter(tags=["otlp"])
    load_protobuf()

    @router.post(
        "/v1/traces",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {PROTOBUF: {"schema": {"type": "string", "format": "binary"}}, "application/json": {}},
            }
        },
        responses={
            400: {"description": "Malformed OTLP body; every failure's body is a google.rpc.Status"},
            413: {"description": "Body over the limit"},
            415: {"description": "Unsupported content type or encoding"},
        },
    )
    async def export_traces(request: Request) -> Response:
        """An OTLP ``ExportTraceServiceRequest``, protobuf or JSON, optionally gzip/deflate-compressed.

        A failure is answered as OTLP/HTTP asks, with a ``google.rpc.Status`` in the request's
        encoding (not the rest of the API's `ErrorBody`), so OTLP clients can read why."""
        content_type = request.headers.get("content-type", "")
        body = await request.body()
        try:
            count, slimmed, refused = await _ingest(
                store, body, content_type, request.headers.get("content-encoding"), settings
            )
        except OtlpDecodeError as error:
            return _failure(_status_of(error), str(error), content_type)
        except AglError as error:  # from the store: the status the rest of the API gives it
            return _failure(error_response(error).status_code, str(error), content_type)
        except Exception:
            logger.exception("unexpected error ingesting OTLP spans")
            return _failure(500, "internal server error; see the server log", content_type)
        if count:
            metrics.spans.labels("otlp").inc(count)
        message = "; ".join(filter(None, (_told(refused, "refused"), _told(slimmed, "stored without their content"))))
        if message:
            logger.warning("OTLP export: %s", message)
        protobuf = content_type.split(";", 1)[0].strip().lower() == PROTOBUF
        return Response(
            export_response(len(refused), message, protobuf), media_type=PROTOBUF if protobuf else "application/json"
        )

    return router


def _failure(status: int, message: str, content_type: str) -> Response:
    body, media_type = error_status(status, message, wants_json(content_type))
    return Response(body, status_code=status, media_type=media_type)


def _told(spans: list[str], what: str) -> str:
    return f"{len(spans)} span(s) {what}, the first: {spans[0]}" if spans else ""


async def _ingest(
    store: LightningStore, body: bytes, content_type: str, content_encoding: str | None, settings: ServerSettings
) -> tuple[int, list[str], list[str]]:
    """Decode, file and store one request's spans: how many were stored, and which were stored
    without their content or refused, and why. Everything it made is freed on return."""
    body = decompress(body, content_encoding, settings.max_decompressed_bytes)  # zlib's C, fast beside decoding
    invalid: list[str] = []
    if len(body) < OFF_LOOP_BYTES:
        with _collector_paused():
            return await _store(store, decode_documents(body, content_type, invalid), invalid)
    documents = await anyio.to_thread.run_sync(_decode_all, body, content_type, invalid)
    with _collector_paused():  # not while the thread decodes: the whole server would run without it
        return await _store(store, documents, invalid)


OFF_LOOP_BYTES = 4 * 1024 * 1024
"""A body this large (decompressed) is decoded in a worker thread: a 64 MiB one takes seconds,
during which the event loop would answer no one (not even /health). Smaller ones, exporters'
usual batches among them (512 LLM-call spans are ~2 MB), are decoded on the loop, under
`_collector_paused`, which is fastest: the thread's decoding runs with the collector on."""


def _decode_all(body: bytes, content_type: str, invalid: list[str]) -> Iterator[dict[str, Any]]:
    """Every span document of ``body`` (off the event loop); invalid spans go to ``invalid``."""
    return iter(list(decode_documents(body, content_type, invalid)))


async def _store(
    store: LightningStore, documents: Iterator[dict[str, Any]], invalid: list[str]
) -> tuple[int, list[str], list[str]]:
    """File and store the documents (see `_ingest`); ``invalid`` spans count as refused, unless
    every span was: a sender none of whose spans can be read is misconfigured, and gets a 400."""
    max_bytes = store.max_span_bytes if isinstance(store, LifecycleStore) else None
    spans, new_rollouts, slimmed, refused = await _file(store, documents, max_bytes)
    if invalid and not spans and not refused:
        raise OtlpDecodeError(_told(invalid, "invalid") if len(invalid) > 1 else invalid[0])
    refused[:0] = invalid
    if spans:
        if isinstance(store, LifecycleStore):
            await store.add_observed_span_documents(spans, new_rollout_metadata=new_rollouts, encode=orjson.dumps)
        else:
            models = [Span.model_validate(document) for document, _ in spans]
            await store.add_observed_spans(models, new_rollout_metadata=new_rollouts)
    return len(spans), slimmed, refused


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a batch is decoded and stored.

    Why: a batch allocates thousands of dicts and lists (each span's document) that all live until
    the batch is stored, so the collector runs again and again, finds nothing, promotes them all,
    and every few batches walks every object in the process: ~10% of the time of LLM-sized spans.
    Nothing a batch allocates forms a reference cycle (reference counting frees it all), so the
    pause loses nothing; the collector runs as usual after the request, by when the batch has been
    freed (so its first run has little to look at). If something else has paused it, it is left
    alone.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _status_of(error: OtlpDecodeError) -> int:
    if isinstance(error, OtlpBodyTooLarge):
        return 413
    if isinstance(error, OtlpUnsupportedMediaType):
        return 415
    return 400  # OTLP/HTTP: bad data is 400, and the exporter must not retry it


async def _file(
    store: LightningStore, documents: Iterator[dict[str, Any]], max_bytes: int | None
) -> tuple[list[tuple[dict[str, Any], bytes | None]], dict[str, dict[str, Any]], list[str], list[str]]:
    """Give every span document its rollout, attempt and sequence id (in place) and its JSON (None
    while the store has still to number it); describe the per-trace rollouts to create.

    A span whose JSON is over ``max_bytes`` is stored without its large attributes, events and
    links (`_without_content`), and left out only if even that is too large; either is said. An
    exporter does not resend a refused request, so refusing the batch would lose all of it, and
    leaving the span out would cut its children from the tree (and, for a trace's root, leave
    the observed rollout running)."""
    spans: list[tuple[dict[str, Any], bytes | None]] = []
    new_rollouts: dict[str, dict[str, Any]] = {}
    slimmed: list[str] = []
    refused: list[str] = []
    latest_attempts: dict[str, str] = {}
    # A span that names no rollout, attempt or sequence id itself is filed by its resource and trace
    # alone: `file_span` once per (resource, trace), as most spans of a batch share both.
    by_trace: dict[tuple[int, str], tuple[str, str | None, dict[str, Any] | None, dict[str, Any]]] = {}
    for document in documents:
        attributes, start_time = document["attributes"], document["start_time"]
        resource_attributes, trace_id = document["resource"]["attributes"], document["trace_id"]
        if ROLLOUT_ID in attributes or ATTEMPT_ID in attributes or SEQUENCE_ID in attributes:
            filing = file_span(attributes, resource_attributes, trace_id, start_time)
            rollout_id, attempt_id, sequence_id = filing.rollout_id, filing.attempt_id, filing.sequence_id
            metadata = filing.new_rollout_metadata
        else:
            key = (id(resource_attributes), trace_id)
            known = by_trace.get(key)
            if known is None:
                filing = file_span(attributes, resource_attributes, trace_id, start_time)
                # The resource dict is kept in the entry: a dict freed (all its spans refused) could
                # give its id to a later resource, whose spans would be filed under this one's rollout.
                known = by_trace[key] = (
                    filing.rollout_id,
                    filing.attempt_id,
                    filing.new_rollout_metadata,
                    resource_attributes,
                )
            rollout_id, attempt_id, metadata, _ = known
            sequence_id = sequence_clock(start_time) if start_time else 0  # `file_span`'s, with no agl.sequence_id
        if attempt_id is None:  # only the rollout is named: its latest attempt
            if rollout_id not in latest_attempts:
                latest_attempts[rollout_id] = await _latest_attempt_id(store, rollout_id, document)
            attempt_id = latest_attempts[rollout_id]
        if len(rollout_id) > MAX_ID_LENGTH or len(attempt_id) > MAX_ID_LENGTH:
            raise OtlpDecodeError(
                f"span {document['span_id']!r} ({document['name']!r}): a rollout or attempt id is longer than"
                f" {MAX_ID_LENGTH} characters"
            )
        document["rollout_id"] = rollout_id
        document["attempt_id"] = attempt_id
        document["sequence_id"] = sequence_id
        data = _encode(document)
        # A span with no start time is numbered by the store, whose id takes up to 18 more digits.
        room = None if max_bytes is None else max_bytes - (0 if sequence_id else UNNUMBERED_GROWTH)
        if data is not None and room is not None and len(data) > room:
            why = f"span {document['span_id']!r} ({document['name']!r}) is {len(data)} bytes; the limit is {max_bytes}"
            document = _without_content(document, why)
            data = _encode(document)
            if data is None or len(data) > room:
                refused.append(why)
                continue
            slimmed.append(why)
        if metadata is not None:
            new_rollouts[rollout_id] = metadata
        spans.append((document, data if sequence_id else None))
    return spans, new_rollouts, slimmed, refused


LARGE_ATTRIBUTE_CHARACTERS = 256
UNNUMBERED_GROWTH = len(str(MAX_INT64)) - 1
"""How much longer a span's JSON grows when the store replaces its ``"sequence_id": 0``."""


def _without_content(document: dict[str, Any], why: str) -> dict[str, Any]:
    """The span with its events, links and large attributes (strings over
    `LARGE_ATTRIBUTE_CHARACTERS`, lists) dropped and `SPAN_DROPPED` saying which and why: its
    name, times, status, place in the tree and small attributes (ids, kinds, names) are kept."""
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in document["attributes"].items():
        large = isinstance(value, list | dict) or (isinstance(value, str) and len(value) > LARGE_ATTRIBUTE_CHARACTERS)
        if large:
            dropped.append(key)
        else:
            kept[key] = value
    kept[SPAN_DROPPED] = f"{why}: dropped its events, links and attributes {', '.join(dropped) or '(none)'}"
    return {**document, "attributes": kept, "events": [], "links": []}


async def _latest_attempt_id(store: LightningStore, rollout_id: str, document: dict[str, Any]) -> str:
    """The attempt of a span that names only its rollout: the rollout's latest. A rollout the store
    lacks is observed, made with the attempt named here; one still queued has none to join, which
    the sender is told in those words (the attempt named here would be unknown to it)."""
    latest = await store.get_latest_attempt(rollout_id)
    if latest is not None:
        return latest.attempt_id
    if await store.get_rollout_by_id(rollout_id) is not None:
        raise OtlpDecodeError(
            f"span {document['span_id']!r} ({document['name']!r}): rollout {rollout_id!r} has no attempt yet;"
            " name one with agl.attempt.id, or start the rollout first"
        )
    return f"at-{rollout_id.removeprefix('ro-')}"  # as the agl_store exporter names it


def _encode(document: dict[str, Any]) -> bytes | None:
    """``orjson.dumps``; a value it refuses is left for the store to report (as `InvalidInput`)."""
    try:
        return orjson.dumps(document)
    except TypeError:  # orjson.JSONEncodeError
        return None
