"""OTLP ingest through span documents stores exactly what it stored through `Span` models.

The store server's ingest path (`decode_documents`, the route's filing, ``orjson``, then
`LifecycleStore.add_observed_span_documents`) skips the models for speed. Every test here holds
it to the model path it replaced: `decode_traces`, `to_span`, `encode_span`, `add_observed_spans`
(the reference below is that path as the route ran it), byte for byte in the database.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import math
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from google.rpc.status_pb2 import Status as RpcStatus
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from agl.core.errors import InvalidInput
from agl.core.ids import sequence_clock
from agl.core.otlp import OtlpDecodeError, decode_documents, decode_traces, span_resource, to_span
from agl.core.server import ServerSettings, create_app
from agl.core.server.routes import otlp as route
from agl.core.store import InMemoryLightningStore, SqliteLightningStore
from agl.core.store.base import LightningStore
from agl.core.store.lifecycle import LifecycleStore, encode_span, encode_span_document
from agl.core.testing import ManualClock, StoreConformance
from agl.core.testing.otlp import otlp_json_document
from agl.core.testing.server import ServingThread
from agl.core.tracing.identity import file_span
from agl.core.types import Span, SpanResource

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
T0 = 1_700_000_000_123_456_789


# --- bodies ----------------------------------------------------------------------------------


def _value(value: Any) -> AnyValue:
    """A Python value as an OTLP AnyValue (bytes as bytes_value, dicts as kvlists)."""
    if value is None:
        return AnyValue()
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[_value(v) for v in value]))
    return AnyValue(kvlist_value=KeyValueList(values=_key_values(value)))


def _key_values(values: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=key, value=_value(value)) for key, value in values.items()]


EVERY_VALUE: dict[str, Any] = {
    "text": 'Größe 🐍 "quoted" \\ back\nslash\t\x00\x1f\x7f\u2028',
    "empty_text": "",
    "int": -(2**63),
    "big": 2**63 - 1,
    "double": 0.1,
    "tiny": 5e-324,
    "huge": 1.7976931348623157e308,
    "exp": 1e-7,
    "whole": 3.0,
    "negative_zero": -0.0,
    "true": True,
    "false": False,
    "bytes": b"\x00\xffbin",
    "none": None,
    "array": ["a", 1, 2.5, False, None, ["nested", {"k": "v"}]],
    "empty_array": [],
    "kvlist": {"role": "user", "n": -3, "inner": {}, "list": [1, 2]},
}


def handmade_request() -> ExportTraceServiceRequest:
    """What the SDK cannot send: every AnyValue, a span with no times (the store numbers it), a
    span naming only its rollout, and one of a resource that names both ids."""
    trace = bytes(range(1, 17))
    spans = [
        PbSpan(
            trace_id=trace,
            span_id=bytes(range(1, 9)),
            parent_span_id=bytes(range(9, 17)),
            name="every value",
            kind=PbSpan.SPAN_KIND_CLIENT,
            start_time_unix_nano=T0,
            end_time_unix_nano=T0 + 5,
            attributes=_key_values(EVERY_VALUE),
            events=[
                PbSpan.Event(name="first", time_unix_nano=T0 + 1, attributes=_key_values({"n": 1, "tags": ["x"]})),
                PbSpan.Event(name="no time"),
            ],
            links=[PbSpan.Link(trace_id=trace, span_id=bytes(range(2, 10)), attributes=_key_values({"why": "retry"}))],
            status=PbStatus(code=PbStatus.STATUS_CODE_ERROR, message="model overloaded"),
        ),
        PbSpan(trace_id=trace, span_id=bytes(range(3, 11)), parent_span_id=bytes(range(1, 9)), name="no times"),
        PbSpan(
            trace_id=trace,
            span_id=bytes(range(4, 12)),
            parent_span_id=bytes(range(1, 9)),
            name="own scope",
            start_time_unix_nano=T0 + 3,
            attributes=_key_values({"otel.scope.name": "mine"}),
        ),
        PbSpan(
            trace_id=trace,
            span_id=bytes(range(5, 13)),
            parent_span_id=bytes(8),  # all zeros: a root
            name="only the rollout",
            start_time_unix_nano=T0 + 4,
            attributes=_key_values({"agl.rollout.id": "ro-started"}),
            status=PbStatus(code=PbStatus.STATUS_CODE_OK),
        ),
    ]
    named = PbSpan(
        trace_id=bytes(range(17, 33)),
        span_id=bytes(range(6, 14)),
        name="named by its resource",
        start_time_unix_nano=T0 + 2,
        attributes=_key_values({"agl.sequence_id": 41, "agl.attempt.id": "at-span"}),
    )
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=PbResource(attributes=_key_values({"service.name": "handmade", "replicas": 3})),
                schema_url="https://opentelemetry.io/schemas/1.26.0",
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name="hand", version="2"), spans=spans)],
            ),
            ResourceSpans(
                resource=PbResource(attributes=_key_values({"agl.rollout.id": "ro-res", "agl.attempt.id": "at-res"})),
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name="other"), spans=[named])],
            ),
        ]
    )


def seed_request() -> ExportTraceServiceRequest:
    """An observed rollout with a chosen attempt, which a later span naming only the rollout joins."""
    span = PbSpan(
        trace_id=bytes(range(33, 49)),
        span_id=bytes(range(7, 15)),
        parent_span_id=bytes(range(8, 16)),
        name="seed",
        start_time_unix_nano=T0,
        attributes=_key_values({"agl.rollout.id": "ro-started", "agl.attempt.id": "at-first"}),
    )
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])])


@functools.cache
def sdk_request() -> ExportTraceServiceRequest:
    """A trace as the SDK records it: kinds, statuses, events, links, arrays; no identity, so an
    observed rollout per trace, which its root (ERROR) ends as failed."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "sdk-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("agl.test", "0.1")
    with tracer.start_as_current_span("agent", kind=SpanKind.SERVER, start_time=T0) as root:
        root.add_event("started", {"step": 1, "tags": ["a", "b"]}, timestamp=T0 + 1)
        with tracer.start_as_current_span(
            "chat", kind=SpanKind.CLIENT, attributes={"gen_ai.request.temperature": 0.7, "ints": [1, 2]}
        ) as chat:
            chat.set_status(Status(StatusCode.OK))
        with tracer.start_as_current_span("tool", links=[Link(chat.get_span_context(), {"n": 2})]):
            pass
        root.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()
    return encode_spans(exporter.get_finished_spans())


def body_of(request: ExportTraceServiceRequest, content_type: str) -> bytes:
    if content_type == PROTOBUF:
        return request.SerializeToString()
    return orjson.dumps(otlp_json_document(request))


REQUESTS = {"seed": seed_request, "handmade": handmade_request, "sdk": sdk_request}  # in this order


# --- the model path, as the route ran it before documents -------------------------------------


async def ingest_with_models(store: LightningStore, body: bytes, content_type: str) -> None:
    spans: list[Span] = []
    new_rollouts: dict[str, dict[str, Any]] = {}
    latest_attempts: dict[str, str] = {}
    resources: dict[int, SpanResource] = {}
    for span in decode_traces(body, content_type):
        filing = file_span(span.attributes, span.resource_attributes, span.trace_id, span.start_time)
        attempt_id = filing.attempt_id
        if attempt_id is None:
            if filing.rollout_id not in latest_attempts:
                latest = await store.get_latest_attempt(filing.rollout_id)
                named = f"at-{filing.rollout_id.removeprefix('ro-')}"
                latest_attempts[filing.rollout_id] = latest.attempt_id if latest else named
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
    if spans:
        await store.add_observed_spans(spans, new_rollout_metadata=new_rollouts)


async def ingest_with_documents(store: LifecycleStore, body: bytes, content_type: str) -> None:
    spans, new_rollouts, _, _ = await route._file(store, decode_documents(body, content_type), None)
    if spans:
        await store.add_observed_span_documents(spans, new_rollout_metadata=new_rollouts, encode=orjson.dumps)


def rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the store wrote, in insertion order."""
    with sqlite3.connect(path) as connection:
        return {
            table: connection.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
            for table in ("rollouts", "attempts", "spans")
        }


# --- the stored result --------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_documents_store_what_models_stored_byte_for_byte(tmp_path: Path, content_type: str) -> None:
    async def run(path: Path, documents: bool) -> None:
        store = SqliteLightningStore(path, clock=ManualClock(), watchdog_interval=None)
        try:
            for make in REQUESTS.values():
                body = body_of(make(), content_type)
                if documents:
                    await ingest_with_documents(store, body, content_type)
                else:
                    await ingest_with_models(store, body, content_type)
        finally:
            await store.close()

    asyncio.run(run(tmp_path / "models.db", documents=False))
    asyncio.run(run(tmp_path / "documents.db", documents=True))
    expected, actual = rows(tmp_path / "models.db"), rows(tmp_path / "documents.db")
    assert len(expected["spans"]) == 9 and len(expected["rollouts"]) == 4  # started, res, and two traces
    assert actual == expected
    statuses = {row[0]: row[1] for row in actual["rollouts"]}
    assert statuses[f"ro-trace-{bytes(range(1, 17)).hex()}"] == "running"  # its root is "only the rollout"'s
    assert sorted(statuses.values()).count("failed") == 1  # the SDK trace's root is an ERROR


def test_memory_store_keeps_the_same_spans(tmp_path: Path) -> None:
    async def run(documents: bool) -> list[Span]:
        store = InMemoryLightningStore(clock=ManualClock(), watchdog_interval=None)
        for make in REQUESTS.values():
            body = body_of(make(), PROTOBUF)
            if documents:
                await ingest_with_documents(store, body, PROTOBUF)
            else:
                await ingest_with_models(store, body, PROTOBUF)
        rollouts = await store.query_rollouts()
        spans = [span for rollout in rollouts for span in await store.query_spans(rollout.rollout_id)]
        await store.close()
        return spans

    expected, actual = asyncio.run(run(False)), asyncio.run(run(True))
    assert len(expected) == 9 and actual == expected


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
@pytest.mark.parametrize("request_name", sorted(REQUESTS))
def test_each_document_is_its_span_s_model_dump(content_type: str, request_name: str) -> None:
    body = body_of(REQUESTS[request_name](), content_type)
    documents, spans = list(decode_documents(body, content_type)), decode_traces(body, content_type)
    assert len(documents) == len(spans) > 0
    for sequence_id, (document, span) in enumerate(zip(documents, spans, strict=True), 1):
        document.update(rollout_id="ro-1", attempt_id="at-1", sequence_id=sequence_id)
        model = to_span(span, rollout_id="ro-1", attempt_id="at-1", sequence_id=sequence_id)
        assert document == model.model_dump()
        assert list(document) == list(model.model_dump())  # key order is JSON order
        assert orjson.dumps(document) == encode_span_document(document) == encode_span(model)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)


# Any AnyValue tree: strings with every kind of character, 64-bit integers, every double.
ANY_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.binary(max_size=8),
    _containers,
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(attributes=st.dictionaries(st.text(max_size=12), ANY_VALUE, max_size=6))
def test_any_attribute_values_serialise_alike(attributes: dict[str, Any]) -> None:
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=PbResource(attributes=_key_values(attributes)),
                scope_spans=[
                    ScopeSpans(
                        spans=[
                            PbSpan(
                                trace_id=bytes(range(1, 17)),
                                span_id=bytes(range(1, 9)),
                                name="values",
                                attributes=_key_values(attributes),
                            )
                        ]
                    )
                ],
            )
        ]
    )
    body = request.SerializeToString()
    [document], [span] = list(decode_documents(body, PROTOBUF)), decode_traces(body, PROTOBUF)
    document.update(rollout_id="ro-1", attempt_id="at-1", sequence_id=7)
    model = to_span(span, rollout_id="ro-1", attempt_id="at-1", sequence_id=7)
    assert orjson.dumps(document) == encode_span(model) == encode_span_document(document)


def test_nan_and_infinities_are_stored_as_null_on_both_paths() -> None:
    body = handmade_request().SerializeToString()
    request = ExportTraceServiceRequest.FromString(body)
    request.resource_spans[0].scope_spans[0].spans[0].attributes.extend(
        _key_values({"nan": math.nan, "inf": math.inf, "-inf": -math.inf})
    )
    body = request.SerializeToString()
    document = next(decode_documents(body, PROTOBUF))
    document.update(rollout_id="r", attempt_id="a")
    model = to_span(decode_traces(body, PROTOBUF)[0], rollout_id="r", attempt_id="a", sequence_id=0)
    assert b'"nan":null,"inf":null,"-inf":null' in orjson.dumps(document)
    assert orjson.dumps(document) == encode_span(model) == encode_span_document(document)


# --- the store's document path on its own --------------------------------------------------------


def observed_document(span_id: str, start: float | None, **fields: Any) -> dict[str, Any]:
    model = Span(
        rollout_id="ro-trace-1",
        attempt_id="at-trace-1",
        sequence_id=0,
        trace_id="ab" * 16,
        span_id=span_id,
        parent_id="f" * 16,
        name="step",
        start_time=start,
        **fields,
    )
    return model.model_dump()


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LifecycleStore]:
    made: LifecycleStore = (
        InMemoryLightningStore(clock=ManualClock(), watchdog_interval=None)
        if request.param == "memory"
        else SqliteLightningStore(tmp_path / "store.db", clock=ManualClock(), watchdog_interval=None)
    )
    yield made
    asyncio.run(made.close())


def test_documents_without_json_and_renumbered_ones_are_encoded_by_the_store(store: LifecycleStore) -> None:
    late, early = observed_document("b" * 16, 2.0), observed_document("a" * 16, None)
    stale = orjson.dumps(early)  # numbered 0 here: the store numbers it and must not keep this JSON
    asyncio.run(store.add_observed_span_documents([(late, None), (early, stale)]))
    stored = asyncio.run(store.query_spans("ro-trace-1"))
    now = sequence_clock(ManualClock()())  # the store's clock, where it starts
    assert [(s.span_id, s.sequence_id) for s in stored] == [("a" * 16, now), ("b" * 16, now + 1)]
    assert (early["sequence_id"], late["sequence_id"]) == (now, now + 1)  # numbered in start order, in the documents


def test_an_oversized_or_unserialisable_document_stores_no_span(store: LifecycleStore) -> None:
    store.max_span_bytes = 600
    fine = observed_document("a" * 16, 1.0)
    big = observed_document("b" * 16, 2.0, attributes={"text": "x" * 1000})
    with pytest.raises(InvalidInput, match=r"^span 'bbbbbbbbbbbbbbbb' \('step'\) is \d+ bytes; the limit is 600$"):
        asyncio.run(store.add_observed_span_documents([(fine, None), (big, orjson.dumps(big))]))
    odd = observed_document("c" * 16, 3.0, attributes={"set": {1}})
    with pytest.raises(InvalidInput, match=r"^span 'cccccccccccccccc' \('step'\) has attributes that are not JSON"):
        asyncio.run(store.add_observed_span_documents([(fine, None), (odd, None)], encode=orjson.dumps))
    if isinstance(store, SqliteLightningStore):  # rolled back; the memory store keeps the observed
        # rollout created before the bad span, on the model path too (its writes are not undone)
        assert asyncio.run(store.get_rollout_by_id("ro-trace-1")) is None
    assert asyncio.run(store.query_spans("ro-trace-1")).total == 0


class _DocumentsAdapter:
    """`add_observed_spans` carried out by `add_observed_span_documents`, for the conformance suite."""

    async def add_observed_spans(
        self, spans: Sequence[Span], *, new_rollout_metadata: dict[str, dict[str, Any]] | None = None
    ) -> list[Span]:
        pairs = [(span.model_dump(), None) for span in spans]
        await self.add_observed_span_documents(  # type: ignore[attr-defined]
            pairs, new_rollout_metadata=new_rollout_metadata, encode=orjson.dumps
        )
        ordered = sorted(pairs, key=lambda pair: pair[0]["start_time"] or 0.0)
        return [Span.model_validate(document) for document, _ in ordered]


class _SqliteThroughDocuments(_DocumentsAdapter, SqliteLightningStore):
    pass


class _MemoryThroughDocuments(_DocumentsAdapter, InMemoryLightningStore):
    pass


_OBSERVED_TESTS = {  # the suite's tests that store observed spans (any added later joins them)
    name
    for name in dir(StoreConformance)
    if name.startswith("test_") and "add_observed_spans" in inspect.getsource(getattr(StoreConformance, name))
}


class _ObservedConformance(StoreConformance):
    """Only the suite's observed-span tests (the rest do not touch the document path)."""


for _name in dir(StoreConformance):
    if _name.startswith("test_") and _name not in _OBSERVED_TESTS:
        setattr(_ObservedConformance, _name, None)


class TestSqliteDocumentsConformance(_ObservedConformance):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Any:
        return lambda **options: _SqliteThroughDocuments(tmp_path / "store.db", **options)


class TestMemoryDocumentsConformance(_ObservedConformance):
    @pytest.fixture
    def make_store(self) -> Any:
        return lambda **options: _MemoryThroughDocuments(**options)


def test_the_observed_conformance_tests_are_all_there() -> None:
    collected = {name for name in dir(_ObservedConformance) if callable(getattr(_ObservedConformance, name))}
    assert {name for name in collected if name.startswith("test_")} == _OBSERVED_TESTS
    assert {
        "test_observed_spans_create_their_rollout_and_number_in_start_order",
        "test_a_trace_rollout_ends_with_its_root_span",
        "test_a_process_rollout_ends_with_its_exit_span",
        "test_observed_spans_join_existing_attempts_and_refuse_strangers",
    } <= _OBSERVED_TESTS


# --- the route ---------------------------------------------------------------------------------


class _NotLifecycle(LightningStore):
    """A store that is not a `LifecycleStore` (as an HTTP-backed one is): it is given models."""

    def __init__(self, target: LightningStore) -> None:
        self.target = target
        self.calls: list[str] = []


def _forward(name: str) -> Any:
    def method(self: _NotLifecycle, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(name)
        return getattr(self.target, name)(*args, **kwargs)

    return method


for _method in LightningStore.__abstractmethods__:
    setattr(_NotLifecycle, _method, _forward(_method))
_NotLifecycle.__abstractmethods__ = frozenset()


def _post(server: ServingThread, body: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/traces", content=body, headers={"content-type": PROTOBUF})


def test_route_gives_other_stores_models_with_the_same_result(tmp_path: Path) -> None:
    body = body_of(sdk_request(), PROTOBUF)
    direct = SqliteLightningStore(tmp_path / "direct.db", clock=ManualClock(), watchdog_interval=None)
    backing = SqliteLightningStore(tmp_path / "proxied.db", clock=ManualClock(), watchdog_interval=None)
    proxy = _NotLifecycle(backing)
    try:
        for store in (direct, proxy):
            with ServingThread(create_app(ServerSettings(), store)) as running:
                assert _post(running, body).status_code == 200
        assert "add_observed_spans" in proxy.calls
    finally:
        asyncio.run(direct.close())
        asyncio.run(backing.close())
    assert rows(tmp_path / "proxied.db") == rows(tmp_path / "direct.db")
    assert len(rows(tmp_path / "direct.db")["spans"]) == 3


def test_route_refuses_an_overlong_rollout_id_in_one_line(tmp_path: Path) -> None:
    request = handmade_request()
    span = request.resource_spans[0].scope_spans[0].spans[2]
    span.attributes.extend(_key_values({"agl.rollout.id": "ro-" + "x" * 254}))
    store = SqliteLightningStore(tmp_path / "store.db", watchdog_interval=None)
    try:
        with ServingThread(create_app(ServerSettings(), store)) as running:
            response = _post(running, request.SerializeToString())
        assert response.status_code == 400
        body = RpcStatus.FromString(response.content)  # OTLP/HTTP's failure body, protobuf as the request
        assert body.code == 3 and "\n" not in body.message
        assert body.message == (
            "span '0405060708090a0b' ('own scope'): a rollout or attempt id is longer than 256 characters"
        )
        assert asyncio.run(store.query_rollouts()).total == 0
    finally:
        asyncio.run(store.close())


def test_a_decoding_error_after_good_spans_stores_nothing() -> None:
    request = handmade_request()
    request.resource_spans[1].scope_spans[0].spans[0].trace_id = b"short"
    documents = decode_documents(request.SerializeToString(), PROTOBUF)
    with pytest.raises(OtlpDecodeError, match=r"resource_spans\[1\]\.scope_spans\[0\]\.spans\[0\]\.trace_id must be"):
        asyncio.run(route._file(InMemoryLightningStore(watchdog_interval=None), documents, None))


@settings(max_examples=100, deadline=None)
@given(
    data=st.lists(
        st.tuples(
            st.sampled_from([0, 1]),  # resource
            st.sampled_from([bytes(range(1, 17)), bytes(range(2, 18))]),  # trace
            st.sampled_from([0, T0, T0 + 1_000]),  # start time (0: unknown)
            st.dictionaries(
                st.sampled_from(["agl.rollout.id", "agl.attempt.id", "agl.sequence_id", "other"]),
                st.one_of(st.sampled_from(["ro-x", "at-y", ""]), st.integers(-1, 9)),
                max_size=3,
            ),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_route_files_every_span_as_file_span_does(data: list[tuple[int, bytes, int, dict[str, Any]]]) -> None:
    resources = [
        ResourceSpans(resource=PbResource(attributes=_key_values({"service.name": "a"})), scope_spans=[ScopeSpans()]),
        ResourceSpans(
            resource=PbResource(attributes=_key_values({"agl.rollout.id": "ro-r", "agl.attempt.id": "at-r"})),
            scope_spans=[ScopeSpans()],
        ),
    ]
    for index, (resource, trace, start, attributes) in enumerate(data):
        resources[resource].scope_spans[0].spans.append(
            PbSpan(
                trace_id=trace,
                span_id=(index + 1).to_bytes(8, "big"),
                name="s",
                start_time_unix_nano=start,
                attributes=_key_values(attributes),
            )
        )
    body = ExportTraceServiceRequest(resource_spans=resources).SerializeToString()
    store = InMemoryLightningStore(watchdog_interval=None)
    filed, new_rollouts, _, _ = asyncio.run(route._file(store, decode_documents(body, PROTOBUF), None))
    expected_rollouts = {}
    for (document, _), span in zip(filed, decode_traces(body, PROTOBUF), strict=True):
        filing = file_span(span.attributes, span.resource_attributes, span.trace_id, span.start_time)
        attempt_id = filing.attempt_id or f"at-{filing.rollout_id.removeprefix('ro-')}"  # no such rollout yet
        assert (document["rollout_id"], document["attempt_id"], document["sequence_id"]) == (
            filing.rollout_id,
            attempt_id,
            filing.sequence_id,
        )
        if filing.new_rollout_metadata is not None:
            expected_rollouts[filing.rollout_id] = filing.new_rollout_metadata
    assert new_rollouts == expected_rollouts


def test_the_collector_is_paused_for_a_batch_only() -> None:
    assert gc.isenabled()
    with route._collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(OtlpDecodeError), route._collector_paused():
        raise OtlpDecodeError("bad body")
    assert gc.isenabled()
    gc.disable()  # paused by someone else: left paused
    try:
        with route._collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_json_bytes_value_that_is_not_ascii_is_a_decode_error() -> None:
    """Found by hypothesis: base64 raised ValueError (not binascii.Error) for a non-ASCII string,
    which escaped the decoder (a 500 from the server instead of a 400)."""
    span = {"traceId": "01" * 16, "spanId": "01" * 8, "attributes": [{"key": "k", "value": {"bytesValue": "\x80"}}]}
    body = orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})
    with pytest.raises(OtlpDecodeError, match=r"attributes\[0\]\.value\.bytesValue must be base64, got a string"):
        list(decode_documents(body, JSON))
