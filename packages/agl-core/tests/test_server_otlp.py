"""OTLP/HTTP ingest end to end: the OpenTelemetry SDK's own exporter pointed at a live server."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.rpc.status_pb2 import Status as RpcStatus
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import INVALID_SPAN_CONTEXT, Link, Status, StatusCode
from pydantic import SecretStr

from agl.core.server import ServerSettings, create_app
from agl.core.store import SqliteLightningStore
from agl.core.testing.server import ServingThread

TOKEN = "otlp-token"


@pytest.fixture
def backing(tmp_path: Path) -> Iterator[SqliteLightningStore]:
    store = SqliteLightningStore(tmp_path / "otlp.db", watchdog_interval=None)
    yield store
    asyncio.run(store.close())


@pytest.fixture
def server(backing: SqliteLightningStore) -> Iterator[ServingThread]:
    settings = ServerSettings(
        token=SecretStr(TOKEN), max_body_bytes=2 * 1024 * 1024, max_decompressed_bytes=4 * 1024 * 1024
    )
    with ServingThread(create_app(settings, backing)) as running:
        yield running


def provider_for(server: ServingThread, resource: dict[str, str], compression: Compression) -> TracerProvider:
    exporter = OTLPSpanExporter(
        endpoint=f"{server.url}/v1/traces", headers={"Authorization": f"Bearer {TOKEN}"}, compression=compression
    )
    provider = TracerProvider(resource=Resource.create(resource))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip, Compression.Deflate])
def test_plain_otel_app_traces_become_observed_rollouts(
    server: ServingThread, backing: SqliteLightningStore, compression: Compression
) -> None:
    provider = provider_for(server, {"service.name": "quiz-bot"}, compression)
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("agent") as root:
        with tracer.start_as_current_span("chat tiny", attributes={"gen_ai.request.model": "tiny"}):
            pass
        with tracer.start_as_current_span("tool lookup"):
            pass
    with tracer.start_as_current_span("second run") as failing:
        failing.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()

    trace_id = format(root.get_span_context().trace_id, "032x")
    rollout = run(backing.get_rollout_by_id(f"ro-trace-{trace_id}"))
    assert rollout is not None
    assert (rollout.status, rollout.metadata) == (
        "succeeded",
        {"observed": True, "trace_id": trace_id, "service": "quiz-bot"},
    )
    spans = run(backing.query_spans(rollout.rollout_id))
    # Exported child-first, one span per request; numbered by start time, the parent comes first.
    assert [s.name for s in spans] == ["agent", "chat tiny", "tool lookup"]
    assert spans[1].parent_id == spans[0].span_id and spans[1].attributes["gen_ai.request.model"] == "tiny"
    assert spans[0].resource.attributes["service.name"] == "quiz-bot"
    other = run(backing.get_rollout_by_id(f"ro-trace-{format(failing.get_span_context().trace_id, '032x')}"))
    assert other is not None and other.status == "failed"


def test_spans_naming_a_rollout_join_it(server: ServingThread, backing: SqliteLightningStore) -> None:
    started = run(backing.start_rollout({"q": 1}))
    resource = {"agl.rollout.id": started.rollout_id, "agl.attempt.id": started.attempt.attempt_id}
    provider = provider_for(server, resource, Compression.Gzip)
    with provider.get_tracer("agent").start_as_current_span("step", attributes={"agl.sequence_id": 7}):
        pass
    provider.shutdown()
    (span,) = run(backing.query_spans(started.rollout_id))
    assert (span.name, span.sequence_id, span.attempt_id) == ("step", 7, started.attempt.attempt_id)
    assert run(backing.get_latest_attempt(started.rollout_id)).status == "running"  # type: ignore[union-attr]


def test_a_link_to_an_invalid_context_does_not_lose_the_batch(
    server: ServingThread, backing: SqliteLightningStore
) -> None:
    """The SDK exports a link to an invalid context when it has attributes; the batch was a 400."""
    provider = provider_for(server, {"service.name": "linker"}, Compression.Gzip)
    lost = Link(INVALID_SPAN_CONTEXT, {"n": 1})
    with provider.get_tracer("app").start_as_current_span("agent", links=[lost]) as root:
        pass
    provider.shutdown()
    (span,) = run(backing.query_spans(f"ro-trace-{format(root.get_span_context().trace_id, '032x')}"))
    assert [(link.trace_id, link.span_id, link.attributes) for link in span.links] == [("0" * 32, "0" * 16, {"n": 1})]


def otlp_json(trace_id: str, spans: list[dict]) -> bytes:
    return json.dumps(
        {"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"scope": {"name": "t"}, "spans": spans}]}]}
    ).encode()


def json_span(trace_id: str, span_id: str, name: str, parent: str = "", **attributes: str) -> dict:
    return {
        "traceId": trace_id,
        "spanId": span_id,
        "parentSpanId": parent,
        "name": name,
        "kind": 1,
        "startTimeUnixNano": "1000000000",
        "endTimeUnixNano": "2000000000",
        "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attributes.items()],
    }


def post(server: ServingThread, body: bytes, content_type: str = "application/json", **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/traces",
        content=body,
        headers={"content-type": content_type, "authorization": f"Bearer {TOKEN}", **headers},
    )


def test_json_bodies_and_one_transaction_per_batch(server: ServingThread, backing: SqliteLightningStore) -> None:
    trace = "ab" * 16
    ok = post(
        server, gzip.compress(otlp_json(trace, [json_span(trace, "1" * 16, "root")])), **{"content-encoding": "gzip"}
    )
    assert (ok.status_code, ok.json()) == (200, {})
    assert run(backing.get_rollout_by_id(f"ro-trace-{trace}")).status == "succeeded"  # type: ignore[union-attr]

    queued = run(backing.enqueue_rollout("queued"))
    # One span claims an attempt the queued rollout never had: the whole batch is refused.
    batch = [
        json_span("cd" * 16, "2" * 16, "fine"),
        json_span("cd" * 16, "3" * 16, "stray", **{"agl.rollout.id": queued.rollout_id, "agl.attempt.id": "at-bogus"}),
    ]
    refused = post(server, otlp_json("cd" * 16, batch))
    assert refused.status_code == 404 and refused.json()["code"] == 5  # a google.rpc.Status: NOT_FOUND
    assert run(backing.get_rollout_by_id(f"ro-trace-{'cd' * 16}")) is None
    assert run(backing.statistics()).spans == 1


def test_bad_bodies_are_4xx_and_change_nothing(server: ServingThread, backing: SqliteLightningStore) -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * (1024 * 1024)
    compressed = b"".join(bomb.compress(zeros) for _ in range(256)) + bomb.flush()  # 256 MiB of zeros
    cases = [
        (post(server, compressed, **{"content-encoding": "gzip"}), 413),
        (post(server, b"\x0a\xff\xff\xff", "application/x-protobuf"), 400),
        (post(server, b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}'), 400),
        (post(server, b"hello", "text/plain"), 415),
        (post(server, b"{}", **{"content-encoding": "br"}), 415),
        (post(server, b"x" * (3 * 1024 * 1024), "application/x-protobuf"), 413),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        # OTLP/HTTP's failure body: a google.rpc.Status, JSON for a JSON request, else protobuf.
        if response.headers["content-type"] == "application/json":
            message = response.json()["message"]
        else:
            message = RpcStatus.FromString(response.content).message
        assert message and "\n" not in message
    assert httpx.post(f"{server.url}/v1/traces", content=b"{}").status_code == 401
    assert run(backing.statistics()).spans == 0
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_spans_naming_only_rollouts_the_store_lacks_get_an_attempt_each(
    server: ServingThread, backing: SqliteLightningStore
) -> None:
    """Their attempt is named after the rollout as the agl_store exporter names it: two rollouts
    whose ids differ only in their first three characters do not share (and fight over) one."""
    batch = [
        json_span("ab" * 16, "1" * 16, "first", **{"agl.rollout.id": "job-1"}),
        json_span("cd" * 16, "2" * 16, "second", **{"agl.rollout.id": "run-1"}),
    ]
    answer = post(server, otlp_json("ab" * 16, batch))
    assert (answer.status_code, answer.json()) == (200, {})
    for rollout_id, name in (("job-1", "first"), ("run-1", "second")):
        (span,) = run(backing.query_spans(rollout_id))
        assert (span.name, span.attempt_id) == (name, f"at-{rollout_id}")


def test_a_span_naming_only_a_queued_rollout_is_refused_in_words(
    server: ServingThread, backing: SqliteLightningStore
) -> None:
    queued = run(backing.enqueue_rollout("queued"))
    batch = [json_span("ef" * 16, "4" * 16, "early", **{"agl.rollout.id": queued.rollout_id})]
    refused = post(server, otlp_json("ef" * 16, batch))
    assert refused.status_code == 400
    assert f"rollout {queued.rollout_id!r} has no attempt yet" in refused.json()["message"]
    assert run(backing.statistics()).spans == 0 and run(backing.get_latest_attempt(queued.rollout_id)) is None


def export_to_small_store(tmp_path: Path, body: bytes, protobuf: bool) -> tuple[SqliteLightningStore, int, str]:
    """Post one OTLP body to a server over a store whose spans are limited to 2,048 bytes; the store,
    and the answer's ``partial_success`` (rejected spans, message)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    store = SqliteLightningStore(tmp_path / "small.db", watchdog_interval=None, max_span_bytes=2048)
    with ServingThread(create_app(ServerSettings(), store)) as running:
        answer = httpx.post(
            f"{running.url}/v1/traces",
            content=body,
            headers={"content-type": "application/x-protobuf" if protobuf else "application/json"},
        )
    assert answer.status_code == 200
    if protobuf:
        partial = ExportTraceServiceResponse.FromString(answer.content).partial_success
        return store, partial.rejected_spans, partial.error_message
    partial = answer.json()["partialSuccess"]
    return store, int(partial["rejectedSpans"]), partial["errorMessage"]


@pytest.mark.parametrize("protobuf", [False, True])
def test_a_span_over_the_size_limit_is_stored_without_its_content(tmp_path: Path, protobuf: bool) -> None:
    """Exporters do not resend a refused request: the batch is stored, the large span without its
    large attributes (its place in the tree and small attributes kept), and the answer's
    ``partial_success`` warns which span lost what."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    kept = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("agent"):
        with tracer.start_as_current_span("tool read", attributes={"output": "x" * 4096, "tool": "read"}):
            pass
        with tracer.start_as_current_span("chat tiny"):
            pass
    spans = kept.get_finished_spans()
    trace = format(spans[0].context.trace_id, "032x")
    if protobuf:
        body = encode_spans(spans).SerializeToString()
    else:
        documents = [
            json_span(
                trace, format(s.context.span_id, "016x"), s.name, format(s.parent.span_id, "016x") if s.parent else ""
            )
            for s in spans
        ]
        documents[0]["attributes"] = [
            {"key": "output", "value": {"stringValue": "x" * 4096}},
            {"key": "tool", "value": {"stringValue": "read"}},
        ]
        body = otlp_json(trace, documents)
    store, rejected, message = export_to_small_store(tmp_path, body, protobuf)
    assert rejected == 0 and "1 span(s) stored without their content" in message and "the limit is 2048" in message
    stored = {s.name: s for s in run(store.query_spans(f"ro-trace-{trace}"))}
    assert sorted(stored) == ["agent", "chat tiny", "tool read"]
    tool = stored["tool read"]
    assert "output" not in tool.attributes and tool.attributes["tool"] == "read"
    assert "attributes output" in tool.attributes["agl.span.dropped"]
    assert tool.parent_id == stored["agent"].span_id
    run(store.close())


def test_a_root_span_over_the_size_limit_still_ends_its_observed_rollout(tmp_path: Path) -> None:
    trace = "ab" * 16
    root = json_span(trace, "1" * 16, "agent")
    root["attributes"] = [{"key": "input", "value": {"stringValue": "x" * 4096}}]
    store, rejected, _ = export_to_small_store(tmp_path, otlp_json(trace, [root]), protobuf=False)
    assert rejected == 0
    assert run(store.get_rollout_by_id(f"ro-trace-{trace}")).status == "succeeded"
    run(store.close())


def test_a_span_too_large_even_without_its_content_is_refused_alone(tmp_path: Path) -> None:
    trace = "cd" * 16
    spans = [json_span(trace, "1" * 16, "agent"), json_span(trace, "2" * 16, "n" * 4096, parent="1" * 16)]
    store, rejected, message = export_to_small_store(tmp_path, otlp_json(trace, spans), protobuf=False)
    assert rejected == 1 and "1 span(s) refused, the first: span '2222222222222222'" in message
    assert [s.name for s in run(store.query_spans(f"ro-trace-{trace}"))] == ["agent"]
    run(store.close())


def test_a_span_without_a_start_time_over_the_size_limit_is_stored_without_its_content(tmp_path: Path) -> None:
    """The store numbers a span that has no start time; its size is checked here all the same, so
    one such span does not refuse the whole batch."""
    trace = "ef" * 16
    untimed = json_span(trace, "2" * 16, "tool read", parent="1" * 16, output="x" * 4096)
    del untimed["startTimeUnixNano"]
    spans = [json_span(trace, "1" * 16, "agent"), untimed]
    store, rejected, message = export_to_small_store(tmp_path, otlp_json(trace, spans), protobuf=False)
    assert rejected == 0 and "1 span(s) stored without their content" in message
    stored = {s.name: s for s in run(store.query_spans(f"ro-trace-{trace}"))}
    assert sorted(stored) == ["agent", "tool read"] and "output" not in stored["tool read"].attributes
    assert stored["tool read"].sequence_id > 0
    run(store.close())
