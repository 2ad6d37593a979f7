"""The store conformance suite: the behaviour every `LightningStore` backend must show.

A backend joins by subclassing, in a test module::

    class TestMyStore(StoreConformance):
        @pytest.fixture
        def make_store(self, tmp_path):
            def make(**options):           # clock=, watchdog_interval=, max_span_bytes=
                return MyStore(tmp_path / "x", **options)
            return make

Stores are built with a `ManualClock` and no watchdog thread, so deadline tests call
``check_deadlines()`` at chosen times; one test runs the real watchdog thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agl.core.errors import AttemptNotFound, InvalidInput, InvalidTransition, RolloutNotFound
from agl.core.ids import sequence_clock
from agl.core.store.base import LightningStore
from agl.core.testing.clock import ManualClock
from agl.core.types import LLM, PromptTemplate, RolloutConfig, RolloutRequest, Span
from agl.core.types.spans import MAX_INT64

StoreFactory = Callable[..., LightningStore]


def make_span(rollout_id: str, attempt_id: str, sequence_id: int, name: str = "step", **attributes: Any) -> Span:
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=sequence_id,
        trace_id="0" * 31 + "1",
        span_id=f"{sequence_id:016x}",
        name=name,
        attributes=attributes,
        start_time=float(sequence_id),
        end_time=float(sequence_id) + 0.5,
    )


async def rollout_status(store: LightningStore, rollout_id: str) -> str:
    rollout = await store.get_rollout_by_id(rollout_id)
    assert rollout is not None, rollout_id
    return rollout.status


async def attempt_status(store: LightningStore, rollout_id: str) -> str:
    attempt = await store.get_latest_attempt(rollout_id)
    assert attempt is not None, rollout_id
    return attempt.status


class StoreConformance:
    """Every test here runs against each backend that subclasses this class."""

    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock()

    @pytest.fixture
    async def store(self, make_store: StoreFactory, clock: ManualClock) -> AsyncIterator[LightningStore]:
        store = make_store(clock=clock, watchdog_interval=None)
        try:
            yield store
        finally:
            await store.close()

    async def _running(self, store: LightningStore, **config: Any) -> tuple[str, str]:
        """Enqueue, dequeue and start one rollout; return its rollout and attempt ids."""
        rollout = await store.enqueue_rollout({"task": 1}, config=RolloutConfig(**config) if config else None)
        claimed = await store.dequeue_rollout(worker_id="w1")
        assert claimed is not None and claimed.rollout_id == rollout.rollout_id
        await store.update_attempt(rollout.rollout_id, claimed.attempt.attempt_id, status="running")
        return rollout.rollout_id, claimed.attempt.attempt_id

    # --- the queue ------------------------------------------------------------------------
    async def test_enqueue_creates_a_queuing_rollout(self, store: LightningStore, clock: ManualClock) -> None:
        rollout = await store.enqueue_rollout({"q": "2+2"}, mode="train", metadata={"k": "v"})
        assert rollout.rollout_id.startswith("ro-")
        assert (rollout.status, rollout.mode, rollout.start_time) == ("queuing", "train", clock())
        assert await store.get_rollout_by_id(rollout.rollout_id) == rollout
        assert await store.get_rollout_by_id("ro-missing") is None
        assert await store.get_latest_attempt(rollout.rollout_id) is None

    async def test_queue_is_first_in_first_out(self, store: LightningStore) -> None:
        ids = [(await store.enqueue_rollout(i)).rollout_id for i in range(5)]
        claimed = [await store.dequeue_rollout() for _ in ids]
        assert [c.rollout_id for c in claimed if c] == ids
        assert await store.dequeue_rollout() is None

    async def test_dequeue_creates_the_first_attempt(self, store: LightningStore) -> None:
        rollout = await store.enqueue_rollout("x")
        claimed = await store.dequeue_rollout(worker_id="w1")
        assert claimed is not None
        assert claimed.status == "preparing"
        attempt = claimed.attempt
        assert attempt.attempt_id.startswith("at-")
        assert (attempt.sequence_id, attempt.status, attempt.worker_id) == (1, "preparing", "w1")
        assert await store.get_latest_attempt(rollout.rollout_id) == attempt
        assert await rollout_status(store, rollout.rollout_id) == "preparing"

    async def test_enqueue_many_keeps_order_in_one_call(self, store: LightningStore) -> None:
        made = await store.enqueue_many_rollouts([RolloutRequest(input=i, mode="val") for i in range(4)])
        assert [r.input for r in made] == [0, 1, 2, 3]
        claimed = [await store.dequeue_rollout() for _ in range(4)]
        assert [c.input for c in claimed if c] == [0, 1, 2, 3]

    async def test_client_chosen_rollout_id_makes_enqueue_idempotent(self, store: LightningStore) -> None:
        first = await store.enqueue_rollout("a", rollout_id="ro-mine")
        again = await store.enqueue_rollout("b", rollout_id="ro-mine")
        assert again == first and again.input == "a"
        assert await store.dequeue_rollout() is not None
        assert await store.dequeue_rollout() is None

    async def test_start_rollout_skips_the_queue(self, store: LightningStore) -> None:
        started = await store.start_rollout({"q": 1}, worker_id="w9")
        assert (started.status, started.attempt.status, started.attempt.sequence_id) == ("preparing", "preparing", 1)
        assert await store.dequeue_rollout() is None

    async def test_start_rollout_with_a_chosen_id_is_idempotent(self, store: LightningStore) -> None:
        first = await store.start_rollout({"q": 1}, rollout_id="ro-chosen", worker_id="w1")
        again = await store.start_rollout({"q": 2}, rollout_id="ro-chosen", worker_id="w1")
        assert again.attempt == first.attempt and again.input == {"q": 1}
        assert len(await store.query_attempts("ro-chosen")) == 1

    async def test_start_attempt_needs_an_unfinished_rollout_without_an_active_attempt(
        self, store: LightningStore
    ) -> None:
        rollout_id, attempt_id = await self._running(store, max_attempts=3, retry_condition=("failed",))
        with pytest.raises(InvalidTransition):
            await store.start_attempt(rollout_id)
        await store.update_attempt(rollout_id, attempt_id, status="failed")
        assert await rollout_status(store, rollout_id) == "requeuing"
        second = await store.start_attempt(rollout_id)
        assert second.attempt.sequence_id == 2
        assert await store.dequeue_rollout() is None  # taken out of the queue
        await store.update_rollout(rollout_id, status="cancelled")
        with pytest.raises(InvalidTransition):
            await store.start_attempt(rollout_id)
        with pytest.raises(RolloutNotFound):
            await store.start_attempt("ro-missing")

    # --- updating rollouts ----------------------------------------------------------------
    async def test_update_rollout_fields_and_merge_metadata(self, store: LightningStore) -> None:
        rollout = await store.enqueue_rollout("a", metadata={"x": 1})
        updated = await store.update_rollout(
            rollout.rollout_id, input="b", mode="test", resources_id="rs-1", metadata={"y": 2}
        )
        assert (updated.input, updated.mode, updated.resources_id) == ("b", "test", "rs-1")
        assert updated.metadata == {"x": 1, "y": 2}
        assert await store.get_rollout_by_id(rollout.rollout_id) == updated
        assert (await store.dequeue_rollout()) is not None  # still queued

    async def test_update_rollout_rejects_bad_values(self, store: LightningStore) -> None:
        rollout = await store.enqueue_rollout("a")
        with pytest.raises(InvalidInput, match="bogus"):
            await store.update_rollout(rollout.rollout_id, status="bogus")
        with pytest.raises(InvalidInput, match="nonsense"):
            await store.update_rollout(rollout.rollout_id, mode="nonsense")
        with pytest.raises(InvalidTransition):
            await store.update_rollout(rollout.rollout_id, status="running")
        with pytest.raises(RolloutNotFound, match="ro-missing"):
            await store.update_rollout("ro-missing", metadata={})
        assert await store.get_rollout_by_id(rollout.rollout_id) == rollout

    async def test_cancelling_a_queued_rollout_takes_it_out_of_the_queue(
        self, store: LightningStore, clock: ManualClock
    ) -> None:
        rollout = await store.enqueue_rollout("a")
        clock.advance(3)
        cancelled = await store.update_rollout(rollout.rollout_id, status="cancelled")
        assert (cancelled.status, cancelled.end_time) == ("cancelled", clock())
        assert await store.dequeue_rollout() is None

    async def test_finishing_a_rollout_directly_ends_its_attempt(self, store: LightningStore) -> None:
        rollout_id, attempt_id = await self._running(store)
        await store.update_rollout(rollout_id, status="succeeded")
        attempt = await store.get_latest_attempt(rollout_id)
        assert attempt is not None and (attempt.attempt_id, attempt.status) == (attempt_id, "succeeded")

        other_id, _ = await self._running(store)
        await store.update_rollout(other_id, status="cancelled")
        assert await attempt_status(store, other_id) == "failed"

    async def test_requeuing_a_running_rollout_fails_its_attempt_and_queues_it_again(
        self, store: LightningStore
    ) -> None:
        rollout_id, attempt_id = await self._running(store)
        await store.update_rollout(rollout_id, status="requeuing")
        claimed = await store.dequeue_rollout()
        assert claimed is not None and claimed.rollout_id == rollout_id
        assert claimed.attempt.sequence_id == 2
        attempts = await store.query_attempts(rollout_id)
        assert (attempts[0].attempt_id, attempts[0].status) == (attempt_id, "failed")

    # --- attempts and their state machine -------------------------------------------------
    async def test_attempt_status_carries_over_to_the_rollout(self, store: LightningStore, clock: ManualClock) -> None:
        rollout = await store.enqueue_rollout("a")
        claimed = await store.dequeue_rollout(worker_id="w1")
        assert claimed is not None
        running = await store.update_attempt(rollout.rollout_id, "latest", status="running")
        assert running.status == "running"
        assert await rollout_status(store, rollout.rollout_id) == "running"
        clock.advance(2)
        done = await store.update_attempt(rollout.rollout_id, claimed.attempt.attempt_id, status="succeeded")
        assert (done.status, done.end_time) == ("succeeded", clock())
        finished = await store.get_rollout_by_id(rollout.rollout_id)
        assert finished is not None and (finished.status, finished.end_time) == ("succeeded", clock())

    async def test_terminal_states_are_sticky(self, store: LightningStore, clock: ManualClock) -> None:
        rollout_id, attempt_id = await self._running(store, timeout_seconds=5)
        clock.advance(6)
        assert await store.check_deadlines() == 1
        with pytest.raises(InvalidTransition, match="timeout"):
            await store.update_attempt(rollout_id, attempt_id, status="succeeded")
        assert await attempt_status(store, rollout_id) == "timeout"
        assert await rollout_status(store, rollout_id) == "failed"
        # Repeating the state it is in is not a change, so it is allowed.
        assert (await store.update_attempt(rollout_id, attempt_id, status="timeout")).status == "timeout"
        with pytest.raises(InvalidTransition):
            await store.update_rollout(rollout_id, status="succeeded")

    async def test_illegal_attempt_transition_raises_and_changes_nothing(self, store: LightningStore) -> None:
        rollout_id, attempt_id = await self._running(store)
        with pytest.raises(InvalidTransition, match="'running' to 'preparing'"):
            await store.update_attempt(rollout_id, attempt_id, status="preparing", metadata={"x": 1})
        attempt = await store.get_latest_attempt(rollout_id)
        assert attempt is not None and (attempt.status, attempt.metadata) == ("running", {})
        with pytest.raises(InvalidInput, match="bogus"):
            await store.update_attempt(rollout_id, attempt_id, status="bogus")

    async def test_attempts_are_addressed_by_id_or_latest(self, store: LightningStore) -> None:
        rollout_id, attempt_id = await self._running(store)
        _, other_attempt = await self._running(store)
        updated = await store.update_attempt(rollout_id, "latest", metadata={"k": 1}, last_heartbeat_time=7.0)
        assert (updated.attempt_id, updated.metadata, updated.last_heartbeat_time) == (attempt_id, {"k": 1}, 7.0)
        with pytest.raises(AttemptNotFound):
            await store.update_attempt(rollout_id, "at-missing", status="failed")
        with pytest.raises(AttemptNotFound):
            await store.update_attempt(rollout_id, other_attempt, status="failed")  # belongs to another rollout
        with pytest.raises(RolloutNotFound):
            await store.update_attempt("ro-missing", "latest", status="failed")
        queued = await store.enqueue_rollout("never started")
        with pytest.raises(AttemptNotFound):
            await store.update_attempt(queued.rollout_id, "latest", status="failed")

    async def test_failed_attempts_are_retried_up_to_max_attempts(self, store: LightningStore) -> None:
        rollout_id, attempt_id = await self._running(store, max_attempts=2, retry_condition=("failed",))
        await store.update_attempt(rollout_id, attempt_id, status="failed")
        assert await rollout_status(store, rollout_id) == "requeuing"
        retry = await store.dequeue_rollout()
        assert retry is not None and (retry.rollout_id, retry.attempt.sequence_id) == (rollout_id, 2)
        await store.update_attempt(rollout_id, retry.attempt.attempt_id, status="failed")
        assert await rollout_status(store, rollout_id) == "failed"
        assert await store.dequeue_rollout() is None

    async def test_a_status_outside_retry_condition_fails_the_rollout(self, store: LightningStore) -> None:
        rollout_id, attempt_id = await self._running(store, max_attempts=5, retry_condition=("timeout",))
        await store.update_attempt(rollout_id, attempt_id, status="failed")
        assert await rollout_status(store, rollout_id) == "failed"

    async def test_requeued_rollouts_go_to_the_back_of_the_queue(self, store: LightningStore) -> None:
        rollout_id, attempt_id = await self._running(store, max_attempts=2, retry_condition=("failed",))
        waiting = await store.enqueue_rollout("waiting")
        await store.update_attempt(rollout_id, attempt_id, status="failed")
        order = [await store.dequeue_rollout(), await store.dequeue_rollout()]
        assert [c.rollout_id for c in order if c] == [waiting.rollout_id, rollout_id]

    async def test_query_attempts_filters_sorts_and_pages(self, store: LightningStore) -> None:
        rollout_id, attempt_id = await self._running(store, max_attempts=3, retry_condition=("failed",))
        await store.update_attempt(rollout_id, attempt_id, status="failed")
        second = await store.dequeue_rollout()
        assert second is not None
        page = await store.query_attempts(rollout_id, sort_order="desc")
        assert [a.sequence_id for a in page] == [2, 1] and page.total == 2
        failed = await store.query_attempts(rollout_id, status_in=["failed"])
        assert [a.attempt_id for a in failed] == [attempt_id]
        one = await store.query_attempts(rollout_id, limit=1, offset=1)
        assert ([a.sequence_id for a in one], one.total) == ([2], 2)
        assert len(await store.query_attempts("ro-missing")) == 0

    # --- deadlines ------------------------------------------------------------------------
    async def test_timeout_is_enforced_and_retried(self, store: LightningStore, clock: ManualClock) -> None:
        rollout_id, attempt_id = await self._running(
            store, timeout_seconds=10, max_attempts=2, retry_condition=("timeout",)
        )
        clock.advance(9)
        assert await store.check_deadlines() == 0
        clock.advance(2)
        assert await store.check_deadlines() == 1
        attempt = await store.get_latest_attempt(rollout_id)
        assert attempt is not None and (attempt.attempt_id, attempt.status) == (attempt_id, "timeout")
        assert await rollout_status(store, rollout_id) == "requeuing"
        retry = await store.dequeue_rollout()
        assert retry is not None and retry.attempt.sequence_id == 2

    async def test_spans_and_heartbeats_keep_an_attempt_responsive(
        self, store: LightningStore, clock: ManualClock
    ) -> None:
        rollout_id, attempt_id = await self._running(store, unresponsive_seconds=10)
        clock.advance(8)
        await store.add_span(make_span(rollout_id, attempt_id, 1))
        clock.advance(8)
        await store.update_attempt(rollout_id, attempt_id, last_heartbeat_time=clock())
        clock.advance(8)
        await store.update_worker("w1")  # the worker heartbeat covers its current attempt
        clock.advance(8)
        assert await store.check_deadlines() == 0
        clock.advance(3)
        assert await store.check_deadlines() == 1
        assert await attempt_status(store, rollout_id) == "unresponsive"
        assert await rollout_status(store, rollout_id) == "failed"

    async def test_an_attempt_never_heard_from_becomes_unresponsive(
        self, store: LightningStore, clock: ManualClock
    ) -> None:
        rollout = await store.enqueue_rollout("x", config=RolloutConfig(unresponsive_seconds=5))
        await store.dequeue_rollout()  # stays "preparing": the worker died before it said anything
        clock.advance(6)
        assert await store.check_deadlines() == 1
        assert await attempt_status(store, rollout.rollout_id) == "unresponsive"

    async def test_watchdog_thread_enforces_deadlines_without_calls(self, make_store: StoreFactory) -> None:
        store = make_store(watchdog_interval=0.05)
        try:
            rollout = await store.enqueue_rollout("x", config=RolloutConfig(timeout_seconds=0.2))
            assert await store.dequeue_rollout() is not None
            # wait_for_rollouts only reads; the status can only change through the watchdog.
            finished = await asyncio.wait_for(store.wait_for_rollouts([rollout.rollout_id]), timeout=20)
            assert [r.status for r in finished] == ["failed"]
            assert await attempt_status(store, rollout.rollout_id) == "timeout"
        finally:
            await store.close()

    # --- spans ----------------------------------------------------------------------------
    async def test_first_span_starts_the_attempt_and_counts_as_heartbeat(
        self, store: LightningStore, clock: ManualClock
    ) -> None:
        rollout = await store.enqueue_rollout("x")
        claimed = await store.dequeue_rollout()
        assert claimed is not None
        clock.advance(4)
        await store.add_span(make_span(rollout.rollout_id, claimed.attempt.attempt_id, 1))
        attempt = await store.get_latest_attempt(rollout.rollout_id)
        assert attempt is not None and (attempt.status, attempt.last_heartbeat_time) == ("running", clock())
        assert await rollout_status(store, rollout.rollout_id) == "running"

    async def test_query_spans_filters_sorts_and_pages(self, store: LightningStore) -> None:
        rollout_id, attempt_id = await self._running(store, max_attempts=2, retry_condition=("failed",))
        for seq in (3, 1, 2):
            await store.add_span(make_span(rollout_id, attempt_id, seq, name="llm" if seq == 2 else "tool"))
        spans = await store.query_spans(rollout_id)
        assert [s.sequence_id for s in spans] == [1, 2, 3] and spans.total == 3
        assert [s.sequence_id for s in await store.query_spans(rollout_id, sort_order="desc")] == [3, 2, 1]
        assert [s.sequence_id for s in await store.query_spans(rollout_id, name="llm")] == [2]
        page = await store.query_spans(rollout_id, limit=2, offset=1)
        assert ([s.sequence_id for s in page], page.total) == ([2, 3], 3)
        by_name = await store.query_spans(rollout_id, sort_by="name")
        assert [s.name for s in by_name] == ["llm", "tool", "tool"]

        await store.update_attempt(rollout_id, attempt_id, status="failed")
        retry = await store.dequeue_rollout()
        assert retry is not None
        await store.add_span(make_span(rollout_id, retry.attempt.attempt_id, 1, name="retry"))
        assert [s.name for s in await store.query_spans(rollout_id, "latest")] == ["retry"]
        assert len(await store.query_spans(rollout_id, attempt_id)) == 3
        assert len(await store.query_spans(rollout_id)) == 4
        assert len(await store.query_spans("ro-missing")) == 0
        with pytest.raises(InvalidInput, match="attributes"):
            await store.query_spans(rollout_id, sort_by="attributes")

    async def test_adding_a_span_again_replaces_it(self, store: LightningStore) -> None:
        rollout_id, attempt_id = await self._running(store)
        await store.add_span(make_span(rollout_id, attempt_id, 1, version=1))
        await store.add_span(make_span(rollout_id, attempt_id, 1, version=2))
        spans = await store.query_spans(rollout_id)
        assert [s.attributes["version"] for s in spans] == [2]
        assert (await store.statistics()).spans == 1

    async def test_span_sequence_ids_increase_per_attempt(self, store: LightningStore, clock: ManualClock) -> None:
        rollout_id, attempt_id = await self._running(store)
        other_id, other_attempt = await self._running(store)
        now = sequence_clock(clock())
        reserved = [await store.get_next_span_sequence_id(rollout_id, attempt_id) for _ in range(3)]
        assert reserved == [now, now + 1, now + 2]
        assert await store.get_next_span_sequence_id(other_id, other_attempt) == now
        await store.add_span(make_span(rollout_id, attempt_id, now + 10))
        assert await store.get_next_span_sequence_id(rollout_id, attempt_id) == now + 11  # past every span held
        clock.advance(1)
        assert await store.get_next_span_sequence_id(rollout_id, attempt_id) == sequence_clock(clock())  # the clock
        with pytest.raises(AttemptNotFound):
            await store.get_next_span_sequence_id(rollout_id, other_attempt)

    async def test_a_span_with_the_largest_sequence_id_leaves_the_counter_in_range(self, store: LightningStore) -> None:
        rollout_id, attempt_id = await self._running(store)
        await store.add_span(make_span(rollout_id, attempt_id, MAX_INT64))
        reserved = [await store.get_next_span_sequence_id(rollout_id, attempt_id) for _ in range(2)]
        assert reserved == [MAX_INT64 - 1, MAX_INT64 - 1]  # capped, so every id still fits in 64 bits
        await store.add_span(make_span(rollout_id, attempt_id, reserved[0], name="after"))
        assert len(await store.query_spans(rollout_id)) == 2

    async def test_add_many_spans_is_all_or_nothing(self, store: LightningStore, clock: ManualClock) -> None:
        rollout_id, attempt_id = await self._running(store)
        good = [make_span(rollout_id, attempt_id, seq) for seq in range(1, 4)]
        stray = make_span(rollout_id, "at-missing", 9)
        with pytest.raises(AttemptNotFound):
            await store.add_many_spans([*good, stray])
        assert len(await store.query_spans(rollout_id)) == 0
        assert len(await store.add_many_spans(good)) == 3
        assert [s.sequence_id for s in await store.query_spans(rollout_id)] == [1, 2, 3]
        assert await store.get_next_span_sequence_id(rollout_id, attempt_id) == sequence_clock(clock())

    async def test_spans_of_a_finished_attempt_are_kept_without_reviving_it(self, store: LightningStore) -> None:
        rollout_id, attempt_id = await self._running(store)
        await store.update_attempt(rollout_id, attempt_id, status="failed")
        await store.add_span(make_span(rollout_id, attempt_id, 1))
        assert len(await store.query_spans(rollout_id)) == 1
        assert await attempt_status(store, rollout_id) == "failed"

    async def test_span_for_an_unknown_rollout_or_attempt_is_refused(self, store: LightningStore) -> None:
        rollout_id, _ = await self._running(store)
        with pytest.raises(RolloutNotFound):
            await store.add_span(make_span("ro-missing", "at-missing", 1))
        with pytest.raises(AttemptNotFound):
            await store.add_span(make_span(rollout_id, "at-missing", 1))

    async def test_add_otel_span_converts_an_sdk_span(self, store: LightningStore, clock: ManualClock) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("conformance")
        with (
            tracer.start_as_current_span("agent") as parent,
            tracer.start_as_current_span("chat tiny", attributes={"gen_ai.request.model": "tiny"}) as child,
        ):
            child.add_event("token", {"n": 3})
            child.set_attribute("tags", ("a", "b"))
        finished = exporter.get_finished_spans()
        rollout_id, attempt_id = await self._running(store)
        child_span, parent_span = finished
        stored_parent = await store.add_otel_span(rollout_id, attempt_id, parent_span)
        stored_child = await store.add_otel_span(rollout_id, attempt_id, child_span)
        now = sequence_clock(clock())
        assert (stored_parent.sequence_id, stored_child.sequence_id) == (now, now + 1)
        assert stored_child.parent_id == format(parent.get_span_context().span_id, "016x")
        assert stored_child.trace_id == format(child.get_span_context().trace_id, "032x")
        assert stored_child.attributes == {"gen_ai.request.model": "tiny", "tags": ["a", "b"]}
        assert stored_child.events[0].name == "token" and stored_child.events[0].attributes == {"n": 3}
        assert stored_child.end_time is not None and stored_child.start_time is not None
        assert stored_child.end_time >= stored_child.start_time
        assert list(await store.query_spans(rollout_id)) == [stored_parent, stored_child]
        provider.shutdown()

    # --- observed runs (spans nobody queued) ----------------------------------------------
    def _observed(self, name: str, start: float, *, span_id: str, parent: str | None = None, **fields: Any) -> Span:
        values: dict[str, Any] = {
            "rollout_id": "ro-trace-1",
            "attempt_id": "at-trace-1",
            "sequence_id": 0,
            "trace_id": "ab" * 16,
            "span_id": span_id,
            "parent_id": parent,
            "name": name,
            "start_time": start,
            "end_time": start + 1,
        }
        return Span(**(values | fields))

    async def test_observed_spans_create_their_rollout_and_number_in_start_order(
        self, store: LightningStore, clock: ManualClock
    ) -> None:
        now = sequence_clock(clock())
        child = self._observed("llm", 2.0, span_id="c" * 16, parent="a" * 16)
        late = self._observed("tool", 3.0, span_id="d" * 16, parent="a" * 16, sequence_id=now + 9)
        first = self._observed("step", 1.0, span_id="b" * 16, parent="a" * 16)
        stored = await store.add_observed_spans([child, late, first], new_rollout_metadata={"ro-trace-1": {"k": 1}})
        assert [(s.name, s.sequence_id) for s in stored] == [("step", now), ("llm", now + 1), ("tool", now + 9)]
        rollout = await store.get_rollout_by_id("ro-trace-1")
        assert rollout is not None and (rollout.status, rollout.input) == ("running", None)
        assert rollout.metadata == {"observed": True, "k": 1}
        attempt = await store.get_latest_attempt("ro-trace-1")
        assert attempt is not None and (attempt.attempt_id, attempt.status) == ("at-trace-1", "running")
        assert await store.get_next_span_sequence_id("ro-trace-1", "at-trace-1") == now + 10
        assert await store.dequeue_rollout() is None  # observed runs never enter the queue

    async def test_a_trace_rollout_ends_with_its_root_span(self, store: LightningStore, clock: ManualClock) -> None:
        metadata = {"ro-trace-1": {"trace_id": "ab" * 16}}
        await store.add_observed_spans(
            [self._observed("llm", 2.0, span_id="c" * 16, parent="a" * 16)], new_rollout_metadata=metadata
        )
        assert await rollout_status(store, "ro-trace-1") == "running"
        await store.add_observed_spans([self._observed("agent", 1.0, span_id="a" * 16)], new_rollout_metadata=metadata)
        assert await rollout_status(store, "ro-trace-1") == "succeeded"
        failing = self._observed(
            "agent",
            1.0,
            span_id="e" * 16,
            rollout_id="ro-trace-2",
            attempt_id="at-trace-2",
            status={"status_code": "ERROR"},
        )
        finished = await store.add_observed_spans(
            [failing], new_rollout_metadata={"ro-trace-2": {"trace_id": "ab" * 16}}
        )
        assert finished[0].sequence_id == sequence_clock(clock())
        assert await rollout_status(store, "ro-trace-2") == "failed"
        # Without a trace_id the observed rollout is left for its owner to finish.
        await store.add_observed_spans(
            [self._observed("agent", 1.0, span_id="f" * 16, rollout_id="ro-p", attempt_id="at-p")]
        )
        assert await rollout_status(store, "ro-p") == "running"

    async def test_a_process_rollout_ends_with_its_exit_span(self, store: LightningStore) -> None:
        await store.add_observed_spans(
            [self._observed("agent", 1.0, span_id="a" * 16, rollout_id="ro-p", attempt_id="at-p")]
        )
        assert await rollout_status(store, "ro-p") == "running"
        exit_span = self._observed(
            "agl.process.exit",
            2.0,
            span_id="b" * 16,
            rollout_id="ro-p",
            attempt_id="at-p",
            attributes={"agl.process.outcome": "failed"},
        )
        await store.add_observed_spans([exit_span])
        assert await rollout_status(store, "ro-p") == "failed"
        started = await store.start_rollout("queued by a runner")  # not observed: only its runner ends it
        mine = self._observed(
            "agl.process.exit",
            3.0,
            span_id="c" * 16,
            rollout_id=started.rollout_id,
            attempt_id=started.attempt.attempt_id,
        )
        await store.add_observed_spans([mine])
        assert await rollout_status(store, started.rollout_id) == "running"

    async def test_observed_spans_join_existing_attempts_and_refuse_strangers(
        self, store: LightningStore, clock: ManualClock
    ) -> None:
        rollout_id, attempt_id = await self._running(store)
        joined = await store.add_observed_spans(
            [self._observed("tool", 1.0, span_id="a" * 16, rollout_id=rollout_id, attempt_id=attempt_id)]
        )
        assert joined[0].sequence_id == sequence_clock(clock()) and len(await store.query_spans(rollout_id)) == 1
        stranger = self._observed("tool", 1.0, span_id="b" * 16, rollout_id=rollout_id, attempt_id="at-unknown")
        with pytest.raises(AttemptNotFound):  # a queued rollout gets attempts only by dequeue or start
            await store.add_observed_spans([stranger])
        with pytest.raises(AttemptNotFound):  # an attempt of another rollout
            await store.add_observed_spans([self._observed("x", 1.0, span_id="c" * 16, attempt_id=attempt_id)])
        assert len(await store.query_spans(rollout_id)) == 1

    # --- bad input ------------------------------------------------------------------------
    async def test_oversized_span_is_refused_and_nothing_is_stored(self, make_store: StoreFactory) -> None:
        store = make_store(watchdog_interval=None, max_span_bytes=4096)
        try:
            rollout_id, attempt_id = await self._running(store)
            with pytest.raises(InvalidInput, match="limit is 4096"):
                await store.add_many_spans(
                    [make_span(rollout_id, attempt_id, 1), make_span(rollout_id, attempt_id, 2, blob="x" * 5000)]
                )
            assert len(await store.query_spans(rollout_id)) == 0
        finally:
            await store.close()

    async def test_non_json_values_are_refused(self, store: LightningStore) -> None:
        rollout_id, attempt_id = await self._running(store)
        bad_span = make_span(rollout_id, attempt_id, 1).model_dump() | {"attributes": {"obj": object()}}
        with pytest.raises(InvalidInput, match="attributes"):
            await store.add_span(bad_span)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="sequence_id"):
            await store.add_span(make_span(rollout_id, attempt_id, 1).model_dump() | {"sequence_id": "x"})  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="rollout input"):
            await store.enqueue_rollout({"when": object()})
        with pytest.raises(InvalidInput, match="metadata"):
            await store.update_attempt(rollout_id, attempt_id, metadata={"f": object()})
        with pytest.raises(InvalidInput, match="mode"):
            await store.enqueue_rollout("x", mode="training")  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="metadata must be an object"):
            await store.update_attempt(rollout_id, attempt_id, metadata=None)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="config must be an object"):
            await store.update_rollout(rollout_id, config=None)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="sequence_id"):
            await store.add_span(make_span(rollout_id, attempt_id, 1).model_dump() | {"sequence_id": 2**64})  # type: ignore[arg-type]
        assert len(await store.query_spans(rollout_id)) == 0
        assert (await store.statistics()).rollouts == 1

    # --- querying rollouts ----------------------------------------------------------------
    async def test_query_rollouts_filters_sorts_and_pages(self, store: LightningStore, clock: ManualClock) -> None:
        ids = []
        for i in range(6):
            clock.advance(1)
            mode = "train" if i % 2 else "val"
            ids.append((await store.enqueue_rollout(i, mode=mode, resources_id=f"rs-{i % 3}")).rollout_id)
        await store.update_rollout(ids[0], status="cancelled")
        everything = await store.query_rollouts()
        assert [r.rollout_id for r in everything] == ids and everything.total == 6
        assert [r.input for r in await store.query_rollouts(sort_by="start_time", sort_order="desc")][:2] == [5, 4]
        assert [r.rollout_id for r in await store.query_rollouts(status_in=["cancelled"])] == [ids[0]]
        assert [r.input for r in await store.query_rollouts(mode="train")] == [1, 3, 5]
        assert [r.input for r in await store.query_rollouts(resources_id="rs-2")] == [2, 5]
        picked = await store.query_rollouts(rollout_id_in=[ids[4], ids[1], "ro-missing"])
        assert sorted(r.input for r in picked) == [1, 4]
        page = await store.query_rollouts(limit=2, offset=3)
        assert ([r.input for r in page], page.total, page.limit, page.offset) == ([3, 4], 6, 2, 3)
        assert (await store.query_rollouts(limit=0)).total == 6
        filtered_page = await store.query_rollouts(status_in=["queuing"], limit=1)
        assert (len(filtered_page), filtered_page.total) == (1, 5)
        with pytest.raises(InvalidInput, match="input"):
            await store.query_rollouts(sort_by="input")
        with pytest.raises(InvalidInput, match="sideways"):
            await store.query_rollouts(sort_order="sideways")  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="limit"):
            await store.query_rollouts(limit=-1)
        with pytest.raises(InvalidInput, match="offset"):
            await store.query_rollouts(offset=-5)

    async def test_null_end_times_sort_first_ascending(self, store: LightningStore, clock: ManualClock) -> None:
        done_id, _ = await self._running(store)
        clock.advance(1)
        await store.update_rollout(done_id, status="succeeded")
        open_rollout = await store.enqueue_rollout("open")
        ascending = await store.query_rollouts(sort_by="end_time")
        assert [r.rollout_id for r in ascending] == [open_rollout.rollout_id, done_id]
        descending = await store.query_rollouts(sort_by="end_time", sort_order="desc")
        assert [r.rollout_id for r in descending] == [done_id, open_rollout.rollout_id]

    # --- waiting --------------------------------------------------------------------------
    async def test_wait_for_rollouts_returns_finished_ones(self, store: LightningStore) -> None:
        done_id, _ = await self._running(store)
        await store.update_rollout(done_id, status="succeeded")
        open_rollout = await store.enqueue_rollout("open")
        assert [r.rollout_id for r in await store.wait_for_rollouts([done_id])] == [done_id]
        partial = await store.wait_for_rollouts([done_id, open_rollout.rollout_id], timeout=0.05)
        assert [r.rollout_id for r in partial] == [done_id]
        assert await store.wait_for_rollouts([open_rollout.rollout_id], timeout=0) == []
        with pytest.raises(RolloutNotFound):
            await store.wait_for_rollouts(["ro-missing"], timeout=0)

    async def test_wait_for_rollouts_wakes_when_a_rollout_finishes(self, store: LightningStore) -> None:
        rollout_id, attempt_id = await self._running(store)
        waiter = asyncio.create_task(store.wait_for_rollouts([rollout_id]))  # no timeout: must be woken
        await store.update_attempt(rollout_id, attempt_id, status="succeeded")
        finished = await asyncio.wait_for(waiter, timeout=20)
        assert [(r.rollout_id, r.status) for r in finished] == [(rollout_id, "succeeded")]

    async def test_wait_for_rollouts_wakes_on_a_change_from_another_thread(self, store: LightningStore) -> None:
        rollout_id, attempt_id = await self._running(store)
        started = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def wait() -> list[Any]:
            task = asyncio.ensure_future(store.wait_for_rollouts([rollout_id]))
            loop.call_soon(started.set)
            return await task

        waiter = asyncio.create_task(wait())
        await started.wait()
        finisher = threading.Thread(
            target=lambda: asyncio.run(store.update_attempt(rollout_id, attempt_id, status="failed"))
        )
        finisher.start()
        finished = await asyncio.wait_for(waiter, timeout=20)
        finisher.join()
        assert [r.status for r in finished] == ["failed"]

    # --- resources ------------------------------------------------------------------------
    async def test_resources_are_versioned_with_a_latest(self, store: LightningStore, clock: ManualClock) -> None:
        assert await store.get_latest_resources() is None
        llm = LLM(endpoint="http://127.0.0.1:1/v1", model="tiny", sampling_parameters={"temperature": 0.7})
        first = await store.add_resources({"llm": llm, "prompt": PromptTemplate(template="Q: {q}")})
        assert first.resources_id.startswith("rs-") and first.version == 1
        assert first.resources["llm"] == llm
        clock.advance(1)
        second = await store.update_resources(first.resources_id, {"prompt": PromptTemplate(template="A: {q}")})
        assert (second.version, second.create_time, second.update_time) == (2, first.create_time, clock())
        assert await store.get_resources_by_id(first.resources_id) == second
        assert await store.get_latest_resources() == second
        clock.advance(1)
        other = await store.update_resources("rs-chosen", {"llm": llm})
        assert other.version == 1 and await store.get_latest_resources() == other
        clock.advance(1)
        again = await store.update_resources(first.resources_id, second.resources)
        assert (await store.get_latest_resources()) == again and again.version == 3
        assert await store.get_resources_by_id("rs-missing") is None
        ordered = await store.query_resources(sort_by="update_time", sort_order="desc")
        assert [u.resources_id for u in ordered] == [first.resources_id, "rs-chosen"]
        assert (await store.query_resources(limit=1)).total == 2
        with pytest.raises(InvalidInput, match="resources"):
            await store.add_resources({"bad": {"resource_type": "spaceship"}})  # type: ignore[dict-item]

    # --- workers --------------------------------------------------------------------------
    async def test_workers_follow_their_attempts(self, store: LightningStore, clock: ManualClock) -> None:
        rollout_id, attempt_id = await self._running(store)
        (busy,) = await store.query_workers()
        assert (busy.worker_id, busy.status, busy.current_attempt_id) == ("w1", "busy", attempt_id)
        clock.advance(1)
        beat = await store.update_worker("w1", heartbeat_stats={"gpu": 0.5})
        assert (beat.last_heartbeat_time, beat.heartbeat_stats) == (clock(), {"gpu": 0.5})
        await store.update_attempt(rollout_id, attempt_id, status="succeeded")
        (idle,) = await store.query_workers(status_in=["idle"])
        assert (idle.worker_id, idle.current_attempt_id, idle.last_idle_time) == ("w1", None, clock())
        assert await store.dequeue_rollout(worker_id="w2") is None
        workers = await store.query_workers(sort_order="desc")
        assert [w.worker_id for w in workers] == ["w2", "w1"]
        assert len(await store.query_workers(status_in=["busy"])) == 0

    async def test_a_worker_heartbeat_covers_all_its_attempts(self, store: LightningStore, clock: ManualClock) -> None:
        config = RolloutConfig(unresponsive_seconds=10)
        for _ in range(2):
            await store.enqueue_rollout("x", config=config)
        first = await store.dequeue_rollout(worker_id="w1")
        second = await store.dequeue_rollout(worker_id="w1")  # one runner, two rollouts at once
        assert first is not None and second is not None
        clock.advance(8)
        await store.update_worker("w1")
        clock.advance(8)
        assert await store.check_deadlines() == 0
        await store.update_attempt(second.rollout_id, "latest", status="succeeded")
        (worker,) = await store.query_workers()
        assert (worker.status, worker.current_attempt_id) == ("busy", first.attempt.attempt_id)
        await store.update_attempt(first.rollout_id, "latest", status="succeeded")
        (worker,) = await store.query_workers()
        assert (worker.status, worker.current_attempt_id) == ("idle", None)

    # --- concurrency ----------------------------------------------------------------------
    async def test_concurrent_workers_claim_each_rollout_once(self, store: LightningStore) -> None:
        await store.enqueue_many_rollouts([RolloutRequest(input=i) for i in range(60)])
        claimed: list[str] = []

        async def worker(name: str) -> None:
            while (item := await store.dequeue_rollout(worker_id=name)) is not None:
                claimed.append(item.rollout_id)
                attempt_id = item.attempt.attempt_id
                for seq in range(1, 4):
                    await store.add_span(make_span(item.rollout_id, attempt_id, seq))
                    await asyncio.sleep(0)  # let the other workers interleave
                await store.update_attempt(item.rollout_id, attempt_id, status="succeeded")

        await asyncio.gather(*(worker(f"w{i}") for i in range(12)))
        assert len(claimed) == len(set(claimed)) == 60
        stats = await store.statistics()
        assert stats.rollouts_by_status == {"succeeded": 60}
        assert stats.spans == 180

    async def test_threads_with_their_own_loops_share_one_store(self, store: LightningStore) -> None:
        await store.enqueue_many_rollouts([RolloutRequest(input=i) for i in range(40)])
        claimed: list[list[str]] = [[] for _ in range(4)]

        def run(index: int) -> None:
            async def drain() -> None:
                while (item := await store.dequeue_rollout()) is not None:
                    claimed[index].append(item.rollout_id)
                    await store.update_attempt(item.rollout_id, "latest", status="succeeded")

            asyncio.run(drain())

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        everything = [rollout_id for ids in claimed for rollout_id in ids]
        assert len(everything) == len(set(everything)) == 40

    # --- statistics -----------------------------------------------------------------------
    async def test_statistics_count_everything(self, store: LightningStore) -> None:
        rollout_id, attempt_id = await self._running(store)
        await store.enqueue_rollout("queued")
        await store.add_span(make_span(rollout_id, attempt_id, 1))
        await store.add_resources({"p": PromptTemplate(template="x")})
        stats = await store.statistics()
        assert stats.rollouts_by_status == {"queuing": 1, "running": 1}
        assert stats.attempts_by_status == {"running": 1}
        assert (stats.rollouts, stats.spans, stats.resources, stats.workers) == (2, 1, 1, 1)
