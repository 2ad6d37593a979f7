"""Decoding of OTLP/HTTP trace export bodies (``POST /v1/traces``) into plain, frozen spans.

Pure functions, bytes in and dataclasses out, so the store server's route stays thin and the
decoder is tested without HTTP. Anything malformed is one `OtlpDecodeError` (an `InvalidInput`)
whose one-line message names the problem and, inside the body, the field path. OTLP/HTTP wants
400 for bad data and 413 for a body over the limit (`OtlpBodyTooLarge`); an unknown media type
or encoding is `OtlpUnsupportedMediaType` (HTTP's 415).

Protobuf goes through the official ``opentelemetry-proto`` classes (the ``server`` extra; they
are imported on first use, so the rest of this module works without them). JSON follows the
OTLP/JSON encoding, which differs from protobuf's standard JSON mapping: ids are hex (in either
case), enums are integers only, and keys are lowerCamelCase only; unknown keys are ignored and
``null`` means "absent", as the specification requires.

Two outputs from one walk of the body: `decode_traces` gives `OtlpSpan` dataclasses (the API, and
what tests compare), `decode_documents` gives *span documents*, plain dicts shaped exactly as
``Span.model_dump()`` would be, which the store server's ingest route files and hands to the store
without building a `Span` model per span (building and serialising the models cost more than the
decoding; see docs/benchmarks.md).
"""

from __future__ import annotations

import base64
import functools
import json
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic_core import from_json

from agl.core.errors import InvalidInput
from agl.core.types.spans import Attributes, Span, SpanKind, SpanResource, SpanStatus, StatusCode

TRACES_PATH = "/v1/traces"
"""OTLP/HTTP's default path for traces, where the store server ingests them."""
SCOPE_NAME_ATTRIBUTE = "otel.scope.name"
SCOPE_VERSION_ATTRIBUTE = "otel.scope.version"

# Indexed by the OTLP enum value. SPAN_KIND_UNSPECIFIED (0) may be read as INTERNAL (trace.proto).
_KINDS: tuple[SpanKind, ...] = ("INTERNAL", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
_STATUS_CODES: tuple[StatusCode, ...] = ("UNSET", "OK", "ERROR")

_T = TypeVar("_T")


class OtlpDecodeError(InvalidInput):
    """An OTLP body that cannot be decoded; the message names the problem in one line."""


class OtlpBodyTooLarge(OtlpDecodeError):
    """The body exceeds the cap once decompressed (OTLP/HTTP answers 413, and the client must not retry)."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class OtlpUnsupportedMediaType(OtlpDecodeError):
    """A content type or content encoding this decoder does not speak (HTTP 415)."""


@dataclass(frozen=True, slots=True)
class OtlpEvent:
    name: str
    time: float | None
    attributes: Attributes


@dataclass(frozen=True, slots=True)
class OtlpLink:
    trace_id: str
    span_id: str
    attributes: Attributes


@dataclass(frozen=True, slots=True)
class OtlpSpan:
    """One decoded span with its resource and scope flattened in; ids are lowercase hex, times seconds.

    Spans of one resource share its ``resource_attributes`` dict: treat it as read-only.
    """

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: SpanKind
    status_code: StatusCode
    status_description: str | None
    attributes: Attributes
    events: tuple[OtlpEvent, ...]
    links: tuple[OtlpLink, ...]
    start_time: float | None
    end_time: float | None
    resource_attributes: Attributes
    resource_schema_url: str
    scope_name: str
    scope_version: str


# ---------------------------------------------------------------------------------------------
# Content-Encoding


_WBITS = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,
    "zlib": zlib.MAX_WBITS,  # the Collector's otlphttp exporter's name for deflate
}


def decompress(body: bytes, content_encoding: str | None, max_decompressed_bytes: int) -> bytes:
    """Undo ``Content-Encoding`` (identity, gzip, deflate/zlib) without ever holding more than the cap.

    Inflating stops one byte past ``max_decompressed_bytes``, so a gzip bomb costs the cap in
    memory and time, not its full size. ``deflate`` is the zlib format, as HTTP (and the Python
    OTLP exporter) use it; gzip may have several members, as RFC 1952 allows.
    """
    codings = [c for c in (content_encoding or "").lower().split(",") if c.strip() not in ("identity", "none", "")]
    if len(codings) > 1:
        raise OtlpUnsupportedMediaType(
            f"unsupported content encoding {content_encoding!r}: expected one of gzip, deflate, zlib or identity"
        )
    encoding = codings[0].strip() if codings else "identity"
    if encoding == "identity":
        if len(body) > max_decompressed_bytes:
            raise OtlpBodyTooLarge(f"body exceeds {max_decompressed_bytes} bytes", max_decompressed_bytes)
        return body
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise OtlpUnsupportedMediaType(
            f"unsupported content encoding {content_encoding!r}: expected gzip, deflate, zlib or identity"
        )
    return _inflate(body, encoding, wbits, max_decompressed_bytes)


_FIRST_WINDOW = 1 << 16
"""Bytes of a body first given to zlib: a gzipped batch of hundreds of LLM spans fits (one call)."""
_MIN_WINDOW = 256


def _inflate(body: bytes, encoding: str, wbits: int, limit: int) -> bytes:
    """Inflate each stream (gzip member) of ``body`` in turn, fed in windows that double until it
    ends; each next stream's first window is twice the size of the last stream.

    Why windows: at a stream's end zlib copies whatever it was given past it (``unused_data``);
    given the whole rest of the body each time, a body of many tiny gzip members was quadratic
    (32 MiB of them, the default body limit, kept the server busy for about 20 minutes)."""
    parts: list[bytes] = []
    room = limit
    data = memoryview(body)
    start = 0
    window = _FIRST_WINDOW
    while True:
        inflater = zlib.decompressobj(wbits)
        stream_start = start
        while not inflater.eof:
            if start >= len(data):
                raise OtlpDecodeError(f"{encoding} body is truncated")
            chunk = data[start : start + window]
            start += len(chunk)
            window *= 2
            try:
                part = inflater.decompress(chunk, room + 1)  # under room + 1 bytes: took all of chunk, or ended
            except zlib.error as error:
                raise OtlpDecodeError(f"{encoding} body is corrupt: {error}") from None
            if len(part) > room:
                raise OtlpBodyTooLarge(f"decompressed body exceeds {limit} bytes", limit)
            if part:  # b"".join takes 80 bytes a part, and a chunk may inflate to nothing
                parts.append(part)
                room -= len(part)
        start -= len(inflater.unused_data)
        if start == len(data):
            return b"".join(parts)
        if wbits == zlib.MAX_WBITS:
            raise OtlpDecodeError(f"{encoding} body is corrupt: data after the end of the stream")
        window = max(_MIN_WINDOW, 2 * (start - stream_start))


# ---------------------------------------------------------------------------------------------
# Content-Type


def decode_traces(body: bytes, content_type: str) -> list[OtlpSpan]:
    """Decode an ``ExportTraceServiceRequest`` (already decompressed) by its media type.

    An empty request (no resource spans) is valid and gives no spans, as OTLP/HTTP asks.
    """
    return list(_decode(body, content_type, _otlp_span))


def decode_documents(body: bytes, content_type: str, rejected: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Decode like `decode_traces`, straight into span documents (the store server's ingest path).

    With a ``rejected`` list, a span whose own fields are invalid (an id of the wrong length, an
    unknown kind, a malformed attribute) is left out and the reason appended to the list, so one
    bad span does not cost the batch (OTLP's partial success). Not one that may be a trace's root
    (its parent id not a valid one): an observed rollout ends when its root arrives, and one
    refused would leave it running for good. Such a span, and a body malformed outside its spans,
    is an `OtlpDecodeError`.

    Each document has the keys, order and values of ``to_span(span, …).model_dump()`` for the span
    `decode_traces` gives (the scope as ``otel.scope.*`` attributes included), with ``rollout_id``
    and ``attempt_id`` left empty and ``sequence_id`` 0 for the caller to fill in. Documents of one
    resource share its ``resource`` dict: treat it as read-only.

    Protobuf spans are decoded one at a time as the iterator is consumed, and a decoding error is
    raised there: consume it whole before acting on what it gave, as an error may come at the end.
    """
    return _decode(body, content_type, _document, rejected)


def _decode(body: bytes, content_type: str, make: Callable[..., _T], rejected: list[str] | None = None) -> Iterator[_T]:
    """The spans of ``body``, each built by ``make`` (`_otlp_span` or `_document`, called by keyword
    with the span's fields; its events, links and resource come as the documents `Span.model_dump()`
    gives)."""
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type == "application/x-protobuf":
        return _decode_protobuf(body, make, rejected)
    if media_type == "application/json":
        return _decode_json(body, make, rejected)
    raise OtlpUnsupportedMediaType(
        f"unsupported content type {content_type!r}: expected application/x-protobuf or application/json"
    )


def _otlp_span(
    trace_id: str,
    span_id: str,
    parent_id: str | None,
    name: str,
    kind: SpanKind,
    status_code: StatusCode,
    status_description: str | None,
    attributes: Attributes,
    events: list[dict[str, Any]],
    links: list[dict[str, Any]],
    start_time: float | None,
    end_time: float | None,
    resource: dict[str, Any],
    scope_name: str,
    scope_version: str,
) -> OtlpSpan:
    """`decode_traces`'s builder. It repeats `_document`'s parameters because the walkers call either
    positionally: a tuple of fields per span cost ~1.3 µs, 5% of decoding an LLM span (measured)."""
    return OtlpSpan(
        trace_id=trace_id,
        span_id=span_id,
        parent_id=parent_id,
        name=name,
        kind=kind,
        status_code=status_code,
        status_description=status_description,
        attributes=attributes,
        events=tuple(OtlpEvent(e["name"], e["timestamp"], e["attributes"]) for e in events),
        links=tuple(OtlpLink(link["trace_id"], link["span_id"], link["attributes"]) for link in links),
        start_time=start_time,
        end_time=end_time,
        resource_attributes=resource["attributes"],
        resource_schema_url=resource["schema_url"],
        scope_name=scope_name,
        scope_version=scope_version,
    )


def _document(
    trace_id: str,
    span_id: str,
    parent_id: str | None,
    name: str,
    kind: SpanKind,
    status_code: StatusCode,
    status_description: str | None,
    attributes: Attributes,
    events: list[dict[str, Any]],
    links: list[dict[str, Any]],
    start_time: float | None,
    end_time: float | None,
    resource: dict[str, Any],
    scope_name: str,
    scope_version: str,
) -> dict[str, Any]:
    """`to_span(…).model_dump()` without the model: ``attributes`` is this span's own fresh dict,
    so the scope attributes go into it in place (appended, as ``{**attributes, **scope}`` would)."""
    if scope_name and SCOPE_NAME_ATTRIBUTE not in attributes:
        attributes[SCOPE_NAME_ATTRIBUTE] = scope_name
    if scope_version and SCOPE_VERSION_ATTRIBUTE not in attributes:
        attributes[SCOPE_VERSION_ATTRIBUTE] = scope_version
    return {
        "rollout_id": "",
        "attempt_id": "",
        "sequence_id": 0,
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_id": parent_id,
        "name": name,
        "kind": kind,
        "status": {"status_code": status_code, "description": status_description},
        "attributes": attributes,
        "events": events,
        "links": links,
        "start_time": start_time,
        "end_time": end_time,
        "resource": resource,
    }


class _Invalid(Exception):
    """A problem deep inside a body. Each enclosing level adds its path segment while the error
    travels up, so the happy path never builds a path string."""

    def __init__(self, problem: str, *path: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = list(path)  # innermost first

    def within(self, *segments: str) -> _Invalid:
        self.path.extend(segments)
        return self

    def message(self, encoding: str) -> str:
        return f"{encoding} body: {'.'.join(reversed(self.path))} {self.problem}"


def _seconds(nanoseconds: int) -> float | None:
    """OTLP's 0 means "unknown", which our model says with None; same arithmetic as `Span.from_otel`."""
    return nanoseconds / 1e9 if nanoseconds else None


def _kind(value: int, field: str) -> SpanKind:
    if 0 <= value < len(_KINDS):
        return _KINDS[value]
    raise _Invalid(f"{value} is not a SpanKind (0-5)", field)


def _status_code(value: int, field: str) -> StatusCode:
    if 0 <= value < len(_STATUS_CODES):
        return _STATUS_CODES[value]
    raise _Invalid(f"{value} is not a StatusCode (0-2)", field)


# ---------------------------------------------------------------------------------------------
# Protobuf: the official classes parse (in C with upb); we only walk the parsed message.
#
# The walk is most of the cost of ingest, so it is written for speed: upb builds a Python object
# for every field read (a string value too), so each field is read once, into a local; the common
# case (a string attribute, a span with no events or links, a valid id) takes no function call.


@functools.cache
def load_protobuf() -> tuple[type[Any], type[Exception]]:
    """The request class and its parse error, imported once. A server calls this when it starts,
    so the first export does not wait for the import (~15 ms)."""
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    return ExportTraceServiceRequest, DecodeError


def export_response(rejected_spans: int, error_message: str, protobuf: bool) -> bytes:
    """An ``ExportTraceServiceResponse``: empty for full success, else its ``partial_success``
    saying how many spans were refused and why (OTLP's answer when a request is accepted in part;
    with none refused, the message is a warning, as OTLP allows)."""
    if protobuf:
        if not rejected_spans and not error_message:
            return b""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        partial = {"rejected_spans": rejected_spans, "error_message": error_message}
        return ExportTraceServiceResponse(partial_success=partial).SerializeToString()
    if not rejected_spans and not error_message:
        return b"{}"
    # OTLP/JSON writes 64-bit integers as strings.
    return json.dumps(
        {"partialSuccess": {"rejectedSpans": str(rejected_spans), "errorMessage": error_message}}
    ).encode()


# gRPC codes (google.rpc.Code) of the HTTP statuses /v1/traces answers. OTLP clients are not to act
# on the code (the HTTP status says whether to retry), but may log it: it follows gRPC's own use.
_RPC_CODES = {
    400: 3,  # INVALID_ARGUMENT
    401: 16,  # UNAUTHENTICATED
    404: 5,  # NOT_FOUND
    409: 9,  # FAILED_PRECONDITION: a status change the state machine forbids
    413: 8,  # RESOURCE_EXHAUSTED: gRPC's own code for a message over the size limit
    415: 12,  # UNIMPLEMENTED: an encoding this server does not speak
    422: 3,  # INVALID_ARGUMENT
    429: 8,  # RESOURCE_EXHAUSTED
    503: 14,  # UNAVAILABLE
}
_UNKNOWN = 2
_INTERNAL = 13


def request_error(scope_headers: list[tuple[bytes, bytes]], http_status: int, message: str) -> tuple[bytes, bytes]:
    """`error_status` for a request seen as ASGI middleware sees it (raw headers), as bytes."""
    content_type = dict(scope_headers).get(b"content-type", b"").decode("latin-1")
    body, media_type = error_status(http_status, message, wants_json(content_type))
    return body, media_type.encode()


def wants_json(content_type: str | None) -> bool:
    """Whether a request was OTLP/JSON, so its answers are JSON too (anything else is answered in
    protobuf, the encoding OTLP/HTTP defaults to)."""
    return (content_type or "").partition(";")[0].strip().lower() == "application/json"


def error_status(http_status: int, message: str, json_encoded: bool) -> tuple[bytes, str]:
    """The body and content type of a failed OTLP/HTTP request: a ``google.rpc.Status`` (its code
    and message), protobuf- or JSON-encoded as the request was, as the specification requires.

    Encoded by hand: the message class comes with ``googleapis-common-protos``, which the
    ``server`` extra does not pull in, and its two fields are two tagged values."""
    code = _RPC_CODES.get(http_status, _INTERNAL if http_status >= 500 else _UNKNOWN)
    if json_encoded:
        return json.dumps({"code": code, "message": message}).encode(), "application/json"
    text = message.encode(errors="replace")  # a lone surrogate quoted from a bad body
    field_2 = b"\x12" + _varint(len(text)) + text if text else b""  # proto3 leaves out an empty string
    return b"\x08" + _varint(code) + field_2, "application/x-protobuf"


def _varint(number: int) -> bytes:
    encoded = bytearray()
    while number > 0x7F:
        encoded.append(number & 0x7F | 0x80)
        number >>= 7
    encoded.append(number)
    return bytes(encoded)


def _decode_protobuf(body: bytes, make: Callable[..., _T], rejected: list[str] | None) -> Iterator[_T]:
    ExportTraceServiceRequest, DecodeError = load_protobuf()
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as error:
        reason = str(error).rpartition("': ")[2]  # after "Error parsing message with type '…'"
        raise OtlpDecodeError(f"protobuf body is malformed: {reason}") from None
    return _pb_walk(request, make, rejected)


def _pb_walk(request: Any, make: Callable[..., _T], rejected: list[str] | None) -> Iterator[_T]:
    for r, resource_spans in enumerate(request.resource_spans):
        resource = {
            "attributes": _pb_attributes(resource_spans.resource.attributes),
            "schema_url": resource_spans.schema_url,
        }
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            scope = scope_spans.scope
            scope_name, scope_version = scope.name, scope.version
            for p, span in enumerate(scope_spans.spans):
                try:
                    made = _pb_span(span, resource, scope_name, scope_version, make)
                except _Invalid as error:
                    error.within(f"spans[{p}]", f"scope_spans[{s}]", f"resource_spans[{r}]")
                    if rejected is None or not _pb_has_parent(span):
                        raise OtlpDecodeError(error.message("protobuf")) from None
                    rejected.append(error.message("protobuf"))
                    continue
                yield made


def _pb_span(span: Any, resource: dict[str, Any], scope_name: str, scope_version: str, make: Callable[..., _T]) -> _T:
    status = span.status
    code = status.code
    kind = span.kind
    events = span.events
    links = span.links
    start = span.start_time_unix_nano
    end = span.end_time_unix_nano
    return make(
        _pb_id(span.trace_id, 16, "trace_id"),
        _pb_id(span.span_id, 8, "span_id"),
        _pb_parent_id(span.parent_span_id),
        span.name,
        _KINDS[kind] if 0 <= kind < 6 else _kind(kind, "kind"),
        _STATUS_CODES[code] if 0 <= code < 3 else _status_code(code, "status.code"),
        status.message or None,
        _pb_attributes(span.attributes),
        _pb_events(events) if events else [],
        _pb_links(links) if links else [],
        start / 1e9 if start else None,
        end / 1e9 if end else None,
        resource,
        scope_name,
        scope_version,
    )


def _pb_events(events: Any) -> list[dict[str, Any]]:
    return [
        {"name": e.name, "timestamp": _seconds(e.time_unix_nano), "attributes": _pb_attributes(e.attributes)}
        for e in events
    ]


def _pb_links(links: Any) -> list[dict[str, Any]]:
    decoded: list[dict[str, Any]] = []
    for index, link in enumerate(links):
        try:
            decoded.append(
                {
                    "trace_id": _pb_link_id(link.trace_id, 16, "trace_id"),
                    "span_id": _pb_link_id(link.span_id, 8, "span_id"),
                    "attributes": _pb_attributes(link.attributes),
                }
            )
        except _Invalid as error:
            raise error.within(f"links[{index}]") from None
    return decoded


def _pb_has_parent(span: Any) -> bool:
    """Whether a span names a valid parent, so it is no trace's root."""
    parent = span.parent_span_id
    return len(parent) == 8 and parent != _ZEROS[8]


_ZEROS = {16: bytes(16), 8: bytes(8)}
_ZERO_HEX = {16: "0" * 32, 8: "0" * 16}


def _pb_id(raw: bytes, size: int, field: str) -> str:
    if len(raw) != size:
        raise _Invalid(f"must be {size} bytes, got {len(raw)}", field)
    if raw == _ZEROS[size]:
        raise _Invalid("must not be all zeros", field)
    return raw.hex()


def _pb_link_id(raw: bytes, size: int, field: str) -> str:
    """A link's id; all zeros or empty is the invalid context, kept as zeros (see `_json_link_id`)."""
    if not raw or raw == _ZEROS[size]:
        return _ZERO_HEX[size]
    return _pb_id(raw, size, field)


def _pb_parent_id(raw: bytes) -> str | None:
    """Empty for a root span; all zeros is read as a root too, as some converters send it."""
    if not raw or raw == _ZEROS[8] or not raw.strip(b"\0"):
        return None
    return _pb_id(raw, 8, "parent_span_id")


def _pb_attributes(key_values: Any) -> Attributes:
    attributes: Attributes = {}
    for kv in key_values:
        value = kv.value
        text = value.string_value  # most values are strings: one read instead of WhichOneof and a read
        if text:
            attributes[kv.key] = text
        else:
            field = value.WhichOneof("value")
            attributes[kv.key] = getattr(value, field) if field in _PB_SCALARS else _pb_other(value, field)
    return attributes


def _pb_value(value: Any) -> Any:
    """AnyValue → JSON value: arrays become lists, kvlists dicts, bytes base64; empty is None."""
    field = value.WhichOneof("value")
    return getattr(value, field) if field in _PB_SCALARS else _pb_other(value, field)


def _pb_other(value: Any, field: str | None) -> Any:
    if field is None:
        return None
    if field == "array_value":
        return [v.string_value or _pb_value(v) for v in value.array_value.values]
    if field == "kvlist_value":
        return _pb_attributes(value.kvlist_value.values)
    return base64.b64encode(value.bytes_value).decode("ascii")


_PB_SCALARS = frozenset({"string_value", "int_value", "double_value", "bool_value"})


# ---------------------------------------------------------------------------------------------
# JSON: parsed by pydantic-core (faster than the standard library, and it refuses lone surrogates,
# which could not be stored as UTF-8), then walked with explicit checks.

_INT64 = (-(2**63), 2**63 - 1)
_UINT64 = (0, 2**64 - 1)
_MAX_DIGITS = len(str(2**64 - 1))


def _decode_json(body: bytes, make: Callable[..., _T], rejected: list[str] | None) -> Iterator[_T]:
    try:
        document = from_json(body)
    except ValueError as error:
        raise OtlpDecodeError(f"JSON body is malformed: {error}") from None
    if type(document) is not dict:
        raise OtlpDecodeError(f"JSON body must be an object (an ExportTraceServiceRequest), got {_json_type(document)}")
    decoded: list[_T] = []
    invalid: list[_Invalid] | None = None if rejected is None else []
    try:
        for r, item in _json_items(document, "resourceSpans"):
            _within(_json_resource_spans, f"resourceSpans[{r}]", invalid)(item, make, decoded, invalid)
    except _Invalid as error:
        raise OtlpDecodeError(error.message("JSON")) from None
    if rejected is not None and invalid:
        rejected.extend(error.message("JSON") for error in invalid)
    return iter(decoded)


def _within(decode: Callable[..., None], segment: str, invalid: list[_Invalid] | None) -> Callable[..., None]:
    """``decode`` with ``segment`` added to the path of what it raises and of the spans it rejects."""

    def decode_within(*args: Any) -> None:
        before = len(invalid) if invalid is not None else 0
        try:
            decode(*args)
        except _Invalid as error:
            raise error.within(segment) from None
        if invalid is not None:
            for error in invalid[before:]:
                error.within(segment)

    return decode_within


def _json_items(parent: dict[str, Any], key: str) -> Iterator[tuple[int, Any]]:
    """The items of an array field, numbered; absent or ``null`` is empty."""
    items = parent.get(key)
    if items is None:
        return iter(())
    if type(items) is not list:
        raise _Invalid(f"must be an array, got {_json_type(items)}", key)
    return enumerate(items)


def _json_list(parent: dict[str, Any], key: str, decode: Callable[[Any], _T]) -> list[_T]:
    items = parent.get(key)
    if items is None:
        return []
    if type(items) is not list:
        raise _Invalid(f"must be an array, got {_json_type(items)}", key)
    decoded: list[_T] = []
    for index, item in enumerate(items):
        try:
            decoded.append(decode(item))
        except _Invalid as error:
            raise error.within(f"{key}[{index}]") from None
    return decoded


def _json_object(value: Any) -> dict[str, Any]:
    """A message; ``null`` is an absent one, i.e. all defaults."""
    if type(value) is dict:
        return value
    if value is None:
        return {}
    raise _Invalid(f"must be an object, got {_json_type(value)}")


def _json_message(parent: dict[str, Any], key: str, decode: Callable[[dict[str, Any]], _T]) -> _T:
    try:
        return decode(_json_object(parent.get(key)))
    except _Invalid as error:
        raise error.within(key) from None


def _json_resource_spans(item: Any, make: Callable[..., _T], decoded: list[_T], invalid: list[_Invalid] | None) -> None:
    resource_spans = _json_object(item)
    resource = {
        "attributes": _json_message(resource_spans, "resource", lambda r: _json_attributes(r, "attributes")),
        "schema_url": _json_string(resource_spans, "schemaUrl"),
    }
    for s, scope_item in _json_items(resource_spans, "scopeSpans"):
        _within(_json_scope_spans, f"scopeSpans[{s}]", invalid)(scope_item, resource, make, decoded, invalid)


def _json_scope_spans(
    item: Any, resource: dict[str, Any], make: Callable[..., _T], decoded: list[_T], invalid: list[_Invalid] | None
) -> None:
    """Append the scope's spans to ``decoded``; with ``invalid``, a span that fails its checks is
    left out and its error appended there instead of raised."""
    scope_spans = _json_object(item)
    name, version = _json_message(scope_spans, "scope", lambda s: (_json_string(s, "name"), _json_string(s, "version")))
    for p, span in _json_items(scope_spans, "spans"):
        try:
            decoded.append(_json_span(span, resource, name, version, make))
        except _Invalid as error:
            if invalid is None or not _json_has_parent(span):  # a root refused would leave its rollout running
                raise error.within(f"spans[{p}]") from None
            invalid.append(error.within(f"spans[{p}]"))


def _json_has_parent(item: Any) -> bool:
    """Whether a span names a valid parent, so it is no trace's root."""
    try:
        return type(item) is dict and _json_parent_id(item) is not None
    except _Invalid:
        return False


def _json_span(item: Any, resource: dict[str, Any], scope_name: str, scope_version: str, make: Callable[..., _T]) -> _T:
    span = _json_object(item)
    status_code, status_description = _json_message(span, "status", _json_status)  # checked first, as before
    trace_id = _json_id(span, "traceId", 16)
    span_id = _json_id(span, "spanId", 8)
    parent_id = _json_parent_id(span)
    name = _json_string(span, "name")
    kind = _kind(_json_enum(span, "kind"), "kind")
    return make(
        trace_id,
        span_id,
        parent_id,
        name,
        kind,
        status_code,
        status_description,
        _json_attributes(span, "attributes"),
        _json_list(span, "events", _json_event),
        _json_list(span, "links", _json_link),
        _seconds(_json_integer(span, "startTimeUnixNano", _UINT64)),
        _seconds(_json_integer(span, "endTimeUnixNano", _UINT64)),
        resource,
        scope_name,
        scope_version,
    )


def _json_status(status: dict[str, Any]) -> tuple[StatusCode, str | None]:
    return _status_code(_json_enum(status, "code"), "code"), _json_string(status, "message") or None


def _json_event(item: Any) -> dict[str, Any]:
    event = _json_object(item)
    return {
        "name": _json_string(event, "name"),
        "timestamp": _seconds(_json_integer(event, "timeUnixNano", _UINT64)),
        "attributes": _json_attributes(event, "attributes"),
    }


def _json_link(item: Any) -> dict[str, Any]:
    link = _json_object(item)
    return {
        "trace_id": _json_link_id(link, "traceId", 16),
        "span_id": _json_link_id(link, "spanId", 8),
        "attributes": _json_attributes(link, "attributes"),
    }


def _json_id(parent: dict[str, Any], key: str, size: int) -> str:
    """Hex in either case (OTLP/JSON), returned lowercase; absent, empty or all zeros is invalid."""
    value = parent.get(key)
    if type(value) is str and len(value) == 2 * size and value.isalnum():
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            pass
        else:
            if raw.count(0) == size:
                raise _Invalid("must not be all zeros", key)
            return raw.hex()
    if not value:
        raise _Invalid(f"is missing{_snake_case_hint(parent, key)}", key)
    raise _Invalid(f"must be {2 * size} hex characters, got {_json_type(value)}{_base64_hint(value, size)}", key)


def _json_link_id(link: dict[str, Any], key: str, size: int) -> str:
    """A link's id. The SDK exports a link to an invalid (all-zero) context when the link has
    attributes, as the OTel specification asks, and the Collector writes a zero id as none at
    all: either is kept as zeros, as `Span.from_otel` keeps it, instead of refusing the batch."""
    value = link.get(key)
    if value is None or (type(value) is str and len(value) in (0, 2 * size) and not value.strip("0")):
        return _ZERO_HEX[size]
    return _json_id(link, key, size)


def _base64_hint(value: Any, size: int) -> str:
    """Protobuf's standard JSON mapping writes ids as base64, OTLP/JSON as hex: say so when the
    sender took one for the other."""
    if type(value) is str:
        try:
            if len(base64.b64decode(value, validate=True)) == size:
                return " (this is base64, as protobuf's own JSON mapping writes bytes; OTLP/JSON ids are hex)"
        except ValueError:
            pass
    return ""


def _json_parent_id(span: dict[str, Any]) -> str | None:
    """Empty or absent for a root span; all zeros is read as a root too, as some converters send it."""
    value = span.get("parentSpanId")
    if not value or (type(value) is str and not value.strip("0")):
        return None
    return _json_id(span, "parentSpanId", 8)


def _snake_case_hint(parent: dict[str, Any], key: str) -> str:
    """Original proto field names are not OTLP/JSON (so they are ignored); say so when one is why a field is missing."""
    snake = re.sub("[A-Z]", lambda upper: "_" + upper[0].lower(), key)
    return f" (found {snake!r}: OTLP/JSON keys are lowerCamelCase)" if snake in parent else ""


def _json_string(parent: dict[str, Any], key: str) -> str:
    value = parent.get(key)
    if type(value) is str:
        return value
    if value is None:
        return ""
    raise _Invalid(f"must be a string, got {_json_type(value)}", key)


def _json_enum(parent: dict[str, Any], key: str) -> int:
    value = parent.get(key)
    if type(value) is int:
        return value
    if value is None:
        return 0
    raise _Invalid(f"must be an integer (OTLP/JSON enums are numbers), got {_json_type(value)}", key)


def _json_integer(parent: dict[str, Any], key: str, bounds: tuple[int, int]) -> int:
    value = parent.get(key)
    return 0 if value is None else _to_integer(value, key, bounds)


def _to_integer(value: Any, field: str, bounds: tuple[int, int]) -> int:
    """A 64-bit integer: proto3 JSON writes a decimal string and accepts a number too."""
    if type(value) is str:
        digits = value[1:] if value[:1] == "-" else value
        if not (digits.isascii() and digits.isdigit()):
            number = None
        elif len(digits) > _MAX_DIGITS:  # no 64-bit integer has more; int() refuses over 4,300 (ValueError)
            raise _Invalid(f"{_json_type(value)} is out of range", field)
        else:
            number = int(value)
    elif type(value) is int:
        number = value
    elif type(value) is float and value.is_integer():
        number = int(value)
    else:
        number = None
    if number is None:
        raise _Invalid(f"must be an integer (a number or a decimal string), got {_json_type(value)}", field)
    if not bounds[0] <= number <= bounds[1]:
        raise _Invalid(f"{number} is out of range", field)
    return number


def _json_attributes(parent: dict[str, Any], key: str) -> Attributes:
    items = parent.get(key)
    if items is None:
        return {}
    if type(items) is not list:
        raise _Invalid(f"must be an array, got {_json_type(items)}", key)
    attributes: Attributes = {}
    for index, item in enumerate(items):
        value = item.get("value") if type(item) is dict else None
        text = value.get("stringValue") if type(value) is dict else None
        name = item.get("key") if type(text) is str else None
        if type(name) is str:  # the common case, a string attribute, without a call
            attributes[name] = text
            continue
        try:
            name, decoded = _json_key_value(item)
        except _Invalid as error:
            raise error.within(f"{key}[{index}]") from None
        attributes[name] = decoded
    return attributes


def _json_key_value(item: Any) -> tuple[str, Any]:
    key_value = _json_object(item)
    name = key_value.get("key")
    if type(name) is not str:
        raise _Invalid(f"must be a string, got {_json_type(name)}", "key")
    try:
        return name, _json_value(key_value.get("value"))
    except _Invalid as error:
        raise error.within("value") from None


def _json_value(value: Any) -> Any:
    """AnyValue → JSON value; the first known, non-null field wins (unknown ones are ignored)."""
    for field, raw in _json_object(value).items():
        decode = _JSON_VALUES.get(field)
        if decode is not None and raw is not None:
            return decode(raw, field)
    return None


def _json_scalar(expected: type, name: str) -> Callable[[Any, str], Any]:
    def decode(raw: Any, field: str) -> Any:
        if type(raw) is expected:
            return raw
        raise _Invalid(f"must be {name}, got {_json_type(raw)}", field)

    return decode


def _json_double(raw: Any, field: str) -> float:
    """A number, or a string such as "NaN", "Infinity" or "1.5" (proto3 JSON)."""
    if type(raw) is float:
        return raw
    if type(raw) is int:
        try:
            return float(raw)
        except OverflowError:  # an integer of hundreds of digits
            raise _Invalid("is out of range for a double", field) from None
    if type(raw) is str:
        try:
            return float(raw)
        except ValueError:
            pass
    raise _Invalid(f"must be a number, got {_json_type(raw)}", field)


def _json_bytes(raw: Any, field: str) -> str:
    """Base64, standard or URL-safe, padded or not (proto3 JSON); returned standard and padded, as from protobuf."""
    if type(raw) is str:
        padded = raw.replace("-", "+").replace("_", "/") + "=" * (-len(raw) % 4)
        try:
            return base64.b64encode(base64.b64decode(padded, validate=True)).decode("ascii")
        except ValueError:  # binascii.Error, or a character that is not ASCII
            pass
    raise _Invalid(f"must be base64, got {_json_type(raw)}", field)


def _json_array(raw: Any, field: str) -> list[Any]:
    try:
        return _json_list(_json_object(raw), "values", _json_value)
    except _Invalid as error:
        raise error.within(field) from None


def _json_kvlist(raw: Any, field: str) -> Attributes:
    try:
        return _json_attributes(_json_object(raw), "values")
    except _Invalid as error:
        raise error.within(field) from None


_JSON_VALUES: dict[str, Callable[[Any, str], Any]] = {
    "stringValue": _json_scalar(str, "a string"),
    "boolValue": _json_scalar(bool, "a boolean"),
    "intValue": lambda raw, field: _to_integer(raw, field, _INT64),
    "doubleValue": _json_double,
    "arrayValue": _json_array,
    "kvlistValue": _json_kvlist,
    "bytesValue": _json_bytes,
}


def _json_type(value: Any) -> str:
    """How a bad value is named in an error: its JSON type, and the value itself when short."""
    if value is None or isinstance(value, dict | list):
        return {dict: "an object", list: "an array"}.get(type(value), "null")
    if type(value) is str:
        return f"a string {json.dumps(value)}" if len(value) <= 40 else f"a string of {len(value)} characters"
    return f"{'a boolean' if type(value) is bool else 'a number'} {json.dumps(value)}"


# ---------------------------------------------------------------------------------------------
# From a decoded span to the store's Span


def span_resource(span: OtlpSpan) -> SpanResource:
    """The span's resource as a model; spans of one resource can share it (see `to_span`)."""
    return SpanResource(attributes=span.resource_attributes, schema_url=span.resource_schema_url)


def to_span(
    span: OtlpSpan, *, rollout_id: str, attempt_id: str, sequence_id: int, resource: SpanResource | None = None
) -> Span:
    """Build the store's `Span`. It has no field for the instrumentation scope, so the scope's name and
    version become ``otel.scope.name`` / ``otel.scope.version`` attributes (the names OTel's non-OTLP
    exporters use), unless the span carries those attributes itself. ``resource``, when given, must
    be `span_resource` of this span: a batch builds it once per resource instead of once per span."""
    attributes = span.attributes
    scope = {
        key: value
        for key, value in ((SCOPE_NAME_ATTRIBUTE, span.scope_name), (SCOPE_VERSION_ATTRIBUTE, span.scope_version))
        if value and key not in attributes
    }
    return Span.model_validate(
        {
            "rollout_id": rollout_id,
            "attempt_id": attempt_id,
            "sequence_id": sequence_id,
            "trace_id": span.trace_id,
            "span_id": span.span_id,
            "parent_id": span.parent_id,
            "name": span.name,
            "kind": span.kind,
            "status": _status(span.status_code, span.status_description),
            "attributes": {**attributes, **scope} if scope else attributes,
            "events": [{"name": e.name, "timestamp": e.time, "attributes": e.attributes} for e in span.events],
            "links": [
                {"trace_id": link.trace_id, "span_id": link.span_id, "attributes": link.attributes}
                for link in span.links
            ],
            "start_time": span.start_time,
            "end_time": span.end_time,
            "resource": resource or span_resource(span),
        }
    )


_STATUSES = {code: SpanStatus(status_code=code) for code in ("UNSET", "OK", "ERROR")}


def _status(code: StatusCode, description: str | None) -> SpanStatus:
    """Most spans share a status with no description: one frozen instance, not one per span."""
    return _STATUSES[code] if description is None else SpanStatus(status_code=code, description=description)
