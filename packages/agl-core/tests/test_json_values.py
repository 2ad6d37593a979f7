"""NaN and infinities, which JSON has no value for, are refused alike by every backend in process."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agl.core.errors import InvalidInput
from agl.core.store.base import LightningStore

Call = Callable[[LightningStore, str, str], Awaitable[Any]]
"""A store call given the store, a running rollout's id and its attempt's."""
CALLS: list[tuple[str, Call]] = [
    ("rollout input", lambda s, r, a: s.enqueue_rollout({"x": [1.0, math.nan]})),
    ("rollout input", lambda s, r, a: s.start_rollout(math.inf)),
    ("rollout metadata", lambda s, r, a: s.enqueue_rollout(1, metadata={"score": -math.inf})),
    ("rollout input", lambda s, r, a: s.update_rollout(r, input={"x": math.nan})),
    ("rollout metadata", lambda s, r, a: s.update_rollout(r, metadata={"x": math.inf})),
    ("attempt metadata", lambda s, r, a: s.update_attempt(r, a, metadata={"x": -math.inf})),
    ("heartbeat stats", lambda s, r, a: s.update_worker("w1", heartbeat_stats={"gpu": math.nan})),
]


@pytest.mark.parametrize(("what", "call"), CALLS)
async def test_nan_and_infinity_are_refused_naming_the_field(store: LightningStore, what: str, call: Call) -> None:
    await store.enqueue_rollout({"x": 1})
    claimed = await store.dequeue_rollout(worker_id="w1")
    assert claimed is not None
    before = await store.statistics()
    with pytest.raises(InvalidInput, match=f"^{what} holds NaN or Infinity, which are not JSON$"):
        await call(store, claimed.rollout_id, claimed.attempt.attempt_id)
    assert await store.statistics() == before
    rollout = await store.get_rollout_by_id(claimed.rollout_id)
    attempt = await store.get_latest_attempt(claimed.rollout_id)
    assert rollout is not None and attempt is not None
    assert (rollout.input, rollout.metadata, attempt.metadata) == ({"x": 1}, {}, {})


FLOAT_CALLS: list[tuple[str, Call]] = [
    ("last_heartbeat_time", lambda s, r, a: s.update_attempt(r, a, last_heartbeat_time=math.nan)),
    ("timeout_seconds", lambda s, r, a: s.enqueue_rollout(1, config={"timeout_seconds": math.inf})),
    ("unresponsive_seconds", lambda s, r, a: s.update_rollout(r, config={"unresponsive_seconds": math.nan})),
    ("start_time", lambda s, r, a: s.add_span(_span(r, a, start_time=math.inf))),
    ("timestamp", lambda s, r, a: s.add_span(_span(r, a, events=[{"name": "e", "timestamp": math.nan}]))),
]


def _span(rollout_id: str, attempt_id: str, **fields: Any) -> dict[str, Any]:
    ids = {"rollout_id": rollout_id, "attempt_id": attempt_id, "trace_id": "1" * 32, "span_id": "2" * 16}
    return {**ids, "sequence_id": 1, "name": "step", **fields}


@pytest.mark.parametrize(("field", "call"), FLOAT_CALLS)
async def test_a_float_field_refuses_nan_and_infinity(store: LightningStore, field: str, call: Call) -> None:
    claimed = await store.start_rollout({"x": 1})
    before = await store.statistics()
    refused = rf"^invalid \w+: (config\.|events\.0\.)?{field}: Input should be a finite number"
    with pytest.raises(InvalidInput, match=refused):
        await call(store, claimed.rollout_id, claimed.attempt.attempt_id)
    assert await store.statistics() == before
    attempt = await store.get_latest_attempt(claimed.rollout_id)
    assert attempt is not None and attempt.last_heartbeat_time == claimed.attempt.last_heartbeat_time


async def test_a_nan_wait_timeout_is_refused_rather_than_waited_on_forever(store: LightningStore) -> None:
    rollout = await store.enqueue_rollout(1)
    with pytest.raises(InvalidInput, match=r"^wait timeout must be a number of seconds or None, not NaN$"):
        await store.wait_for_rollouts([rollout.rollout_id], timeout=math.nan)
