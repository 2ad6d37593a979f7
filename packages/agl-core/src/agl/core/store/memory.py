"""``memory://``: the store in one process's memory, for tests and throwaway runs.

Nothing survives the process, and nothing is evicted: memory grows with every rollout and span.
Safe across threads (one lock) and event loops.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from agl.core.ids import sequence_clock
from agl.core.store.base import Page, StoreStatistics
from agl.core.store.lifecycle import DEFAULT_MAX_SPAN_BYTES, LifecycleStore, StoredSpan, replace
from agl.core.store.query import check_filter, check_id, check_query, check_rollout_filters, sort_and_page
from agl.core.types import Attempt, ResourcesUpdate, Rollout, RolloutConfig, Span, Worker
from agl.core.types.rollouts import ACTIVE_ATTEMPT_STATUSES, ATTEMPT_STATUSES, ROLLOUT_STATUSES
from agl.core.types.spans import MAX_INT64
from agl.core.types.workers import WORKER_STATUSES


class InMemoryLightningStore(LifecycleStore):
    def __init__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        watchdog_interval: float | None = 1.0,
        max_span_bytes: int = DEFAULT_MAX_SPAN_BYTES,
    ) -> None:
        kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
        super().__init__(watchdog_interval=watchdog_interval, max_span_bytes=max_span_bytes, **kwargs)
        self._lock = threading.RLock()
        self._rollouts: dict[str, Rollout] = {}
        # FIFO of (ticket, rollout id); an entry is live while _tickets maps its id to its ticket,
        # so taking a rollout out of the middle of the queue is O(1) and leaves a stale entry.
        self._queue: deque[tuple[int, str]] = deque()
        self._tickets: dict[str, int] = {}
        self._next_ticket = 0
        self._attempts: dict[str, Attempt] = {}
        self._attempts_by_rollout: dict[str, list[str]] = {}
        self._active: set[str] = set()
        self._next_sequence_id: dict[str, int] = {}
        # Each span with its JSON, kept so the server answers queries without serialising again.
        self._spans: dict[str, dict[tuple[str, str], tuple[Span, bytes]]] = {}
        self._span_count = 0
        self._resources: dict[str, ResourcesUpdate] = {}
        self._latest_resources_id: str | None = None
        self._workers: dict[str, Worker] = {}
        self._start_watchdog()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # Methods validate before they write, so a raised error leaves nothing half-done.
        with self._lock:
            yield

    # --- rollouts -------------------------------------------------------------------------
    def _get_rollout(self, rollout_id: str) -> Rollout | None:
        return self._rollouts.get(rollout_id)

    def _insert_rollouts(self, rollouts: Sequence[Rollout], queued: bool) -> None:
        for rollout in rollouts:
            self._save_rollout(rollout, queued)

    def _save_rollout(self, rollout: Rollout, queued: bool | None) -> None:
        rollout_id = rollout.rollout_id
        self._rollouts[rollout_id] = rollout
        if queued:
            self._next_ticket += 1
            self._tickets[rollout_id] = self._next_ticket
            self._queue.append((self._next_ticket, rollout_id))
        elif queued is False:
            self._tickets.pop(rollout_id, None)

    def _next_queued(self) -> Rollout | None:
        while self._queue:
            ticket, rollout_id = self._queue[0]
            if self._tickets.get(rollout_id) == ticket:
                return self._rollouts[rollout_id]
            self._queue.popleft()
        return None

    # --- attempts -------------------------------------------------------------------------
    def _get_attempt(self, attempt_id: str) -> Attempt | None:
        return self._attempts.get(attempt_id)

    def _latest_attempt(self, rollout_id: str) -> Attempt | None:
        ids = self._attempts_by_rollout.get(rollout_id)
        return self._attempts[ids[-1]] if ids else None

    def _insert_attempt(self, attempt: Attempt) -> None:
        self._attempts_by_rollout.setdefault(attempt.rollout_id, []).append(attempt.attempt_id)
        self._next_sequence_id[attempt.attempt_id] = 1
        self._save_attempt(attempt)

    def _save_attempt(self, attempt: Attempt) -> None:
        self._attempts[attempt.attempt_id] = attempt
        if attempt.status in ACTIVE_ATTEMPT_STATUSES:
            self._active.add(attempt.attempt_id)
        else:
            self._active.discard(attempt.attempt_id)

    def _active_attempts(self) -> list[tuple[Attempt, RolloutConfig]]:
        return [(self._attempts[a], self._rollouts[self._attempts[a].rollout_id].config) for a in self._active]

    def _record_activity(self, attempt_id: str, heartbeat: float | None, next_sequence_id: int) -> None:
        if next_sequence_id > self._next_sequence_id[attempt_id]:
            self._next_sequence_id[attempt_id] = next_sequence_id
        if heartbeat is not None:
            attempt = self._attempts[attempt_id]
            self._attempts[attempt_id] = replace(attempt, {"last_heartbeat_time": heartbeat})

    def _reserve_span_sequence_id(self, attempt_id: str, now: float) -> int:
        sequence_id = min(max(self._next_sequence_id[attempt_id], sequence_clock(now)), MAX_INT64 - 1)
        self._next_sequence_id[attempt_id] = sequence_id + 1
        return sequence_id

    # --- spans ----------------------------------------------------------------------------
    def _save_spans(self, spans: Sequence[tuple[Span, bytes]]) -> None:
        for span, data in spans:
            by_rollout = self._spans.setdefault(span.rollout_id, {})
            key = (span.attempt_id, span.span_id)
            if key not in by_rollout:
                self._span_count += 1
            by_rollout[key] = (span, data)

    # --- resources and workers ------------------------------------------------------------
    def _get_resources(self, resources_id: str) -> ResourcesUpdate | None:
        return self._resources.get(resources_id)

    def _latest_resources(self) -> ResourcesUpdate | None:
        return None if self._latest_resources_id is None else self._resources[self._latest_resources_id]

    def _save_resources(self, update: ResourcesUpdate) -> None:
        self._resources[update.resources_id] = update
        self._latest_resources_id = update.resources_id

    def _get_worker(self, worker_id: str) -> Worker | None:
        return self._workers.get(worker_id)

    def _save_worker(self, worker: Worker) -> None:
        self._workers[worker.worker_id] = worker

    def _statistics(self) -> StoreStatistics:
        rollouts = Counter(r.status for r in self._rollouts.values())
        attempts = Counter(a.status for a in self._attempts.values())
        return StoreStatistics(
            rollouts_by_status={s: rollouts[s] for s in ROLLOUT_STATUSES if rollouts[s]},
            attempts_by_status={s: attempts[s] for s in ATTEMPT_STATUSES if attempts[s]},
            spans=self._span_count,
            resources=len(self._resources),
            workers=len(self._workers),
        )

    # --- queries --------------------------------------------------------------------------
    async def query_rollouts(
        self,
        *,
        status_in: Sequence[str] | None = None,
        rollout_id_in: Sequence[str] | None = None,
        mode: str | None = None,
        resources_id: str | None = None,
        sort_by: str = "start_time",
        sort_order: str = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[Rollout]:
        check_query("rollouts", sort_by, sort_order, limit, offset)
        check_rollout_filters(status_in, rollout_id_in, mode, resources_id)
        statuses = None if status_in is None else set(status_in)
        with self._lock:
            if rollout_id_in is not None:
                candidates = [self._rollouts[i] for i in dict.fromkeys(rollout_id_in) if i in self._rollouts]
            else:
                candidates = list(self._rollouts.values())
        matched = (
            r
            for r in candidates
            if (statuses is None or r.status in statuses)
            and (mode is None or r.mode == mode)
            and (resources_id is None or r.resources_id == resources_id)
        )
        return sort_and_page(matched, lambda r: getattr(r, sort_by), sort_order, limit, offset)

    async def query_attempts(
        self,
        rollout_id: str,
        *,
        status_in: Sequence[str] | None = None,
        sort_by: str = "sequence_id",
        sort_order: str = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[Attempt]:
        check_query("attempts", sort_by, sort_order, limit, offset)
        check_id("rollout_id", rollout_id)
        check_filter("status_in", status_in, ATTEMPT_STATUSES)
        with self._lock:
            attempts = [self._attempts[a] for a in self._attempts_by_rollout.get(rollout_id, ())]
        if status_in is not None:
            attempts = [a for a in attempts if a.status in set(status_in)]
        return sort_and_page(attempts, lambda a: getattr(a, sort_by), sort_order, limit, offset)

    def _span_page(
        self,
        rollout_id: str,
        attempt_id: str | None,
        name: str | None,
        sort_by: str,
        sort_order: str,
        limit: int | None,
        offset: int,
    ) -> Page[StoredSpan]:
        with self._lock:
            spans = list(self._spans.get(rollout_id, {}).values())
        matched = (
            entry
            for entry in spans
            if (attempt_id is None or entry[0].attempt_id == attempt_id) and (name is None or entry[0].name == name)
        )
        return sort_and_page(matched, lambda entry: getattr(entry[0], sort_by), sort_order, limit, offset)

    async def query_resources(
        self, *, sort_by: str = "update_time", sort_order: str = "asc", limit: int | None = None, offset: int = 0
    ) -> Page[ResourcesUpdate]:
        check_query("resources", sort_by, sort_order, limit, offset)
        with self._lock:
            updates = list(self._resources.values())
        return sort_and_page(updates, lambda u: getattr(u, sort_by), sort_order, limit, offset)

    async def query_workers(
        self,
        *,
        status_in: Sequence[str] | None = None,
        sort_by: str = "worker_id",
        sort_order: str = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[Worker]:
        check_query("workers", sort_by, sort_order, limit, offset)
        check_filter("status_in", status_in, WORKER_STATUSES)
        with self._lock:
            workers = list(self._workers.values())
        if status_in is not None:
            workers = [w for w in workers if w.status in set(status_in)]
        return sort_and_page(workers, lambda w: getattr(w, sort_by), sort_order, limit, offset)

    async def close(self) -> None:
        self._stop_watchdog()
