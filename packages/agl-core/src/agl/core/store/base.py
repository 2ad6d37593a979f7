"""`LightningStore`: the one async contract every backend implements.

Method names follow Agent Lightning's store so algorithms port unchanged. Reads that look up
one object return ``None`` when it is missing; writes raise a `NotFound` subclass instead.
Every ``query_*`` method filters, sorts and paginates, and returns a `Page`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, overload

from agl.core.types import (
    Attempt,
    AttemptedRollout,
    AttemptStatus,
    NamedResources,
    ResourcesUpdate,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutRequest,
    RolloutStatus,
    Span,
    Worker,
    WorkerStatus,
)

T = TypeVar("T")
SortOrder = Literal["asc", "desc"]


class _Unset:
    """Marks an argument that was not given, so ``None`` can mean "set to None"."""

    __slots__ = ()
    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __reduce__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
Unset = _Unset


@dataclass(frozen=True)
class Page(Sequence[T], Generic[T]):
    """One page of a query: a sequence of items plus the total number that matched."""

    items: list[T]
    total: int
    offset: int = 0
    limit: int | None = None

    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        return self.items[index]

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)


@dataclass(frozen=True)
class StoreStatistics:
    rollouts_by_status: dict[str, int] = field(default_factory=dict)
    attempts_by_status: dict[str, int] = field(default_factory=dict)
    spans: int = 0
    resources: int = 0
    workers: int = 0

    @property
    def rollouts(self) -> int:
        return sum(self.rollouts_by_status.values())


class LightningStore(abc.ABC):
    """Rollout queue, attempts, spans, versioned resources and workers behind one async API."""

    # --- rollouts -------------------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue_rollout(
        self,
        input: Any,
        *,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
        rollout_id: str | None = None,
    ) -> Rollout:
        """Queue a task (FIFO). A client-chosen ``rollout_id`` makes the call idempotent."""

    @abc.abstractmethod
    async def enqueue_many_rollouts(self, requests: Sequence[RolloutRequest]) -> list[Rollout]:
        """Queue several tasks in one transaction, in order."""

    @abc.abstractmethod
    async def dequeue_rollout(self, worker_id: str | None = None) -> AttemptedRollout | None:
        """Claim the oldest queued rollout and create its next attempt; ``None`` if the queue is empty."""

    @abc.abstractmethod
    async def start_rollout(
        self,
        input: Any,
        *,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
        worker_id: str | None = None,
        rollout_id: str | None = None,
    ) -> AttemptedRollout:
        """Create a rollout that skips the queue, with its first attempt already started.

        A client-chosen ``rollout_id`` that exists already returns that rollout with its latest
        attempt (idempotent)."""

    @abc.abstractmethod
    async def start_attempt(self, rollout_id: str, worker_id: str | None = None) -> AttemptedRollout:
        """Start a new attempt on a rollout that is not finished and has no active attempt."""

    @abc.abstractmethod
    async def get_rollout_by_id(self, rollout_id: str) -> Rollout | None: ...

    @abc.abstractmethod
    async def query_rollouts(
        self,
        *,
        status_in: Sequence[RolloutStatus] | None = None,
        rollout_id_in: Sequence[str] | None = None,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        sort_by: str = "start_time",
        sort_order: SortOrder = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[Rollout]: ...

    @abc.abstractmethod
    async def update_rollout(
        self,
        rollout_id: str,
        *,
        input: Any = UNSET,
        mode: RolloutMode | None = UNSET,
        resources_id: str | None = UNSET,
        status: RolloutStatus = UNSET,
        config: RolloutConfig = UNSET,
        metadata: dict[str, Any] = UNSET,
    ) -> Rollout:
        """Change a rollout. ``metadata`` is merged. A terminal ``status`` ends the active attempt
        (``succeeded`` → succeeded, otherwise failed); ``requeuing`` puts the rollout back in the
        queue. ``preparing``/``running`` only ever follow from attempts."""

    @abc.abstractmethod
    async def wait_for_rollouts(self, rollout_ids: Sequence[str], timeout: float | None = None) -> list[Rollout]:
        """Wait until every rollout is finished or ``timeout`` seconds pass; return the finished ones,
        each once (an id given twice is waited on once)."""

    # --- attempts -------------------------------------------------------------------------
    @abc.abstractmethod
    async def query_attempts(
        self,
        rollout_id: str,
        *,
        status_in: Sequence[AttemptStatus] | None = None,
        sort_by: str = "sequence_id",
        sort_order: SortOrder = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[Attempt]: ...

    @abc.abstractmethod
    async def get_latest_attempt(self, rollout_id: str) -> Attempt | None: ...

    @abc.abstractmethod
    async def update_attempt(
        self,
        rollout_id: str,
        attempt_id: str | Literal["latest"],
        *,
        status: AttemptStatus = UNSET,
        worker_id: str | None = UNSET,
        last_heartbeat_time: float = UNSET,
        metadata: dict[str, Any] = UNSET,
    ) -> Attempt:
        """Change an attempt; its status carries over to the rollout when it is the latest attempt."""

    # --- spans ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def add_span(self, span: Span) -> Span:
        """Store a span (re-adding the same span id replaces it). Counts as a heartbeat. Its
        ``attempt_id`` must be an attempt's id, not ``"latest"``."""

    @abc.abstractmethod
    async def add_many_spans(self, spans: Sequence[Span]) -> list[Span]:
        """Store spans in one transaction: all or none."""

    @abc.abstractmethod
    async def add_observed_spans(
        self, spans: Sequence[Span], *, new_rollout_metadata: Mapping[str, dict[str, Any]] | None = None
    ) -> list[Span]:
        """Store spans of runs nobody queued (plain OpenTelemetry apps), in one transaction.

        A span naming a rollout that does not exist creates it as an *observed* rollout: no
        input, status running, metadata ``{"observed": True, **new_rollout_metadata[id]}``, with
        an attempt of the span's ``attempt_id``. Spans sent with ``sequence_id`` 0 get the
        attempt's next ids, in start-time order. An observed rollout whose metadata has a
        ``trace_id`` ends when that trace's root span arrives: ``failed`` if the root span's
        status is ERROR, else ``succeeded``; any observed rollout ends when an ``agl.process.exit``
        root span arrives, with its ``agl.process.outcome``.
        """

    async def add_otel_span(
        self, rollout_id: str, attempt_id: str, readable_span: Any, sequence_id: int | None = None
    ) -> Span:
        """Convert and store an OpenTelemetry SDK span, allocating a sequence id if none is given."""
        if sequence_id is None:
            sequence_id = await self.get_next_span_sequence_id(rollout_id, attempt_id)
        span = Span.from_otel(readable_span, rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=sequence_id)
        return await self.add_span(span)

    @abc.abstractmethod
    async def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        """Reserve a span sequence id of an attempt: above every id it gave or holds, and at least
        the clock in microseconds (`agl.core.ids.sequence_clock`)."""

    @abc.abstractmethod
    async def query_spans(
        self,
        rollout_id: str,
        attempt_id: str | Literal["latest"] | None = None,
        *,
        name: str | None = None,
        sort_by: str = "sequence_id",
        sort_order: SortOrder = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[Span]: ...

    # --- resources ------------------------------------------------------------------------
    @abc.abstractmethod
    async def add_resources(self, resources: NamedResources) -> ResourcesUpdate:
        """Store resources under a new id; they become the latest."""

    @abc.abstractmethod
    async def update_resources(self, resources_id: str, resources: NamedResources) -> ResourcesUpdate:
        """Store a new version under ``resources_id`` (created if new); it becomes the latest.
        ``"latest"`` is refused (`InvalidInput`): it names the latest resources, here and over HTTP."""

    @abc.abstractmethod
    async def get_resources_by_id(self, resources_id: str) -> ResourcesUpdate | None:
        """The resources of that id; ``"latest"``: the latest resources (``None`` while there are none)."""

    @abc.abstractmethod
    async def get_latest_resources(self) -> ResourcesUpdate | None: ...

    @abc.abstractmethod
    async def query_resources(
        self,
        *,
        sort_by: str = "update_time",
        sort_order: SortOrder = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[ResourcesUpdate]: ...

    # --- workers --------------------------------------------------------------------------
    @abc.abstractmethod
    async def update_worker(self, worker_id: str, *, heartbeat_stats: dict[str, Any] = UNSET) -> Worker:
        """Record a worker heartbeat; it also heartbeats the worker's active attempt."""

    @abc.abstractmethod
    async def query_workers(
        self,
        *,
        status_in: Sequence[WorkerStatus] | None = None,
        sort_by: str = "worker_id",
        sort_order: SortOrder = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[Worker]: ...

    # --- the store itself -----------------------------------------------------------------
    @abc.abstractmethod
    async def check_deadlines(self) -> int:
        """Time out or mark unresponsive every overdue attempt now; returns how many.

        A background watchdog does this on its own; call it to act at a chosen moment (tests
        with a manual clock do)."""

    @abc.abstractmethod
    async def statistics(self) -> StoreStatistics: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop background work and release files or connections. Idempotent."""

    async def __aenter__(self) -> LightningStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
