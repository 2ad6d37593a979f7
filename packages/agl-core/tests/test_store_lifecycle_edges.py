"""Resources, the "latest" alias, workers handed an attempt, waits and batch values: every backend
answers alike, with a typed error that leaves the store unchanged."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agl.core.errors import InvalidInput
from agl.core.server import ServerSettings, create_app
from agl.core.store import InMemoryLightningStore, SqliteLightningStore
from agl.core.store.base import LightningStore
from agl.core.testing.server import ServingThread

PROMPT = {"p": {"resource_type": "prompt_template", "template": "x"}}
LLM = {"resource_type": "llm", "endpoint": "http://model", "model": "m"}


def _span(rollout_id: str, attempt_id: str) -> dict[str, Any]:
    ids = {"rollout_id": rollout_id, "attempt_id": attempt_id, "trace_id": "1" * 32, "span_id": "2" * 16}
    return {**ids, "sequence_id": 1, "name": "step"}


async def _workers(store: LightningStore) -> list[tuple[str, str, str | None]]:
    return [(w.worker_id, w.status, w.current_attempt_id) for w in await store.query_workers()]


# --- resources -------------------------------------------------------------------------------


async def test_latest_is_the_latest_resources_on_every_backend(store: LightningStore) -> None:
    """Over HTTP the route ``/resources/latest`` answered the latest resources, in process the
    resources stored under the id "latest", which only the in-process backends could write."""
    assert await store.get_resources_by_id("latest") is None
    await store.update_resources("a", PROMPT)
    newest = await store.update_resources("b", PROMPT)
    assert await store.get_resources_by_id("latest") == newest == await store.get_latest_resources()
    before = await store.statistics()
    with pytest.raises(InvalidInput, match=r"^resources_id 'latest' is reserved: it names the latest resources$"):
        await store.update_resources("latest", PROMPT)
    assert await store.statistics() == before
    assert await store.get_latest_resources() == newest


Resources = Callable[[], Any]
NOT_JSON: list[tuple[str, Resources]] = [
    (
        "resources holds NaN or Infinity, which are not JSON",
        lambda: {"m": {**LLM, "sampling_parameters": {"t": math.nan}}},
    ),
    (
        "resources is not JSON-serialisable: Unable to serialize",
        lambda: {"m": {**LLM, "sampling_parameters": {"t": object()}}},
    ),
    ("resources is not JSON-serialisable: .*surrogates not allowed", lambda: {"p\ud800": PROMPT["p"]}),
    (r"invalid resources: 1\.\[key\]: Input should be a valid string", lambda: {1: PROMPT["p"]}),
    ("invalid resources: value: Input should be a valid dictionary", lambda: ["p"]),
]


@pytest.mark.parametrize(("message", "resources"), NOT_JSON)
async def test_resources_that_are_not_json_are_refused_alike(
    store: LightningStore, message: str, resources: Resources
) -> None:
    """Memory kept NaN and objects, SQLite wrote NaN as null and crashed on an object, the HTTP
    client failed on NaN with an untyped error, sent an integer name as text, and worded the rest
    as the server's request validation."""
    first = await store.update_resources("r", PROMPT)
    before = await store.statistics()
    for write in (lambda: store.add_resources(resources()), lambda: store.update_resources("r", resources())):
        with pytest.raises(InvalidInput, match=f"^{message}"):
            await write()
    assert await store.statistics() == before
    assert await store.get_latest_resources() == first


async def test_resources_come_back_as_they_are_stored(store: LightningStore) -> None:
    """Memory handed back tuples and sets as given; SQLite returned them so, then lists once read."""
    added = await store.add_resources({"m": {**LLM, "sampling_parameters": {"stop": ("a", "b"), "ids": {3}}}})
    assert added.resources["m"].sampling_parameters == {"stop": ["a", "b"], "ids": [3]}  # type: ignore[union-attr]
    assert await store.get_resources_by_id(added.resources_id) == added


# --- spans and the "latest" attempt ------------------------------------------------------------


SpanCall = Callable[[LightningStore, str], Awaitable[Any]]
LATEST_SPAN_CALLS: list[SpanCall] = [
    lambda s, r: s.add_span(_span(r, "latest")),  # type: ignore[arg-type]
    lambda s, r: s.add_many_spans([_span(r, "latest")]),  # type: ignore[list-item]
    lambda s, r: s.add_observed_spans([_span(r, "latest")]),  # type: ignore[list-item]
]


@pytest.mark.parametrize("call", LATEST_SPAN_CALLS)
async def test_a_span_must_name_its_attempt_by_id(store: LightningStore, call: SpanCall) -> None:
    """The alias "latest" passed the attempt check, then the span was filed under an attempt called "latest"
    that no query of the rollout's spans found."""
    claimed = await store.start_rollout(1)
    before = await store.statistics()
    with pytest.raises(InvalidInput, match=r"^span '2{16}' \('step'\) must name its attempt by id, not 'latest'$"):
        await call(store, claimed.rollout_id)
    assert await store.statistics() == before


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_otlp_spans_must_name_their_attempt_by_id(kind: str, tmp_path: Path) -> None:
    """OTLP ingest created an observed rollout with an attempt called "latest"."""
    opened = InMemoryLightningStore() if kind == "memory" else SqliteLightningStore(tmp_path / "otlp.db")
    identity = [("agl.rollout.id", "ro-otlp"), ("agl.attempt.id", "latest")]
    span = {
        "traceId": "1" * 32,
        "spanId": "2" * 16,
        "name": "step",
        "startTimeUnixNano": "1",
        "endTimeUnixNano": "2",
        "attributes": [{"key": key, "value": {"stringValue": value}} for key, value in identity],
    }
    body = {"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": [span]}]}]}
    with ServingThread(create_app(ServerSettings(), opened)) as server:
        answer = httpx.post(f"{server.url}/v1/traces", json=body)
        statistics = httpx.get(f"{server.url}/v1/agl/statistics").json()
    assert answer.status_code == 422
    assert answer.json()["message"] == "observed spans of rollout 'ro-otlp' must name their attempt by id, not 'latest'"
    assert statistics["rollouts_by_status"] == {}


# --- workers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("successor", ["w2", None])
async def test_a_worker_that_gives_up_an_attempt_is_released(store: LightningStore, successor: str | None) -> None:
    """update_attempt(worker_id=...) left the first worker busy with the attempt, for ever."""
    await store.enqueue_rollout(1)
    claimed = await store.dequeue_rollout(worker_id="w1")
    assert claimed is not None
    attempt_id = claimed.attempt.attempt_id
    await store.update_attempt(claimed.rollout_id, attempt_id, worker_id=successor)
    held = [("w1", "idle", None)] + ([("w2", "busy", attempt_id)] if successor else [])
    assert await _workers(store) == held
    await store.update_attempt(claimed.rollout_id, attempt_id, status="succeeded")
    assert await _workers(store) == [(w, "idle", None) for w, _, _ in held]


async def test_a_worker_keeps_its_other_attempt_when_one_is_handed_on(store: LightningStore) -> None:
    await store.enqueue_rollout(1)
    await store.enqueue_rollout(2)
    first = await store.dequeue_rollout(worker_id="w1")
    second = await store.dequeue_rollout(worker_id="w1")
    assert first is not None and second is not None
    await store.update_attempt(second.rollout_id, "latest", worker_id="w2")
    assert await _workers(store) == [
        ("w1", "busy", first.attempt.attempt_id),
        ("w2", "busy", second.attempt.attempt_id),
    ]


async def test_naming_an_attempts_own_worker_again_changes_nothing(store: LightningStore) -> None:
    """A repeated (retried) update moved the worker's dequeue and busy times."""
    await store.enqueue_rollout(1)
    claimed = await store.dequeue_rollout(worker_id="w1")
    assert claimed is not None
    before = list(await store.query_workers())
    await store.update_attempt(claimed.rollout_id, "latest", worker_id="w1")
    assert list(await store.query_workers()) == before


# --- ids, waits and values ---------------------------------------------------------------------


Call = Callable[[LightningStore], Awaitable[Any]]
SURROGATE_CALLS: list[tuple[str, Call]] = [
    ("rollout_id", lambda s: s.get_rollout_by_id("ro-\ud800")),
    ("worker_id", lambda s: s.update_worker("w\ud800")),
    ("worker_id", lambda s: s.dequeue_rollout(worker_id="w\ud800")),
    ("resources_id", lambda s: s.update_resources("rs-\ud800", PROMPT)),
    ("resources_id", lambda s: s.get_resources_by_id("rs-\ud800")),
    ("rollout_id_in value", lambda s: s.query_rollouts(rollout_id_in=["ro-\ud800"])),
]


@pytest.mark.parametrize(("what", "call"), SURROGATE_CALLS)
async def test_an_id_with_a_lone_surrogate_is_refused(store: LightningStore, what: str, call: Call) -> None:
    """Memory kept such an id; SQLite and the HTTP client raised an untyped UnicodeEncodeError."""
    await store.enqueue_rollout(1)
    before = await store.statistics()
    with pytest.raises(InvalidInput, match=rf"^{what} '.+' holds a lone surrogate, which UTF-8 cannot carry$"):
        await call(store)
    assert await store.statistics() == before


@pytest.mark.parametrize(
    ("rollout_ids", "message"),
    [
        ("ro-1", "rollout_ids must be a list of ids, got str"),
        (None, "rollout_ids must be a list of ids, got NoneType"),
        ([7], "rollout_id must be a string, got int"),
    ],
)
async def test_wait_for_rollouts_takes_a_list_of_ids(store: LightningStore, rollout_ids: Any, message: str) -> None:
    """A string was read as its letters ("rollout 'r' not found"); None was a TypeError."""
    with pytest.raises(InvalidInput, match=f"^{message}$"):
        await store.wait_for_rollouts(rollout_ids, timeout=0)


NOT_JSON_INPUT = "rollout input holds NaN or Infinity, which are not JSON"
NOT_JSON_METADATA = "rollout metadata holds NaN or Infinity, which are not JSON"
BATCH_CALLS: list[tuple[str, Call]] = [
    (NOT_JSON_INPUT, lambda s: s.enqueue_many_rollouts([{"input": math.nan}])),  # type: ignore[list-item]
    ("rollout input is not JSON-serialisable", lambda s: s.enqueue_many_rollouts([{"input": object()}])),  # type: ignore[list-item]
    (NOT_JSON_METADATA, lambda s: s.enqueue_many_rollouts([{"input": 1, "metadata": {"x": math.inf}}])),  # type: ignore[list-item]
    (NOT_JSON_METADATA, lambda s: s.add_observed_spans([_span("o", "a")], new_rollout_metadata={"o": {"x": math.nan}})),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("message", "call"), BATCH_CALLS)
async def test_batches_refuse_values_that_are_not_json(store: LightningStore, message: str, call: Call) -> None:
    """Over HTTP a batch's NaN was enqueued as null, an object raised pydantic's error, and observed
    rollouts' NaN metadata came back as an untyped "not valid JSON" error."""
    with pytest.raises(InvalidInput, match=f"^{message}"):
        await call(store)
    assert (await store.statistics()).rollouts == 0


OBJECT_CALLS: list[tuple[str, Callable[[LightningStore, str], Awaitable[Any]]]] = [
    ("rollout metadata", lambda s, r: s.update_rollout(r, metadata=[1])),  # type: ignore[arg-type]
    ("attempt metadata", lambda s, r: s.update_attempt(r, "latest", metadata=[1])),  # type: ignore[arg-type]
    ("heartbeat stats", lambda s, r: s.update_worker("w1", heartbeat_stats=[1])),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("what", "call"), OBJECT_CALLS)
async def test_a_merge_value_that_is_not_an_object_is_worded_alike(
    store: LightningStore, what: str, call: Callable[[LightningStore, str], Awaitable[Any]]
) -> None:
    """Over HTTP these were the server's request validation, worded apart from the in-process error."""
    claimed = await store.start_rollout(1, worker_id="w1")
    before = (await store.statistics(), list(await store.query_workers()))
    with pytest.raises(InvalidInput, match=rf"^{what} must be an object, got list$"):
        await call(store, claimed.rollout_id)
    assert (await store.statistics(), list(await store.query_workers())) == before
