"""Unusual ids and wrongly typed arguments: every backend answers alike, with a typed error that
leaves the store unchanged, and ids the HTTP API carries in its paths go through whole."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agl.core.errors import InvalidInput, RolloutNotFound
from agl.core.store.base import LightningStore

PROMPT = {"p": {"resource_type": "prompt_template", "template": "x"}}


@pytest.mark.parametrize("odd", ["a/b", "a%2Fb", "/", "a?b#c%", "50% off", "ü ω", ".."])
async def test_ids_with_url_characters_work_in_every_call(store: LightningStore, odd: str) -> None:
    """Over HTTP these ids travel in the path: a "/" in one split it, so the route was not found."""
    await store.enqueue_rollout(1, rollout_id=odd)
    rollout = await store.get_rollout_by_id(odd)
    assert rollout is not None and rollout.rollout_id == odd
    assert (await store.update_rollout(odd, metadata={"k": 1})).metadata == {"k": 1}
    claimed = await store.start_attempt(odd, worker_id=odd)
    assert [a.attempt_id for a in await store.query_attempts(odd)] == [claimed.attempt.attempt_id]
    latest = await store.get_latest_attempt(odd)
    assert latest is not None and latest.worker_id == odd
    assert (await store.update_attempt(odd, "latest", metadata={"k": 2})).metadata == {"k": 2}
    await store.get_next_span_sequence_id(odd, claimed.attempt.attempt_id)
    assert list(await store.query_spans(odd, "latest")) == []
    worker = await store.update_worker(odd, heartbeat_stats={"gpu": 1})
    assert (worker.worker_id, worker.status) == (odd, "busy")
    await store.update_resources(odd, PROMPT)
    resources = await store.get_resources_by_id(odd)
    assert resources is not None and resources.resources_id == odd


async def test_an_empty_id_is_looked_up_not_misrouted(store: LightningStore) -> None:
    """Over HTTP an empty id left ``//`` or a trailing slash: a 404 of the router, or a redirect
    whose empty body the client failed to decode."""
    assert await store.get_rollout_by_id("") is None
    assert await store.get_latest_attempt("") is None
    assert await store.get_resources_by_id("") is None
    assert list(await store.query_attempts("")) == []
    with pytest.raises(RolloutNotFound, match=r"^rollout '' not found$"):
        await store.update_rollout("", metadata={"k": 1})
    with pytest.raises(RolloutNotFound, match=r"^rollout '' not found$"):
        await store.start_attempt("")
    assert (await store.update_worker("")).worker_id == ""


async def test_an_empty_client_chosen_rollout_id_is_refused(store: LightningStore) -> None:
    """The HTTP client took ``""`` for "no id" and enqueued under a new one."""
    with pytest.raises(InvalidInput, match="rollout_id: String should have at least 1 character"):
        await store.enqueue_rollout(1, rollout_id="")
    with pytest.raises(InvalidInput, match="rollout_id: String should have at least 1 character"):
        await store.start_rollout(1, rollout_id="")
    assert (await store.statistics()).rollouts == 0


Call = Callable[[LightningStore, str], Awaitable[Any]]
"""A store call given the store and a queued rollout's id."""
ID_CALLS: list[tuple[str, Call]] = [
    ("worker_id", lambda s, r: s.update_worker(None)),  # type: ignore[arg-type]
    ("worker_id", lambda s, r: s.update_worker(7)),  # type: ignore[arg-type]
    ("worker_id", lambda s, r: s.dequeue_rollout(worker_id=7)),  # type: ignore[arg-type]
    ("worker_id", lambda s, r: s.start_attempt(r, worker_id=7)),  # type: ignore[arg-type]
    ("worker_id", lambda s, r: s.start_rollout(1, worker_id=["w"])),  # type: ignore[arg-type]
    ("resources_id", lambda s, r: s.update_resources(None, PROMPT)),  # type: ignore[arg-type]
    ("resources_id", lambda s, r: s.get_resources_by_id(7)),  # type: ignore[arg-type]
    ("rollout_id", lambda s, r: s.get_rollout_by_id(7)),  # type: ignore[arg-type]
    ("rollout_id", lambda s, r: s.update_rollout(None, metadata={"k": 1})),  # type: ignore[arg-type]
    ("rollout_id", lambda s, r: s.query_attempts(7)),  # type: ignore[arg-type]
    ("attempt_id", lambda s, r: s.get_next_span_sequence_id(r, None)),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("what", "call"), ID_CALLS)
async def test_an_id_that_is_not_text_is_refused(store: LightningStore, what: str, call: Call) -> None:
    """In process pydantic's report escaped untyped; over HTTP ``str(None)`` became the id "None"."""
    rollout = await store.enqueue_rollout(1)
    before = await store.statistics()
    with pytest.raises(InvalidInput, match=rf"^{what} must be a string, got \w+$"):
        await call(store, rollout.rollout_id)
    assert await store.statistics() == before
    assert list(await store.query_workers()) == []


PAGE_CALLS: list[tuple[str, Call]] = [
    ("limit", lambda s, r: s.query_rollouts(limit=1.5)),  # type: ignore[arg-type]
    ("limit", lambda s, r: s.query_workers(limit="3")),  # type: ignore[arg-type]
    ("limit", lambda s, r: s.query_resources(limit=True)),
    ("offset", lambda s, r: s.query_attempts(r, offset=None)),  # type: ignore[arg-type]
    ("offset", lambda s, r: s.query_spans(r, offset=2.0)),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("what", "call"), PAGE_CALLS)
async def test_page_bounds_must_be_integers(store: LightningStore, what: str, call: Call) -> None:
    """In process a float or text crashed the slice or the SQL binding; a bool passed as 0 or 1."""
    rollout = await store.enqueue_rollout(1)
    with pytest.raises(InvalidInput, match=rf"^{what} must be an integer between 0 and \d+"):
        await call(store, rollout.rollout_id)


FILTER_CALLS: list[tuple[str, Call]] = [
    ("invalid status_in value 's'", lambda s, r: s.query_rollouts(status_in="succeeded")),  # type: ignore[arg-type]
    ("invalid status_in value 'done'", lambda s, r: s.query_rollouts(status_in=["done"])),  # type: ignore[list-item]
    ("invalid status_in value 'lost'", lambda s, r: s.query_attempts(r, status_in=["lost"])),  # type: ignore[list-item]
    ("invalid status_in value 'gone'", lambda s, r: s.query_workers(status_in=["gone"])),  # type: ignore[list-item]
    ("rollout_id_in value must be a string", lambda s, r: s.query_rollouts(rollout_id_in=[7])),  # type: ignore[list-item]
    ("invalid rollout mode 'eval'", lambda s, r: s.query_rollouts(mode="eval")),  # type: ignore[arg-type]
    ("resources_id must be a string", lambda s, r: s.query_rollouts(resources_id=["x"])),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("message", "call"), FILTER_CALLS)
async def test_query_filters_are_checked_alike(store: LightningStore, message: str, call: Call) -> None:
    """The server refused these; in process an unknown status matched nothing, a string was read
    as its letters, and SQLite could not bind a list."""
    if "'s'" in message:
        message = "status_in must be a list, got str"
    rollout = await store.enqueue_rollout(1)
    with pytest.raises(InvalidInput, match=f"^{message}"):
        await call(store, rollout.rollout_id)


async def test_a_config_that_is_not_an_object_is_refused(store: LightningStore) -> None:
    """The HTTP client crashed with an AttributeError."""
    rollout = await store.enqueue_rollout(1)
    with pytest.raises(InvalidInput, match=r"^rollout config must be an object, got str$"):
        await store.update_rollout(rollout.rollout_id, config="fast")  # type: ignore[arg-type]
    assert await store.get_rollout_by_id(rollout.rollout_id) == rollout


async def test_a_batch_item_that_is_not_a_request_is_refused_whole(store: LightningStore) -> None:
    """A TypeError from ``**item`` before."""
    with pytest.raises(InvalidInput, match=r"^a rollout request must be an object, got int$"):
        await store.enqueue_many_rollouts([{"input": 1}, 5])  # type: ignore[list-item]
    assert (await store.statistics()).rollouts == 0


@pytest.mark.parametrize("timeout", ["5", True, [1]])
async def test_a_wait_timeout_that_is_not_a_number_is_refused(store: LightningStore, timeout: Any) -> None:
    rollout = await store.enqueue_rollout(1)
    with pytest.raises(InvalidInput, match=r"^wait timeout must be a number of seconds or None, got \w+$"):
        await store.wait_for_rollouts([rollout.rollout_id], timeout=timeout)
