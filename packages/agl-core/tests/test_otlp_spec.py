"""OTLP/HTTP specification fidelity of ``POST /v1/traces``: failures answered with a
``google.rpc.Status`` in the request's encoding, and one invalid span refused alone."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from pydantic import SecretStr

from agl.core.otlp import OtlpDecodeError, decode_documents, error_status
from agl.core.server import ServerSettings, create_app
from agl.core.server.routes import otlp as route
from agl.core.store import SqliteLightningStore
from agl.core.testing.server import ServingThread

TOKEN = "spec-token"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MAX_BODY = 64 * 1024


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteLightningStore]:
    opened = SqliteLightningStore(tmp_path / "spec.db", watchdog_interval=None)
    yield opened
    asyncio.run(opened.close())


@pytest.fixture
def server(store: SqliteLightningStore) -> Iterator[ServingThread]:
    settings = ServerSettings(token=SecretStr(TOKEN), max_body_bytes=MAX_BODY, max_decompressed_bytes=2 * MAX_BODY)
    with ServingThread(create_app(settings, store)) as running:
        yield running


def post(
    server: ServingThread, body: bytes, content_type: str, token: str | None = TOKEN, path: str = "/v1/traces"
) -> httpx.Response:
    headers = {"content-type": content_type} | ({"authorization": f"Bearer {token}"} if token else {})
    return httpx.post(f"{server.url}{path}", content=body, headers=headers)


def status_of(response: httpx.Response, content_type: str) -> tuple[int, str]:
    """The answer's ``google.rpc.Status`` (code, message), checked to be in the request's encoding."""
    assert response.headers["content-type"] == content_type
    if content_type == JSON:
        answer = response.json()
        assert set(answer) == {"code", "message"}
        return answer["code"], answer["message"]
    status = Status.FromString(response.content)
    assert not status.details
    return status.code, status.message


def test_the_status_encoder_matches_googles_class() -> None:
    for code, message in ((400, ""), (401, "héllo"), (413, "x" * 300)):
        body, media_type = error_status(code, message, json_encoded=False)
        assert media_type == PROTOBUF
        parsed = Status.FromString(body)
        assert body == Status(code=parsed.code, message=message).SerializeToString()


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_failures_answer_a_status_in_the_requests_encoding(
    server: ServingThread, store: SqliteLightningStore, content_type: str
) -> None:
    malformed = b"\x0a\xff\xff\xff" if content_type == PROTOBUF else b'{"resourceSpans": 1}'
    cases = [
        (post(server, malformed, content_type), 400, 3, "body"),
        (post(server, b"{}", content_type, token=None), 401, 16, "missing or wrong bearer token"),
        (post(server, b"{}", content_type, token="wrong"), 401, 16, "missing or wrong bearer token"),
        (post(server, b"x" * (MAX_BODY + 1), content_type), 413, 8, f"request body exceeds {MAX_BODY} bytes"),
    ]
    for response, http_status, code, words in cases:
        assert response.status_code == http_status, response.content
        got_code, message = status_of(response, content_type)
        assert got_code == code and words in message and "\n" not in message
    assert asyncio.run(store.statistics()).spans == 0


def test_a_body_of_an_unknown_encoding_is_answered_in_protobuf(server: ServingThread) -> None:
    """OTLP/HTTP's Status is protobuf unless the request was JSON."""
    unsupported = post(server, b"hello", "text/plain")
    assert unsupported.status_code == 415
    code, message = status_of(unsupported, PROTOBUF)
    assert code == 12 and message.startswith("unsupported content type 'text/plain'")


def test_a_streamed_body_over_the_limit_is_a_413_status(server: ServingThread) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body streams in
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"x" * 1024

    for content_type in (PROTOBUF, JSON):
        response = httpx.post(
            f"{server.url}/v1/traces",
            content=chunks(),
            headers={"content-type": content_type, "authorization": f"Bearer {TOKEN}"},
        )
        assert response.status_code == 413
        assert status_of(response, content_type) == (8, f"request body exceeds {MAX_BODY} bytes")


def test_a_store_error_keeps_its_status_and_answers_a_status(
    server: ServingThread, store: SqliteLightningStore
) -> None:
    queued = asyncio.run(store.enqueue_rollout("queued"))
    span = json_span("cd" * 16, "3" * 16, {"agl.rollout.id": queued.rollout_id, "agl.attempt.id": "at-bogus"})
    response = post(server, otlp_json([span]), JSON)
    assert response.status_code == 404
    code, message = status_of(response, JSON)
    assert code == 5 and "at-bogus" in message


def test_other_paths_keep_the_stores_error_body(server: ServingThread) -> None:
    """The token check and the body limit answer every other route byte for byte as before."""
    unauthorized = post(server, b"{}", JSON, token=None, path="/v1/agl/rollouts")
    assert (unauthorized.status_code, unauthorized.headers["content-type"]) == (401, JSON)
    assert unauthorized.content == b'{"error":"Unauthorized","message":"missing or wrong bearer token","detail":{}}'
    too_large = post(server, b"x" * (MAX_BODY + 1), JSON, path="/v1/agl/rollouts")
    assert (too_large.status_code, too_large.headers["content-type"]) == (413, JSON)
    assert too_large.content == b'{"error":"BodyTooLarge","message":"request body exceeds %d bytes","detail":{}}' % (
        MAX_BODY
    )


# --- one invalid span among valid ones -------------------------------------------------------


def json_span(trace_id: str, span_id: str, attributes: dict[str, str] | None = None, parent: str = "") -> dict:
    return {
        "traceId": trace_id,
        "spanId": span_id,
        "parentSpanId": parent,
        "name": f"span {span_id[:4]}",
        "startTimeUnixNano": "1000000000",
        "endTimeUnixNano": "2000000000",
        "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in (attributes or {}).items()],
    }


def otlp_json(spans: list[dict]) -> bytes:
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"scope": {"name": "t"}, "spans": spans}]}]}).encode()


def pb_body(spans: list[PbSpan]) -> bytes:
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])])
    return request.SerializeToString()


def partial_success(response: httpx.Response, content_type: str) -> tuple[int, str]:
    assert response.status_code == 200 and response.headers["content-type"] == content_type
    if content_type == JSON:
        partial = response.json()["partialSuccess"]
        return int(partial["rejectedSpans"]), partial["errorMessage"]
    answer = ExportTraceServiceResponse.FromString(response.content).partial_success
    return answer.rejected_spans, answer.error_message


def test_a_span_with_a_bad_trace_id_is_refused_alone_protobuf(
    server: ServingThread, store: SqliteLightningStore
) -> None:
    trace = bytes(range(1, 17))
    spans = [
        PbSpan(trace_id=trace, span_id=bytes(range(1, 9)), name="root", start_time_unix_nano=10**9),
        PbSpan(
            trace_id=b"short",
            span_id=bytes(range(2, 10)),
            parent_span_id=bytes(range(1, 9)),
            name="bad",
            start_time_unix_nano=10**9,
        ),
        PbSpan(
            trace_id=trace,
            span_id=bytes(range(3, 11)),
            parent_span_id=bytes(range(1, 9)),
            name="child",
            start_time_unix_nano=2 * 10**9,
        ),
    ]
    rejected, message = partial_success(post(server, pb_body(spans), PROTOBUF), PROTOBUF)
    assert rejected == 1
    assert message == (
        "1 span(s) refused, the first: protobuf body:"
        " resource_spans[0].scope_spans[0].spans[1].trace_id must be 16 bytes, got 5"
    )
    stored = asyncio.run(store.query_spans(f"ro-trace-{trace.hex()}"))
    assert [s.name for s in stored] == ["root", "child"]
    rollouts = asyncio.run(store.query_rollouts())
    assert rollouts.total == 1 and rollouts.items[0].status == "succeeded"


def test_a_span_with_a_bad_id_is_refused_alone_json(server: ServingThread, store: SqliteLightningStore) -> None:
    """Its rollout is not made either: a bad span names the rollout it would have created."""
    trace = "ab" * 16
    spans = [
        json_span(trace, "1" * 16),
        json_span("xyz", "2" * 16, {"agl.rollout.id": "ro-never"}, parent="1" * 16),
        json_span(trace, "3" * 16, parent="1" * 16),
    ]
    rejected, message = partial_success(post(server, otlp_json(spans), JSON), JSON)
    assert rejected == 1
    assert message == (
        "1 span(s) refused, the first: JSON body:"
        ' resourceSpans[0].scopeSpans[0].spans[1].traceId must be 32 hex characters, got a string "xyz"'
    )
    assert [s.span_id for s in asyncio.run(store.query_spans(f"ro-trace-{trace}"))] == ["1" * 16, "3" * 16]
    assert asyncio.run(store.get_rollout_by_id("ro-never")) is None


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_a_body_whose_every_span_is_invalid_is_a_400(
    server: ServingThread, store: SqliteLightningStore, content_type: str
) -> None:
    """Not a quiet partial success: a sender that writes no span right (base64 ids in OTLP/JSON) is
    misconfigured, and a 400 is what its exporter logs as an error."""
    if content_type == JSON:
        parent = "9" * 16
        body = otlp_json(
            [
                json_span("q83vEjRWeJCrze8SNFZ4kA==", "1" * 16, parent=parent),
                json_span("zz" * 16, "2" * 16, parent=parent),
            ]
        )
    else:
        body = pb_body([PbSpan(trace_id=bytes(16), span_id=bytes(range(1, 9)), name="zeros")])
    response = post(server, body, content_type)
    assert response.status_code == 400
    code, message = status_of(response, content_type)
    assert code == 3
    if content_type == JSON:
        assert message.startswith("2 span(s) invalid, the first: JSON body: resourceSpans[0].scopeSpans[0].spans[0]")
        assert "this is base64" in message
    else:
        assert message == "protobuf body: resource_spans[0].scope_spans[0].spans[0].trace_id must not be all zeros"
    assert asyncio.run(store.statistics()).spans == 0


def test_a_body_malformed_outside_its_spans_is_still_a_400(server: ServingThread, store: SqliteLightningStore) -> None:
    good = json_span("ab" * 16, "1" * 16)
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [good]}]}, {"scopeSpans": "oops"}]}).encode()
    response = post(server, body, JSON)
    assert response.status_code == 400
    assert status_of(response, JSON) == (
        3,
        'JSON body: resourceSpans[1].scopeSpans must be an array, got a string "oops"',
    )
    assert asyncio.run(store.statistics()).spans == 0


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_an_invalid_span_that_may_be_a_root_refuses_its_batch(
    server: ServingThread, store: SqliteLightningStore, content_type: str
) -> None:
    """Refused alone, a trace's root would leave its observed rollout running for good (it ends
    when its root arrives, and an exporter does not send a partial success again)."""
    if content_type == JSON:
        trace = "ab" * 16
        body = otlp_json([{**json_span(trace, "1" * 16), "kind": 9}, json_span(trace, "2" * 16, parent="1" * 16)])
    else:
        trace = bytes(range(1, 17)).hex()
        root = PbSpan(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="root", kind=9)
        child = PbSpan(
            trace_id=bytes(range(1, 17)), span_id=bytes(range(2, 10)), parent_span_id=bytes(range(1, 9)), name="child"
        )
        body = pb_body([root, child])
    response = post(server, body, content_type)
    assert response.status_code == 400
    assert "spans[0].kind" in status_of(response, content_type)[1]
    assert asyncio.run(store.get_rollout_by_id(f"ro-trace-{trace}")) is None
    assert asyncio.run(store.statistics()).spans == 0


# --- a large body does not hold the server ----------------------------------------------------


def test_a_large_body_is_decoded_while_the_server_answers_others(
    store: SqliteLightningStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoding a large batch takes seconds; on the event loop it stalled /health and every client.
    The decoder is held at its start (a synchronisation point, no sleeps) while /health is asked."""
    entered, release = threading.Event(), threading.Event()
    decode = route.decode_documents

    def held_decode(*args: object) -> object:
        entered.set()
        release.wait(60)
        return decode(*args)

    monkeypatch.setattr(route, "decode_documents", held_decode)
    trace = "ab" * 16
    spans = [json_span(trace, f"{index + 1:016x}", {"text": "x" * 16384}) for index in range(300)]
    body = otlp_json(spans)
    assert len(body) > route.OFF_LOOP_BYTES
    with ServingThread(create_app(ServerSettings(), store)) as running, ThreadPoolExecutor(1) as pool:
        exported = pool.submit(
            httpx.post, f"{running.url}/v1/traces", content=body, headers={"content-type": JSON}, timeout=120
        )
        try:
            assert entered.wait(60)
            assert httpx.get(f"{running.url}/health", timeout=20).json() == {"status": "ok"}
        finally:
            release.set()
        assert exported.result().status_code == 200
    assert len(asyncio.run(store.query_spans(f"ro-trace-{trace}"))) == 300


# --- the decoder ------------------------------------------------------------------------------


def test_the_decoder_sets_invalid_spans_aside_only_when_asked() -> None:
    good = PbSpan(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="good")
    bad = PbSpan(trace_id=bytes(range(1, 17)), span_id=bytes(range(2, 10)), parent_span_id=bytes(range(1, 9)), kind=9)
    body = pb_body([good, bad, good])
    rejected: list[str] = []
    assert [d["name"] for d in decode_documents(body, PROTOBUF, rejected)] == ["good", "good"]
    assert rejected == ["protobuf body: resource_spans[0].scope_spans[0].spans[1].kind 9 is not a SpanKind (0-5)"]
    with pytest.raises(OtlpDecodeError, match=r"spans\[1\]\.kind 9 is not a SpanKind"):
        list(decode_documents(body, PROTOBUF))


def test_the_json_decoder_names_where_each_invalid_span_was() -> None:
    scope = {"spans": [json_span("ab" * 16, "1" * 16)]}
    broken = {
        "spans": [json_span("ab" * 16, "2" * 16), {**json_span("ab" * 16, "3" * 16, parent="2" * 16), "kind": "SERVER"}]
    }
    body = json.dumps({"resourceSpans": [{"scopeSpans": [scope]}, {"scopeSpans": [scope, broken]}]}).encode()
    rejected: list[str] = []
    assert len(list(decode_documents(body, JSON, rejected))) == 3
    assert rejected == [
        "JSON body: resourceSpans[1].scopeSpans[1].spans[1].kind must be an integer (OTLP/JSON enums are numbers),"
        ' got a string "SERVER"'
    ]
    with pytest.raises(OtlpDecodeError, match=r"resourceSpans\[1\]\.scopeSpans\[1\]\.spans\[1\]\.kind"):
        decode_documents(body, JSON)
