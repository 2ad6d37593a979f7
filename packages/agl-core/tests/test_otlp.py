"""OTLP/HTTP trace decoding, fed the bodies real senders produce.

Spans are recorded with the OpenTelemetry SDK and encoded by the official OTLP encoder (and, in
one test, posted by the official HTTP exporter); JSON bodies are the OTLP/JSON form of the same
requests. Every decoded span is checked against `Span.from_otel` of the SDK span it came from.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.server
import json
import math
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN_CONTEXT, Link, SpanKind, Status, StatusCode

from agl.core.errors import InvalidInput
from agl.core.otlp import (
    OtlpBodyTooLarge,
    OtlpDecodeError,
    OtlpLink,
    OtlpSpan,
    OtlpUnsupportedMediaType,
    decode_traces,
    decompress,
    to_span,
)
from agl.core.testing.otlp import otlp_json_document
from agl.core.tracing.identity import file_span
from agl.core.types import Span

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
CAP = 16 * 2**20
T0 = 1_700_000_000_123_456_789  # nanoseconds


# --- building bodies the way senders do ------------------------------------------------------


def record_spans() -> tuple[ReadableSpan, ...]:
    """Two resources, three scopes, every kind and status, arrays, events and links."""
    exporter = InMemorySpanExporter()
    agent = TracerProvider(
        resource=Resource.create(
            {"service.name": "agent", "agl.rollout.id": "ro-resource", "agl.attempt.id": "at-resource"},
            schema_url="https://opentelemetry.io/schemas/1.26.0",
        )
    )
    other = TracerProvider(resource=Resource.create({"service.name": "other", "deployment.replicas": 3}))
    for provider in (agent, other):
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = agent.get_tracer("agl.test", "0.1")
    llm_tracer = agent.get_tracer("agl.llm")

    with tracer.start_as_current_span("rollout", kind=SpanKind.SERVER, start_time=T0) as root:
        root.set_attribute("agl.rollout.id", "ro-span")
        root.add_event("started", {"step": 1, "tags": ["a", "b"]}, timestamp=T0 + 1)
        root.add_event("bare", timestamp=T0 + 2)
        with llm_tracer.start_as_current_span(
            "chat model",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.request.model": "m",
                "gen_ai.request.temperature": 0.7,
                "gen_ai.usage.input_tokens": 812,
                "gen_ai.usage.big": 2**62,
                "gen_ai.usage.negative": -5,
                "agl.llm.call": True,
                "gen_ai.response.finish_reasons": ["stop", "length"],
                "ints": [1, 2, 3],
                "floats": [0.5, -1.25],
                "bools": [True, False],
                "with_none": ["x", None],
                "empty": "",
                "unicode": "Größe 🐍",
                "agl.attempt.id": "at-span",
            },
        ) as chat:
            chat.set_status(Status(StatusCode.ERROR, "model overloaded"))
        with tracer.start_as_current_span("producer", kind=SpanKind.PRODUCER) as producer:
            producer.set_status(Status(StatusCode.OK))
        with tracer.start_as_current_span("consumer", kind=SpanKind.CONSUMER, links=[Link(chat.get_span_context())]):
            pass
    with other.get_tracer("other.scope", "2.0").start_as_current_span(
        "linked", links=[Link(root.get_span_context(), {"reason": "follows", "n": 2})]
    ):
        pass
    return exporter.get_finished_spans()


@pytest.fixture(scope="module")
def sdk_spans() -> tuple[ReadableSpan, ...]:
    return record_spans()


def protobuf_body(spans: tuple[ReadableSpan, ...]) -> bytes:
    return encode_spans(spans).SerializeToString()


def json_body(spans: tuple[ReadableSpan, ...], **options: bool) -> bytes:
    return json.dumps(otlp_json_document(encode_spans(spans), **options)).encode()


def expected_span(sdk_span: ReadableSpan, sequence_id: int = 1) -> Span:
    """`Span.from_otel`, plus the scope that `to_span` keeps as attributes (our Span has no scope field)."""
    span = Span.from_otel(sdk_span, rollout_id="ro-1", attempt_id="at-1", sequence_id=sequence_id)
    scope = sdk_span.instrumentation_scope
    extra = {"otel.scope.name": scope.name} | ({"otel.scope.version": scope.version} if scope.version else {})
    return span.model_copy(update={"attributes": span.attributes | extra})


def assert_matches_sdk(decoded: list[OtlpSpan], sdk_spans: tuple[ReadableSpan, ...]) -> None:
    by_id = {format(s.get_span_context().span_id, "016x"): s for s in sdk_spans}
    assert sorted(span.span_id for span in decoded) == sorted(by_id)
    for span in decoded:
        actual = to_span(span, rollout_id="ro-1", attempt_id="at-1", sequence_id=1).model_dump()
        expected = expected_span(by_id[span.span_id]).model_dump()
        for field in expected:
            assert actual[field] == expected[field], f"{span.name}: {field}"


# --- round trips -----------------------------------------------------------------------------


def test_protobuf_round_trip_matches_from_otel(sdk_spans: tuple[ReadableSpan, ...]) -> None:
    decoded = decode_traces(protobuf_body(sdk_spans), PROTOBUF)
    assert_matches_sdk(decoded, sdk_spans)


@pytest.mark.parametrize(
    "options",
    [{}, {"int64_as_numbers": True}, {"uppercase_ids": True}],
    ids=["int64-strings", "int64-numbers", "uppercase-hex"],
)
def test_json_round_trip_matches_from_otel_and_protobuf(
    sdk_spans: tuple[ReadableSpan, ...], options: dict[str, bool]
) -> None:
    decoded = decode_traces(json_body(sdk_spans, **options), JSON)
    assert_matches_sdk(decoded, sdk_spans)
    assert decoded == decode_traces(protobuf_body(sdk_spans), PROTOBUF)


def test_links_to_an_invalid_context_are_kept_with_zero_ids() -> None:
    """The SDK exports a link to an invalid (all-zero) context when the link has attributes, as
    the OTel specification asks; the whole batch was refused (400: the exporter drops it)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("s", links=[Link(INVALID_SPAN_CONTEXT, {"why": "lost"})]):
        pass
    spans = exporter.get_finished_spans()
    for body, content_type in ((protobuf_body(spans), PROTOBUF), (json_body(spans), JSON)):
        decoded = decode_traces(body, content_type)
        assert_matches_sdk(decoded, spans)  # as `Span.from_otel` keeps it
        assert decoded[0].links == (OtlpLink("0" * 32, "0" * 16, {"why": "lost"}),)


def test_link_ids_left_out_are_zero_ids() -> None:
    """The Collector writes a zero id as no id at all (empty bytes in protobuf, no key in JSON)."""
    request = any_value_request({})
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.links.add(attributes=[KeyValue(key="why", value=AnyValue(string_value="lost"))])
    document = otlp_json_document(request)
    for link in document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["links"]:
        link.pop("traceId", None), link.pop("spanId", None)
    for body, content_type in ((request.SerializeToString(), PROTOBUF), (json.dumps(document).encode(), JSON)):
        (decoded,) = decode_traces(body, content_type)
        assert decoded.links == (OtlpLink("0" * 32, "0" * 16, {"why": "lost"}),)


def test_decoded_fields(sdk_spans: tuple[ReadableSpan, ...]) -> None:
    spans = {span.name: span for span in decode_traces(protobuf_body(sdk_spans), PROTOBUF)}
    root, chat, linked = spans["rollout"], spans["chat model"], spans["linked"]
    assert root.parent_id is None and chat.parent_id == root.span_id and chat.trace_id == root.trace_id
    assert len(root.trace_id) == 32 and len(root.span_id) == 16 and root.trace_id == root.trace_id.lower()
    assert [spans[n].kind for n in ("rollout", "chat model", "producer", "consumer", "linked")] == [
        "SERVER",
        "CLIENT",
        "PRODUCER",
        "CONSUMER",
        "INTERNAL",
    ]
    assert (chat.status_code, chat.status_description) == ("ERROR", "model overloaded")
    assert (spans["producer"].status_code, spans["producer"].status_description) == ("OK", None)
    assert (root.status_code, root.status_description) == ("UNSET", None)
    assert chat.attributes["gen_ai.response.finish_reasons"] == ["stop", "length"]
    assert chat.attributes["with_none"] == ["x", None]
    assert chat.attributes["gen_ai.usage.big"] == 2**62 and chat.attributes["unicode"] == "Größe 🐍"
    assert root.start_time == T0 / 1e9
    assert [(e.name, e.time, e.attributes) for e in root.events] == [
        ("started", (T0 + 1) / 1e9, {"step": 1, "tags": ["a", "b"]}),
        ("bare", (T0 + 2) / 1e9, {}),
    ]
    assert [(link.trace_id, link.span_id, link.attributes) for link in linked.links] == [
        (root.trace_id, root.span_id, {"reason": "follows", "n": 2})
    ]
    assert (root.scope_name, root.scope_version, chat.scope_name, chat.scope_version) == (
        "agl.test",
        "0.1",
        "agl.llm",
        "",
    )
    assert root.resource_schema_url == "https://opentelemetry.io/schemas/1.26.0" and linked.resource_schema_url == ""
    assert root.resource_attributes["service.name"] == "agent"
    assert linked.resource_attributes["deployment.replicas"] == 3


def test_empty_requests_decode_to_no_spans() -> None:
    assert decode_traces(b"", PROTOBUF) == []
    assert decode_traces(b"{}", JSON) == []
    assert decode_traces(b'{"resourceSpans": [{"scopeSpans": [{"spans": []}]}]}', JSON) == []


def test_content_type_parameters_and_case_are_ignored(sdk_spans: tuple[ReadableSpan, ...]) -> None:
    assert decode_traces(json_body(sdk_spans), "Application/JSON; charset=utf-8")
    assert decode_traces(protobuf_body(sdk_spans), " application/x-protobuf ")


# --- AnyValue: what the SDK cannot produce but other senders do --------------------------------


def any_value_request(values: dict[str, AnyValue]) -> ExportTraceServiceRequest:
    span = PbSpan(
        trace_id=bytes(range(1, 17)),
        span_id=bytes(range(1, 9)),
        name="values",
        attributes=[KeyValue(key=key, value=value) for key, value in values.items()],
    )
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=PbResource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="v"))]),
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name="values", version="1"), spans=[span])],
            )
        ]
    )


ANY_VALUES = {
    "bytes": (AnyValue(bytes_value=b"\x00\xffbin"), base64.b64encode(b"\x00\xffbin").decode()),
    "kvlist": (
        AnyValue(
            kvlist_value=KeyValueList(
                values=[
                    KeyValue(key="role", value=AnyValue(string_value="user")),
                    KeyValue(key="n", value=AnyValue(int_value=-3)),
                    KeyValue(key="inner", value=AnyValue(kvlist_value=KeyValueList())),
                ]
            )
        ),
        {"role": "user", "n": -3, "inner": {}},
    ),
    "nested": (
        AnyValue(
            array_value=ArrayValue(
                values=[
                    AnyValue(array_value=ArrayValue(values=[AnyValue(double_value=1.5)])),
                    AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="k", value=AnyValue(bool_value=False))])),
                    AnyValue(),
                ]
            )
        ),
        [[1.5], {"k": False}, None],
    ),
    "empty": (AnyValue(), None),
    "empty_string": (AnyValue(string_value=""), ""),
    "empty_array": (AnyValue(array_value=ArrayValue()), []),
    "int64_min": (AnyValue(int_value=-(2**63)), -(2**63)),
}


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_any_values(content_type: str) -> None:
    request = any_value_request({key: value for key, (value, _) in ANY_VALUES.items()})
    body = request.SerializeToString() if content_type == PROTOBUF else json.dumps(otlp_json_document(request)).encode()
    [span] = decode_traces(body, content_type)
    assert span.attributes == {key: expected for key, (_, expected) in ANY_VALUES.items()}
    scope = {"otel.scope.name": "values", "otel.scope.version": "1"}
    assert to_span(span, rollout_id="r", attempt_id="a", sequence_id=0).attributes == span.attributes | scope


def test_json_value_spellings_allowed_by_proto3_json() -> None:
    """Doubles as strings, int64 as numbers or strings, URL-safe unpadded base64, null as absent."""
    document = otlp_json_document(any_value_request({}))
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"] = [
        {"key": "nan", "value": {"doubleValue": "NaN"}},
        {"key": "inf", "value": {"doubleValue": "-Infinity"}},
        {"key": "double_int", "value": {"doubleValue": 2}},
        {"key": "int_str", "value": {"intValue": "-42"}},
        {"key": "int_float", "value": {"intValue": 7.0}},
        {"key": "b64url", "value": {"bytesValue": "_-8"}},
        {"key": "null_value", "value": None},
        {"key": "null_field", "value": {"stringValue": None, "boolValue": True}},
        {"key": "unknown_field", "value": {"futureValue": 1, "intValue": 5}},
    ]
    [span] = decode_traces(json.dumps(document).encode(), JSON)
    attributes = span.attributes
    assert math.isnan(attributes.pop("nan"))
    assert attributes == {
        "inf": float("-inf"),
        "double_int": 2.0,
        "int_str": -42,
        "int_float": 7,
        "b64url": base64.b64encode(b"\xff\xef").decode(),
        "null_value": None,
        "null_field": True,
        "unknown_field": 5,
    }


def test_json_all_zero_and_absent_parent_mean_root() -> None:
    document = otlp_json_document(any_value_request({}))
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    for parent in ("", "0000000000000000", None):
        span["parentSpanId"] = parent
        assert decode_traces(json.dumps(document).encode(), JSON)[0].parent_id is None


# --- identity and conversion -----------------------------------------------------------------


def rollout_identity(span: OtlpSpan) -> tuple[str, str | None]:
    filing = file_span(span.attributes, span.resource_attributes, span.trace_id, span.start_time)
    return filing.rollout_id, filing.attempt_id


def test_rollout_identity_prefers_span_attributes_then_resource(sdk_spans: tuple[ReadableSpan, ...]) -> None:
    spans = {span.name: span for span in decode_traces(protobuf_body(sdk_spans), PROTOBUF)}
    assert rollout_identity(spans["rollout"]) == ("ro-span", "at-resource")
    assert rollout_identity(spans["chat model"]) == ("ro-resource", "at-span")
    assert rollout_identity(spans["producer"]) == ("ro-resource", "at-resource")
    trace = spans["linked"].trace_id
    assert rollout_identity(spans["linked"]) == (f"ro-trace-{trace}", f"at-trace-{trace}")


def test_rollout_identity_ignores_non_string_values() -> None:
    request = any_value_request({"agl.rollout.id": AnyValue(int_value=7), "agl.attempt.id": AnyValue(string_value="")})
    request.resource_spans[0].resource.attributes.append(
        KeyValue(key="agl.rollout.id", value=AnyValue(string_value="ro-r"))
    )
    [span] = decode_traces(request.SerializeToString(), PROTOBUF)
    assert rollout_identity(span) == ("ro-r", None)


def test_to_span_keeps_a_span_s_own_scope_attributes() -> None:
    request = any_value_request({"otel.scope.name": AnyValue(string_value="mine")})
    request.resource_spans[0].scope_spans[0].scope.name = "theirs"
    request.resource_spans[0].scope_spans[0].scope.version = "9"
    [span] = decode_traces(request.SerializeToString(), PROTOBUF)
    converted = to_span(span, rollout_id="r", attempt_id="a", sequence_id=3)
    assert converted.attributes == {"otel.scope.name": "mine", "otel.scope.version": "9"}
    assert (converted.rollout_id, converted.attempt_id, converted.sequence_id) == ("r", "a", 3)
    assert span.attributes == {"otel.scope.name": "mine"}  # the decoded span is left alone


# --- the official exporter, over HTTP --------------------------------------------------------


Requests = list[tuple[str | None, str | None, bytes]]  # Content-Type, Content-Encoding, body


@pytest.fixture
def collector() -> Iterator[tuple[str, Requests]]:
    """A bare OTLP/HTTP endpoint that records what it is sent and answers 200."""
    received: Requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers.get("Content-Type"), self.headers.get("Content-Encoding"), body))
            self.send_response(200)
            self.send_header("Content-Type", PROTOBUF)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1/traces", received
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip, Compression.Deflate])
def test_official_http_exporter_bodies(
    collector: tuple[str, Requests],
    sdk_spans: tuple[ReadableSpan, ...],
    compression: Compression,
) -> None:
    endpoint, received = collector
    exporter = OTLPSpanExporter(endpoint=endpoint, compression=compression)
    try:
        exporter.export(sdk_spans)
    finally:
        exporter.shutdown()
    [(content_type, content_encoding, body)] = received
    assert content_type is not None
    decoded = decode_traces(decompress(body, content_encoding, CAP), content_type)
    assert_matches_sdk(decoded, sdk_spans)


# --- decompression ---------------------------------------------------------------------------


def gzip_of_zeros(size: int, chunk: int = 2**20) -> bytes:
    """A valid gzip of ``size`` zero bytes, built without inflating or compressing them all: after a
    full flush every chunk of zeros compresses to the same bytes, so one compressed chunk is repeated."""
    assert size % chunk == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush()
    crc = 0
    zeros = bytes(chunk)
    for _ in range(size // chunk):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + block * (size // chunk) + end + crc.to_bytes(4, "little") + (size % 2**32).to_bytes(4, "little")


def test_gzip_of_zeros_is_valid_gzip() -> None:
    assert gzip.decompress(gzip_of_zeros(4 * 2**20)) == bytes(4 * 2**20)


def test_gzip_bomb_is_refused_at_the_cap_quickly_and_without_inflating_it() -> None:
    bomb = gzip_of_zeros(2**30)
    assert len(bomb) < 2 * 2**20
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(OtlpBodyTooLarge, match=f"^decompressed body exceeds {CAP} bytes$") as error:
            decompress(bomb, "gzip", CAP)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.value.limit == CAP
    assert elapsed < 1.0
    assert peak < 3 * CAP


@pytest.mark.parametrize("encoding", ["gzip", "GZIP", "x-gzip", "deflate", "zlib"])
def test_compressed_bodies(sdk_spans: tuple[ReadableSpan, ...], encoding: str) -> None:
    """``zlib`` is what the Collector's otlphttp exporter sends with ``compression: zlib``."""
    body = protobuf_body(sdk_spans)
    compressed = zlib.compress(body) if encoding in ("deflate", "zlib") else gzip.compress(body)
    assert decompress(compressed, encoding, CAP) == body


@pytest.mark.parametrize("encoding", [None, "", "identity", "none"])
def test_identity_bodies_pass_through_under_the_cap(encoding: str | None) -> None:
    assert decompress(b"abc", encoding, 3) == b"abc"
    with pytest.raises(OtlpBodyTooLarge, match=r"^body exceeds 2 bytes$"):
        decompress(b"abc", encoding, 2)


def test_gzip_members_are_concatenated_and_count_towards_the_cap() -> None:
    body = gzip.compress(b"a" * 10) + gzip.compress(b"b" * 10)
    assert decompress(body, "gzip", 20) == b"a" * 10 + b"b" * 10
    with pytest.raises(OtlpBodyTooLarge):
        decompress(body, "gzip", 19)


def test_many_gzip_members_never_copy_the_rest_of_the_body() -> None:
    """zlib copies the input it was given past a member's end: given the whole rest each time,
    a body of many tiny members was quadratic (1 MiB of empty members took over a second, the
    default 32 MiB limit some 20 minutes, blocking the server). Each copy of the rest showed in
    the peak memory, which now stays under the body's size."""
    member = gzip.compress(b"")
    body = member * (2**20 // len(member)) + gzip.compress(b"end")
    tracemalloc.start()
    try:
        assert decompress(body, "gzip", CAP) == b"end"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(body)


def test_a_large_gzip_member_after_small_ones(sdk_spans: tuple[ReadableSpan, ...]) -> None:
    body = protobuf_body(sdk_spans) * 50  # far past the first window
    compressed = gzip.compress(b"a") * 3 + gzip.compress(body, compresslevel=1) + gzip.compress(b"z")
    assert decompress(compressed, "gzip", CAP) == b"aaa" + body + b"z"
    with pytest.raises(OtlpDecodeError, match=r"^gzip body is truncated$"):
        decompress(compressed[: len(compressed) // 2], "gzip", CAP)


def test_decompressed_exactly_at_the_cap_is_accepted() -> None:
    assert decompress(gzip.compress(bytes(100)), "gzip", 100) == bytes(100)
    with pytest.raises(OtlpBodyTooLarge):
        decompress(gzip.compress(bytes(101)), "gzip", 100)


@pytest.mark.parametrize(
    ("body", "encoding", "message"),
    [
        (b"not gzip at all", "gzip", "^gzip body is corrupt: "),
        (gzip.compress(b"x" * 1000)[:-20], "gzip", "^gzip body is truncated$"),
        (gzip.compress(b"x" * 1000)[:-4] + b"\0\0\0\0", "gzip", "^gzip body is corrupt: "),  # wrong length
        (gzip.compress(b"x" * 1000)[:-8] + b"\0\0\0\0" + gzip.compress(b"x" * 1000)[-4:], "gzip", "corrupt"),  # CRC
        (gzip.compress(b"x") + b"trailing", "gzip", "^gzip body is corrupt: "),
        (b"", "gzip", "^gzip body is truncated$"),
        (zlib.compress(b"x") + b"trailing", "deflate", "^deflate body is corrupt: data after the end of the stream$"),
    ],
    ids=["not-gzip", "truncated", "bad-length", "bad-crc", "trailing-garbage", "empty", "deflate-trailing"],
)
def test_corrupt_compressed_bodies(body: bytes, encoding: str, message: str) -> None:
    with pytest.raises(OtlpDecodeError, match=message):
        decompress(body, encoding, CAP)


def test_corrupt_gzip_in_the_middle() -> None:
    body = bytearray(gzip.compress(json.dumps(list(range(5000))).encode()))
    body[len(body) // 2] ^= 0xFF
    with pytest.raises(OtlpDecodeError, match=r"^gzip body is (corrupt|truncated)"):
        decompress(bytes(body), "gzip", CAP)


@pytest.mark.parametrize("encoding", ["gzip, identity", "identity,gzip", " GZIP "])
def test_identity_in_a_list_of_content_encodings_is_ignored(sdk_spans: tuple[ReadableSpan, ...], encoding: str) -> None:
    body = protobuf_body(sdk_spans)
    assert decompress(gzip.compress(body), encoding, CAP) == body


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, br", "compress", "gzip, gzip"])
def test_unknown_content_encoding(encoding: str) -> None:
    with pytest.raises(OtlpUnsupportedMediaType, match=f"unsupported content encoding '{encoding}'"):
        decompress(b"", encoding, CAP)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/protobuf", "application/x-ndjson", ""])
def test_unknown_content_type(content_type: str) -> None:
    with pytest.raises(OtlpUnsupportedMediaType, match=f"unsupported content type '{content_type}'"):
        decode_traces(b"{}", content_type)


def test_errors_are_invalid_input() -> None:
    assert issubclass(OtlpDecodeError, InvalidInput)
    assert issubclass(OtlpBodyTooLarge, OtlpDecodeError) and issubclass(OtlpUnsupportedMediaType, OtlpDecodeError)


def test_truncated_protobuf(sdk_spans: tuple[ReadableSpan, ...]) -> None:
    body = encode_spans(sdk_spans[:3]).SerializeToString()  # one resource: any cut lands inside it
    for cut in (1, 10, len(body) // 3, len(body) // 2, len(body) - 1):
        with pytest.raises(OtlpDecodeError, match=r"^protobuf body is malformed: "):
            decode_traces(body[:cut], PROTOBUF)


def test_protobuf_that_parses_but_is_invalid() -> None:
    request = any_value_request({})
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.trace_id = b"abc"
    with pytest.raises(
        OtlpDecodeError,
        match=r"^protobuf body: resource_spans\[0\]\.scope_spans\[0\]\.spans\[0\]\.trace_id must be 16 bytes, got 3$",
    ):
        decode_traces(request.SerializeToString(), PROTOBUF)
    span.trace_id = bytes(16)
    with pytest.raises(OtlpDecodeError, match=r"trace_id must not be all zeros$"):
        decode_traces(request.SerializeToString(), PROTOBUF)
    span.trace_id, span.kind = bytes(range(16)), 9
    with pytest.raises(OtlpDecodeError, match=r"spans\[0\]\.kind 9 is not a SpanKind \(0-5\)$"):
        decode_traces(request.SerializeToString(), PROTOBUF)
    span.kind, span.parent_span_id = 0, b"\x01\x02"
    with pytest.raises(OtlpDecodeError, match=r"parent_span_id must be 8 bytes, got 2$"):
        decode_traces(request.SerializeToString(), PROTOBUF)
    span.parent_span_id = b""
    span.links.add(trace_id=bytes(range(16)), span_id=b"\x01\x02\x03")  # empty or all zeros: the invalid context
    with pytest.raises(OtlpDecodeError, match=r"spans\[0\]\.links\[0\]\.span_id must be 8 bytes, got 3$"):
        decode_traces(request.SerializeToString(), PROTOBUF)
    del span.links[:]
    assert decode_traces(request.SerializeToString(), PROTOBUF)[0].kind == "INTERNAL"  # UNSPECIFIED reads as INTERNAL


def test_protobuf_with_invalid_utf8_string_is_malformed() -> None:
    body = any_value_request({"k": AnyValue(string_value="é")}).SerializeToString()
    with pytest.raises(OtlpDecodeError, match=r"^protobuf body is malformed"):
        decode_traces(body.replace("é".encode(), b"\xff\xfe"), PROTOBUF)


def set_path(document: Any, path: tuple[str | int, ...], value: Any) -> None:
    for step in path[:-1]:
        document = document[step]
    if value is _DELETE:
        del document[path[-1]]
    else:
        document[path[-1]] = value


_DELETE = object()
_S = ("resourceSpans", 0, "scopeSpans", 0, "spans", 0)
_R = ("resourceSpans", 0)
SPAN = "JSON body: resourceSpans[0].scopeSpans[0].spans[0]"
VALUE = f"{SPAN}.attributes[0].value"
NOT_INT = "must be an integer (a number or a decimal string)"


def attribute(value: Any) -> list[dict[str, Any]]:
    return [{"key": "k", "value": value}]


JSON_ERRORS: list[tuple[tuple[str | int, ...], Any, str]] = [
    ((*_S, "traceId"), _DELETE, f"{SPAN}.traceId is missing"),
    ((*_S, "traceId"), "", f"{SPAN}.traceId is missing"),
    ((*_S, "traceId"), "zz" * 16, f'{SPAN}.traceId must be 32 hex characters, got a string "{"zz" * 16}"'),
    ((*_S, "traceId"), "ab" * 8, f'{SPAN}.traceId must be 32 hex characters, got a string "{"ab" * 8}"'),
    ((*_S, "traceId"), "0" * 32, f"{SPAN}.traceId must not be all zeros"),
    (
        (*_S, "traceId"),
        base64.b64encode(bytes(range(1, 17))).decode(),
        f'{SPAN}.traceId must be 32 hex characters, got a string "{base64.b64encode(bytes(range(1, 17))).decode()}"'
        " (this is base64, as protobuf's own JSON mapping writes bytes; OTLP/JSON ids are hex)",
    ),
    ((*_S, "traceId"), 12345, f"{SPAN}.traceId must be 32 hex characters, got a number 12345"),
    ((*_S, "spanId"), "0102030405060708aa", f"{SPAN}.spanId must be 16 hex characters"),
    ((*_S, "parentSpanId"), "xyz", f'{SPAN}.parentSpanId must be 16 hex characters, got a string "xyz"'),
    ((*_S, "name"), 5, f"{SPAN}.name must be a string, got a number 5"),
    ((*_S, "kind"), "SPAN_KIND_SERVER", f"{SPAN}.kind must be an integer (OTLP/JSON enums are numbers)"),
    ((*_S, "kind"), 6, f"{SPAN}.kind 6 is not a SpanKind (0-5)"),
    ((*_S, "status"), {"code": 3}, f"{SPAN}.status.code 3 is not a StatusCode (0-2)"),
    ((*_S, "status"), "ok", f'{SPAN}.status must be an object, got a string "ok"'),
    ((*_S, "startTimeUnixNano"), "soon", f'{SPAN}.startTimeUnixNano {NOT_INT}, got a string "soon"'),
    ((*_S, "startTimeUnixNano"), "-1", f"{SPAN}.startTimeUnixNano -1 is out of range"),
    ((*_S, "endTimeUnixNano"), 1.5, f"{SPAN}.endTimeUnixNano {NOT_INT}, got a number 1.5"),
    ((*_S, "endTimeUnixNano"), True, f"{SPAN}.endTimeUnixNano {NOT_INT}, got a boolean true"),
    ((*_S, "attributes"), {"k": "v"}, f"{SPAN}.attributes must be an array, got an object"),
    ((*_S, "attributes"), ["k"], f'{SPAN}.attributes[0] must be an object, got a string "k"'),
    ((*_S, "attributes"), [{"value": {"stringValue": "v"}}], f"{SPAN}.attributes[0].key must be a string, got null"),
    ((*_S, "attributes"), attribute("v"), f'{VALUE} must be an object, got a string "v"'),
    ((*_S, "attributes"), attribute({"intValue": "1.5"}), f'{VALUE}.intValue {NOT_INT}, got a string "1.5"'),
    ((*_S, "attributes"), attribute({"intValue": str(2**63)}), f"{VALUE}.intValue {2**63} is out of range"),
    (
        (*_S, "attributes"),
        attribute({"intValue": "9" * 5000}),  # past Python's int() limit of 4,300 digits
        f"{VALUE}.intValue a string of 5000 characters is out of range",
    ),
    ((*_S, "attributes"), attribute({"doubleValue": 10**400}), f"{VALUE}.doubleValue is out of range for a double"),
    (
        (*_S, "attributes"),
        attribute({"boolValue": "true"}),
        f'{VALUE}.boolValue must be a boolean, got a string "true"',
    ),
    (
        (*_S, "attributes"),
        attribute({"doubleValue": "fast"}),
        f'{VALUE}.doubleValue must be a number, got a string "fast"',
    ),
    ((*_S, "attributes"), attribute({"bytesValue": "!!"}), f'{VALUE}.bytesValue must be base64, got a string "!!"'),
    ((*_S, "attributes"), attribute({"stringValue": 1}), f"{VALUE}.stringValue must be a string, got a number 1"),
    (
        (*_S, "attributes"),
        [{"key": "a", "value": {"stringValue": "ok"}}, *attribute({"arrayValue": {"values": [{"intValue": "x"}]}})],
        f"{SPAN}.attributes[1].value.arrayValue.values[0].intValue {NOT_INT}",
    ),
    (
        (*_S, "attributes"),
        attribute({"kvlistValue": {"values": [{"key": "inner", "value": {"boolValue": 0}}]}}),
        f"{VALUE}.kvlistValue.values[0].value.boolValue must be a boolean, got a number 0",
    ),
    ((*_S, "events"), [{"name": "e", "timeUnixNano": "x"}], f"{SPAN}.events[0].timeUnixNano {NOT_INT}"),
    ((*_S, "links"), [{"spanId": "xyz"}], f'{SPAN}.links[0].spanId must be 16 hex characters, got a string "xyz"'),
    ((*_S, "links"), {}, f"{SPAN}.links must be an array, got an object"),
    (_S, "span", f'{SPAN} must be an object, got a string "span"'),
    ((*_R, "resource"), [], "JSON body: resourceSpans[0].resource must be an object, got an array"),
    ((*_R, "resource", "attributes", 0, "key"), 1, "JSON body: resourceSpans[0].resource.attributes[0].key must be"),
    ((*_R, "schemaUrl"), 1, "JSON body: resourceSpans[0].schemaUrl must be a string, got a number 1"),
    ((*_R, "scopeSpans", 0, "scope", "version"), 2, "JSON body: resourceSpans[0].scopeSpans[0].scope.version must"),
    (("resourceSpans",), {}, "JSON body: resourceSpans must be an array, got an object"),
]


@pytest.mark.parametrize(("path", "value", "message"), JSON_ERRORS, ids=[m.split(" ", 3)[-1] for *_, m in JSON_ERRORS])
def test_json_errors_name_the_field(path: tuple[str | int, ...], value: Any, message: str) -> None:
    document = otlp_json_document(any_value_request({"a": AnyValue(string_value="b")}))
    set_path(document, path, value)
    with pytest.raises(OtlpDecodeError) as error:
        decode_traces(json.dumps(document).encode(), JSON)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_json_snake_case_keys_are_not_otlp_json() -> None:
    """The specification forbids the original field names; they are ignored, and the error says why."""
    document = otlp_json_document(any_value_request({}))
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["trace_id"] = span.pop("traceId")
    with pytest.raises(
        OtlpDecodeError, match=r"traceId is missing \(found 'trace_id': OTLP/JSON keys are lowerCamelCase\)$"
    ):
        decode_traces(json.dumps(document).encode(), JSON)
    assert decode_traces(json.dumps({"resource_spans": document["resourceSpans"]}).encode(), JSON) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "^JSON body is malformed: "),
        (b'{"resourceSpans": [', "^JSON body is malformed: "),
        (b"\xff\xfe", "^JSON body is malformed: "),
        (b'{"a": "\\ud800"}', "^JSON body is malformed: "),
        (b"[" * 100_000, "^JSON body is malformed: "),
        (b"[]", r"^JSON body must be an object \(an ExportTraceServiceRequest\), got an array$"),
        (b"null", "^JSON body must be an object"),
        (b'"x"', "^JSON body must be an object"),
    ],
    ids=["empty", "cut", "not-utf8", "lone-surrogate", "deep", "array", "null", "string"],
)
def test_malformed_json(body: bytes, message: str) -> None:
    with pytest.raises(OtlpDecodeError, match=message):
        decode_traces(body, JSON)


# --- properties ------------------------------------------------------------------------------

CONTENT_TYPES = st.sampled_from([PROTOBUF, JSON])


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=512), content_type=CONTENT_TYPES, encoding=st.sampled_from([None, "gzip", "deflate"]))
def test_random_bytes_raise_nothing_but_decode_errors(body: bytes, content_type: str, encoding: str | None) -> None:
    with contextlib.suppress(OtlpDecodeError):
        check_converts(decode_traces(decompress(body, encoding, CAP), content_type))


def check_converts(spans: list[OtlpSpan]) -> None:
    """Whatever decodes must also become a valid `Span` (the decoder's types match the model's)."""
    for span in spans:
        to_span(span, rollout_id="r", attempt_id="a", sequence_id=0)


@pytest.fixture(scope="module")
def small_protobuf(sdk_spans: tuple[ReadableSpan, ...]) -> bytes:
    return encode_spans(sdk_spans[:2]).SerializeToString()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_protobuf_raises_nothing_but_decode_errors(small_protobuf: bytes, data: st.DataObject) -> None:
    body = bytearray(small_protobuf)
    for _ in range(data.draw(st.integers(1, 4))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    with contextlib.suppress(OtlpDecodeError):
        check_converts(decode_traces(bytes(body[:cut] if data.draw(st.booleans()) else body), PROTOBUF))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def json_paths(node: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield (*prefix, key)
        yield from json_paths(value, (*prefix, key))


@pytest.fixture(scope="module")
def rich_json(sdk_spans: tuple[ReadableSpan, ...]) -> Any:
    request = encode_spans(sdk_spans[:3])
    request.resource_spans[0].scope_spans[0].spans[0].attributes.extend(
        any_value_request({k: v for k, (v, _) in ANY_VALUES.items()})
        .resource_spans[0]
        .scope_spans[0]
        .spans[0]
        .attributes
    )
    return otlp_json_document(request)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_json_in_any_field_raises_nothing_but_decode_errors(rich_json: Any, data: st.DataObject) -> None:
    document = json.loads(json.dumps(rich_json))
    paths = list(json_paths(document))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        with contextlib.suppress(KeyError, IndexError, TypeError):  # an earlier replacement removed the path
            set_path(document, path, data.draw(JSON_VALUES))
    try:
        check_converts(decode_traces(json.dumps(document).encode(), JSON))
    except OtlpDecodeError as error:
        assert "\n" not in str(error)


def test_decoding_is_deterministic_and_fresh(sdk_spans: tuple[ReadableSpan, ...]) -> None:
    """Two decodes of one body share nothing mutable (spans of one request share their resource dict)."""
    body = protobuf_body(sdk_spans)
    first, second = decode_traces(body, PROTOBUF), decode_traces(body, PROTOBUF)
    assert first == second
    assert first[0].attributes is not second[0].attributes


def _field(tag: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field; ``tag`` is the whole (one-byte) key."""
    return bytes([tag]) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def nested_arrays_protobuf(depth: int) -> bytes:
    value = _field(0x0A, b"x")  # AnyValue.string_value
    for _ in range(depth):
        value = _field(0x2A, _field(0x0A, value))  # AnyValue.array_value { values: [value] }
    span = (
        _field(0x0A, bytes(range(1, 17)))
        + _field(0x12, bytes(range(1, 9)))
        + _field(0x4A, _field(0x0A, b"k") + _field(0x12, value))
    )
    return _field(0x0A, _field(0x12, _field(0x12, span)))  # request.resource_spans.scope_spans.spans


def nested_arrays_json(depth: int) -> bytes:
    value: Any = {"stringValue": "x"}
    for _ in range(depth):
        value = {"arrayValue": {"values": [value]}}
    span = {"traceId": "01" * 16, "spanId": "01" * 8, "attributes": [{"key": "k", "value": value}]}
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()


def test_deep_nesting_is_a_decode_error_not_a_crash() -> None:
    expected: Any = "x"
    for _ in range(30):
        expected = [expected]
    assert decode_traces(nested_arrays_protobuf(30), PROTOBUF)[0].attributes == {"k": expected}
    assert decode_traces(nested_arrays_json(30), JSON)[0].attributes == {"k": expected}
    with pytest.raises(OtlpDecodeError, match=r"^protobuf body is malformed: "):
        decode_traces(nested_arrays_protobuf(200), PROTOBUF)
    with pytest.raises(OtlpDecodeError, match=r"^JSON body is malformed: "):
        decode_traces(nested_arrays_json(200), JSON)
