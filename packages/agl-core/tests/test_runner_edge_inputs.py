"""Agents of unusual shapes and rewards of unusual values, through a real runner on a real store.

Tracing: conftest's `traced_sqlite_store` (one exporter for the module, each test's own SQLite store).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from agl.core.agent import rollout
from agl.core.runner import Runner
from agl.core.store.base import LightningStore
from agl.core.tracing import emitters, run_in_context, semconv
from agl.core.tracing.context import current_rollout
from agl.core.tracing.emitters import emit_reward

LIMIT = 30.0


@pytest.fixture
def store(traced_sqlite_store: LightningStore) -> LightningStore:
    return traced_sqlite_store


async def run_one(agent: Any, store: LightningStore) -> tuple[Any, list[float]]:
    """The attempt and the ``agl.reward`` values of one rollout of ``agent``."""
    rollout_id = (await store.enqueue_rollout({"q": 1})).rollout_id
    async with asyncio.timeout(LIMIT):
        assert await Runner(agent, store).run(until_empty=True) == 1
    attempt = await store.get_latest_attempt(rollout_id)
    spans = await store.query_spans(rollout_id)
    return attempt, [span.attributes[semconv.REWARD] for span in spans if semconv.REWARD in span.attributes]


class Judge:
    """An agent as an object whose ``__call__`` is async."""

    async def __call__(self, task: Any, scale: float = 1.0) -> float:
        await asyncio.sleep(0)
        return 0.5 * scale


async def test_an_object_with_an_async_call_is_an_async_agent_named_after_its_class(store: LightningStore) -> None:
    for function, reward in ((Judge(), 0.5), (functools.partial(Judge(), scale=2.0), 1.0)):
        agent = rollout(function)
        assert agent.is_async and agent.name == "Judge"
        attempt, rewards = await run_one(agent, store)
        assert attempt.status == "succeeded", attempt.metadata
        assert rewards == [reward]


def test_generator_agents_are_refused_when_decorated() -> None:
    async def streams(task: Any) -> Any:
        yield 1.0

    def steps(task: Any) -> Any:
        yield 1.0

    for function in (streams, steps, functools.partial(steps)):
        with pytest.raises(TypeError, match="is a generator; an agent returns its reward"):
            rollout(function)


@pytest.mark.parametrize("value", [math.nan, -math.inf, 10**400], ids=["nan", "-inf", "10**400"])
async def test_an_agent_that_emits_a_reward_no_store_keeps_fails_instead_of_losing_it(
    store: LightningStore, value: Any
) -> None:
    @rollout
    def agent(task: Any) -> None:
        emit_reward({"correct": value, "brevity": 1.0}, primary="brevity")

    attempt, rewards = await run_one(agent, store)
    assert attempt.status == "failed" and "a reward must be a finite number" in attempt.metadata["error"]
    assert rewards == []


async def test_an_agent_cancelled_from_inside_fails_as_an_agent_error_not_as_a_stopped_runner(
    store: LightningStore,
) -> None:
    @rollout
    async def agent(task: Any) -> float:
        asyncio.current_task().cancel()  # type: ignore[union-attr]  # as a library it awaits might
        await asyncio.sleep(0)
        return 1.0

    rollout_id = (await store.enqueue_rollout({"q": 1})).rollout_id
    async with asyncio.timeout(LIMIT):
        assert await Runner(agent, store).run(until_empty=True) == 1
    attempt = await store.get_latest_attempt(rollout_id)
    assert attempt is not None and attempt.status == "failed"
    assert attempt.metadata["error"].startswith("AgentCancelled: "), attempt.metadata
    [exception] = [span for span in await store.query_spans(rollout_id) if span.name == "agl.exception"]
    assert exception.events[0].attributes["exception.type"].endswith("AgentCancelled")


async def test_threads_and_pool_tasks_an_agent_starts_carry_its_rollout(store: LightningStore) -> None:
    """An agent's own threads need no `run_in_context`: their rewards are the rollout's."""

    @rollout
    def agent(task: Any) -> None:
        plain = threading.Thread(target=emit_reward, args=(0.5,))
        plain.start()
        plain.join()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(emit_reward, [0.25, 0.125]))

    attempt, rewards = await run_one(agent, store)
    assert attempt.status == "succeeded" and sorted(rewards) == [0.125, 0.25, 0.5]


async def test_a_reward_from_a_thread_started_outside_the_rollout_is_flagged_not_silently_misfiled(
    store: LightningStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread started before the rollout (a long-lived worker) does not have its context: what it
    emits while the rollout runs goes under the process's rollout, with a warning naming the remedy."""
    monkeypatch.setattr(emitters, "_warned", set())
    go, done = threading.Event(), threading.Event()

    def long_lived() -> None:
        go.wait()
        emit_reward(0.5)
        done.set()

    def warnings() -> list[logging.LogRecord]:
        return [record for record in caplog.records if record.name == emitters.__name__]

    @rollout
    def agent(task: Any) -> None:
        carried = threading.Thread(target=run_in_context(emit_reward), args=(1.0,))
        carried.start()
        carried.join()
        assert not warnings()
        go.set()
        done.wait(LIMIT)

    worker = threading.Thread(target=long_lived)
    worker.start()
    with caplog.at_level(logging.WARNING, logger=emitters.__name__):
        attempt, rewards = await run_one(agent, store)
    worker.join()
    assert attempt.status == "succeeded" and rewards == [1.0]
    [warning] = warnings()
    assert "emit_reward ran outside any rollout" in warning.getMessage()
    assert "run_in_context" in warning.getMessage()


async def test_a_pool_worker_started_in_a_rollout_does_not_keep_it_for_later_tasks(store: LightningStore) -> None:
    """A pool outlives the rollout whose task started its worker thread: each task brings its own
    context, so one submitted later from outside any rollout is not filed under that rollout."""
    pool = ThreadPoolExecutor(1)

    @rollout
    def agent(task: Any) -> None:
        assert pool.submit(current_rollout).result() is not None  # starts the worker, inside the rollout

    try:
        attempt, _ = await run_one(agent, store)
        assert attempt.status == "succeeded", attempt.metadata
        assert pool.submit(current_rollout).result() is None
    finally:
        pool.shutdown()
