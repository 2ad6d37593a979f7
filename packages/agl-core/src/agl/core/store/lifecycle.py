"""The store's behaviour, written once: queue, attempts, retries, heartbeats, deadlines, waiting.

A backend subclasses `LifecycleStore` and supplies storage primitives (the ``_get_*``,
``_save_*``… methods below) that run inside ``_transaction()``; this class decides what to
store. Keeping the state machine in one place is what lets every backend pass one
conformance suite.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, from_json, to_json

from agl.core.errors import AttemptNotFound, InvalidInput, InvalidTransition, RolloutNotFound
from agl.core.ids import new_attempt_id, new_resources_id, new_rollout_id
from agl.core.store.base import UNSET, LightningStore, Page, StoreStatistics
from agl.core.store.query import check_id, check_query
from agl.core.store.watchdog import Watchdog
from agl.core.tracing.semconv import PROCESS_EXIT_SPAN, PROCESS_OUTCOME
from agl.core.types import (
    Attempt,
    AttemptedRollout,
    NamedResources,
    ResourcesUpdate,
    Rollout,
    RolloutConfig,
    RolloutRequest,
    Span,
    Worker,
)
from agl.core.types.rollouts import (
    ACTIVE_ATTEMPT_STATUSES,
    ATTEMPT_STATUSES,
    QUEUED_ROLLOUT_STATUSES,
    ROLLOUT_MODES,
    ROLLOUT_STATUSES,
    TERMINAL_ATTEMPT_STATUSES,
    TERMINAL_ROLLOUT_STATUSES,
    check_attempt_transition,
    check_rollout_transition,
    check_status,
    rollout_status_after_attempt,
)
from agl.core.types.spans import MAX_INT64

logger = logging.getLogger(__name__)
DEFAULT_MAX_SPAN_BYTES = 16 * 1024 * 1024
WATCHDOG_PERIOD = 0.1
"""Seconds between watchdog ticks. A tick is cheap (no query unless something can be due)."""
SUSPENSION_SECONDS = 5.0
"""A gap this long between two watchdog ticks (50 periods; the wait between them takes no lock)
means the process or the machine was suspended, not busy."""

_DEFAULT_CONFIG = RolloutConfig()
_rollout_list: TypeAdapter[list[Rollout]] = TypeAdapter(list[Rollout])
M = TypeVar("M", bound=BaseModel)
StoredSpan = tuple[Span | None, bytes]
"""A span as a backend keeps it: the model when it holds one (memory), else None, and its JSON."""
_decode_span = Span.__pydantic_validator__.validate_json
_resources_adapter: TypeAdapter[NamedResources] = TypeAdapter(NamedResources)


def validate(model: type[M], **values: Any) -> M:
    """Build a model, turning pydantic's report into one-line `InvalidInput`."""
    try:
        return model(**values)
    except ValidationError as error:
        raise InvalidInput(describe_validation_error(model.__name__, error)) from None


def as_rollout_request(value: RolloutRequest | Mapping[str, Any]) -> RolloutRequest:
    """An item of `enqueue_many_rollouts`: a request, or the fields of one."""
    if isinstance(value, RolloutRequest):
        return value
    if not isinstance(value, Mapping):
        raise InvalidInput(f"a rollout request must be an object, got {type(value).__name__}")
    return validate(RolloutRequest, **value)


def describe_validation_error(what: str, error: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in e['loc']) or 'value'}: {e['msg']}" for e in error.errors()[:3]
    )
    return f"invalid {what}: {problems}"


def as_json_value(value: Any, what: str) -> Any:
    """Round-trip through JSON so every backend hands back the same plain data it will persist.

    NaN and infinities are refused, by every backend alike: JSON has no value for them (over HTTP
    they would arrive as null).
    """
    try:
        data = to_json(value, inf_nan_mode="constants")
    except PydanticSerializationError as error:
        raise InvalidInput(f"{what} is not JSON-serialisable: {error}") from None
    try:
        return from_json(data, allow_inf_nan=False)
    except ValueError as error:
        refused = error
    try:
        from_json(data)
    except ValueError:  # not for NaN or Infinity: nested beyond the parser's limit
        raise InvalidInput(f"{what} is not JSON-serialisable: {refused}") from None
    raise InvalidInput(f"{what} holds NaN or Infinity, which are not JSON")


def check_finite(what: str, value: Any) -> None:
    """For clients that send a float on its own: refused as the models of the in-process stores refuse it."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"invalid {what}: Input should be a finite number")


def check_wait_timeout(timeout: float | None) -> None:
    """A NaN deadline is never reached: `wait_for_rollouts` would wait, or poll, forever."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidInput(f"wait timeout must be a number of seconds or None, got {type(timeout).__name__}")
    if math.isnan(timeout):
        raise InvalidInput("wait timeout must be a number of seconds or None, not NaN")


def check_wait_ids(rollout_ids: Any) -> list[str]:
    """The ids to wait on, each once. A string was read as its letters ("rollout 'r' not found") and
    None was a TypeError."""
    if isinstance(rollout_ids, str | bytes) or not isinstance(rollout_ids, Iterable):
        raise InvalidInput(f"rollout_ids must be a list of ids, got {type(rollout_ids).__name__}")
    given = list(rollout_ids)
    for rollout_id in given:
        check_id("rollout_id", rollout_id)
    return list(dict.fromkeys(given))


def check_resources(resources: Any) -> NamedResources:
    """Resources as every backend stores them: validated, then through JSON, so memory keeps what
    SQLite and HTTP give back (lists, not tuples or sets) and a value that is not JSON (NaN, an
    object) is `InvalidInput`, not a crash in SQLite or a NaN kept only in memory."""
    try:
        checked = _resources_adapter.validate_python(resources)
    except ValidationError as error:
        raise InvalidInput(describe_validation_error("resources", error)) from None
    # Dumped first: through a model's own serializer, NaN would pass as null.
    return _resources_adapter.validate_python(as_json_value(_resources_adapter.dump_python(checked), "resources"))


def replace(model: M, changes: dict[str, Any]) -> M:
    """A changed copy of a frozen model, validated (pydantic's validator is faster than model_copy)."""
    try:
        return type(model)(**{**model.__dict__, **changes})
    except ValidationError as error:
        raise InvalidInput(describe_validation_error(type(model).__name__, error)) from None


def as_json_object(value: Any, what: str) -> dict[str, Any]:
    """Like `as_json_value`, for values that must be a JSON object (metadata, stats)."""
    plain = as_json_value(value, what)
    if not isinstance(plain, dict):
        raise InvalidInput(f"{what} must be an object, got {type(plain).__name__}")
    return plain


def encode_span(span: Span) -> bytes:
    """The span as JSON; a value that is not JSON-serialisable is `InvalidInput` naming the span."""
    try:
        return span.__pydantic_serializer__.to_json(span)
    except PydanticSerializationError as error:
        raise InvalidInput(f"span {span.span_id!r} ({span.name!r}) has attributes that are not JSON: {error}") from None


def encode_span_document(document: dict[str, Any]) -> bytes:
    """What `encode_span` gives for the span the document describes (pydantic's serializer writes
    NaN and infinities as null, as `orjson.dumps` does)."""
    return to_json(document, inf_nan_mode="null")


def coerce_span(span: Span | dict[str, Any]) -> Span:
    """A span to store. Its attempt must be named by id: ``"latest"`` passed the attempt check (as
    an alias) and the span was then filed under an attempt called "latest", which no query finds;
    resolving it instead would file a late span of one attempt under its retry."""
    if not isinstance(span, Span):
        try:
            span = Span.model_validate(span)
        except ValidationError as error:
            raise InvalidInput(describe_validation_error("span", error)) from None
    if span.attempt_id == "latest":
        raise InvalidInput(f"span {span.span_id!r} ({span.name!r}) must name its attempt by id, not 'latest'")
    return span


def _start_time(span: tuple[dict[str, Any], bytes | None]) -> float:
    return span[0]["start_time"] or 0.0


@dataclass(eq=False)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    event: asyncio.Event

    def wake(self) -> None:
        with suppress(RuntimeError):  # the waiter's loop is closed: nobody is listening any more
            self.loop.call_soon_threadsafe(self.event.set)


class LifecycleStore(LightningStore):
    """Implements `LightningStore` over storage primitives supplied by a subclass."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        watchdog_interval: float | None = 1.0,
        max_span_bytes: int = DEFAULT_MAX_SPAN_BYTES,
    ) -> None:
        self._clock = clock
        self._silence_counted_from = clock()
        """Workers' silence before this is not held against them (`_due_attempts`): the store's
        opening, or its resumption after a suspension (`_watchdog_tick`)."""
        self._last_tick_end: float | None = None
        self.max_span_bytes = max_span_bytes
        self._watchdog_interval = watchdog_interval
        self._next_deadline_check = 0.0
        self._waiters: set[_Waiter] = set()
        self._waiters_lock = threading.Lock()
        self._rollout_finished = False
        self._watchdog: Watchdog | None = None

    def _start_watchdog(self) -> None:
        """Called by a subclass once its storage is ready."""
        if self._watchdog_interval is not None:
            self._watchdog = Watchdog(self._watchdog_tick, WATCHDOG_PERIOD, f"agl-{type(self).__name__}-watchdog")
            self._watchdog.start()

    # --- storage primitives (called inside _transaction) ----------------------------------
    @abc.abstractmethod
    def _transaction(self) -> AbstractContextManager[None]:
        """Exclusive, atomic section: all primitives in it commit together or not at all."""

    def _read(self) -> AbstractContextManager[None]:
        """A consistent read; backends may make it cheaper than a write transaction."""
        return self._transaction()

    @abc.abstractmethod
    def _get_rollout(self, rollout_id: str) -> Rollout | None: ...

    @abc.abstractmethod
    def _insert_rollouts(self, rollouts: Sequence[Rollout], queued: bool) -> None: ...

    @abc.abstractmethod
    def _save_rollout(self, rollout: Rollout, queued: bool | None) -> None:
        """Replace a rollout. ``queued``: True puts it at the back of the queue, False takes it
        out, None leaves its place alone."""

    @abc.abstractmethod
    def _next_queued(self) -> Rollout | None:
        """The oldest queued rollout, left in place (saving it with ``queued=False`` claims it)."""

    @abc.abstractmethod
    def _get_attempt(self, attempt_id: str) -> Attempt | None: ...

    @abc.abstractmethod
    def _latest_attempt(self, rollout_id: str) -> Attempt | None: ...

    @abc.abstractmethod
    def _insert_attempt(self, attempt: Attempt) -> None: ...

    @abc.abstractmethod
    def _save_attempt(self, attempt: Attempt) -> None:
        """Replace an attempt that exists."""

    @abc.abstractmethod
    def _active_attempts(self) -> list[tuple[Attempt, RolloutConfig]]:
        """Attempts in preparing/running, with their rollout's config."""

    @abc.abstractmethod
    def _record_activity(self, attempt_id: str, heartbeat: float | None, next_sequence_id: int) -> None:
        """Set the attempt's heartbeat (if given) and raise its span counter to ``next_sequence_id``."""

    @abc.abstractmethod
    def _reserve_span_sequence_id(self, attempt_id: str, now: float) -> int:
        """The larger of the attempt's span counter and `sequence_clock(now)`, the counter then set
        past it. Capped at ``MAX_INT64 - 1``, so the counter stays a 64-bit integer even after a
        span that came with the largest id; past the cap, ids repeat it."""

    @abc.abstractmethod
    def _save_spans(self, spans: Sequence[tuple[Span, bytes]]) -> None:
        """Upsert spans, each with its JSON encoding."""

    @abc.abstractmethod
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
        """A rollout's spans (of one attempt if ``attempt_id``; named ``name`` if given), sorted and
        paged as `query_spans` says; the arguments are already checked."""

    def _save_span_documents(self, spans: Sequence[tuple[dict[str, Any], bytes]]) -> None:
        """`_save_spans` for span documents (see `add_observed_span_documents`); a backend that
        stores only the JSON overrides it to skip building the models."""
        self._save_spans([(Span.model_validate(document), data) for document, data in spans])

    @abc.abstractmethod
    def _get_resources(self, resources_id: str) -> ResourcesUpdate | None: ...

    @abc.abstractmethod
    def _latest_resources(self) -> ResourcesUpdate | None: ...

    @abc.abstractmethod
    def _save_resources(self, update: ResourcesUpdate) -> None:
        """Insert or replace; the saved one becomes the latest."""

    @abc.abstractmethod
    def _get_worker(self, worker_id: str) -> Worker | None: ...

    @abc.abstractmethod
    def _save_worker(self, worker: Worker) -> None: ...

    @abc.abstractmethod
    def _statistics(self) -> StoreStatistics: ...

    def _changed_elsewhere(self) -> bool:
        """True when another process may have changed the store since the last call."""
        return False

    # --- helpers --------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[None]:
        """A transaction that wakes `wait_for_rollouts` callers after it commits."""
        with self._transaction():
            self._rollout_finished = False
            yield
            finished = self._rollout_finished
        if finished:
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        with self._waiters_lock:
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.wake()

    def _require_rollout(self, rollout_id: str) -> Rollout:
        rollout = self._get_rollout(rollout_id)
        if rollout is None:
            raise RolloutNotFound(rollout_id)
        return rollout

    def _require_attempt(self, rollout_id: str, attempt_id: str) -> Attempt:
        attempt = self._latest_attempt(rollout_id) if attempt_id == "latest" else self._get_attempt(attempt_id)
        if attempt is None or attempt.rollout_id != rollout_id:
            self._require_rollout(rollout_id)
            raise AttemptNotFound(attempt_id if attempt_id != "latest" else f"latest of {rollout_id}")
        return attempt

    def _encode_span(self, span: Span) -> bytes:
        data = encode_span(span)
        if len(data) > self.max_span_bytes:
            raise InvalidInput(
                f"span {span.span_id!r} ({span.name!r}) is {len(data)} bytes; the limit is {self.max_span_bytes}"
            )
        return data

    def _new_rollouts(self, requests: Sequence[RolloutRequest], status: str, now: float) -> list[Rollout]:
        """Build rollouts in bulk: one JSON round trip and one validator call for the whole batch."""
        inputs = as_json_value([request.input for request in requests], "rollout input")
        return _rollout_list.validate_python(
            [
                {
                    "rollout_id": request.rollout_id or new_rollout_id(),
                    "input": value,
                    "mode": request.mode,
                    "resources_id": request.resources_id,
                    "status": status,
                    "config": request.config or _DEFAULT_CONFIG,
                    "metadata": as_json_object(request.metadata, "rollout metadata") if request.metadata else {},
                    "start_time": now,
                }
                for request, value in zip(requests, inputs, strict=True)
            ]
        )

    def _enqueue(self, requests: Sequence[RolloutRequest], now: float) -> list[Rollout]:
        """Queue new rollouts in one write; a client-chosen id seen before returns the earlier rollout."""
        chosen: dict[str, Rollout | None] = {}  # client-chosen id -> its rollout (None until built)
        to_create: list[RolloutRequest] = []
        for request in requests:
            rollout_id = request.rollout_id
            if rollout_id is None:
                to_create.append(request)
            elif rollout_id not in chosen:
                chosen[rollout_id] = self._get_rollout(rollout_id)
                if chosen[rollout_id] is None:
                    to_create.append(request)
        fresh = self._new_rollouts(to_create, "queuing", now)
        self._insert_rollouts(fresh, queued=True)
        built = list(zip(to_create, fresh, strict=True))
        anonymous = iter([rollout for request, rollout in built if request.rollout_id is None])
        chosen.update({request.rollout_id: rollout for request, rollout in built if request.rollout_id is not None})
        return [chosen[r.rollout_id] if r.rollout_id is not None else next(anonymous) for r in requests]  # type: ignore[misc]

    def _begin_attempt(
        self, rollout: Rollout, worker_id: str | None, now: float, *, first: bool = False
    ) -> AttemptedRollout:
        # A rollout still "queuing" (or just created) has never had an attempt.
        latest = None if first or rollout.status == "queuing" else self._latest_attempt(rollout.rollout_id)
        attempt = Attempt(
            rollout_id=rollout.rollout_id,
            attempt_id=new_attempt_id(),
            sequence_id=latest.sequence_id + 1 if latest else 1,
            worker_id=worker_id,
            start_time=now,
        )
        self._insert_attempt(attempt)
        rollout = replace(rollout, {"status": "preparing"})
        self._save_rollout(rollout, queued=False)
        if worker_id is not None:
            self._worker_took(worker_id, attempt, now)
        return AttemptedRollout(**rollout.__dict__, attempt=attempt)

    def _set_rollout_status(self, rollout: Rollout, status: str, now: float) -> Rollout:
        check_rollout_transition(rollout.rollout_id, rollout.status, status)
        update: dict[str, Any] = {"status": status}
        if status in TERMINAL_ROLLOUT_STATUSES:
            update["end_time"] = now
            self._rollout_finished = True
        if status == "requeuing":
            queued: bool | None = True
        elif rollout.status in QUEUED_ROLLOUT_STATUSES:
            queued = False
        else:
            queued = None
        rollout = replace(rollout, update)
        self._save_rollout(rollout, queued=queued)
        return rollout

    def _set_attempt_status(self, attempt: Attempt, status: str, now: float, *, cascade: bool = True) -> Attempt:
        check_attempt_transition(attempt.attempt_id, attempt.status, status)
        update: dict[str, Any] = {"status": status}
        if status in TERMINAL_ATTEMPT_STATUSES:
            update["end_time"] = now
        attempt = replace(attempt, update)
        self._save_attempt(attempt)
        if status in TERMINAL_ATTEMPT_STATUSES and attempt.worker_id is not None:
            self._worker_released(attempt.worker_id, attempt, now)
        if cascade:
            self._cascade_to_rollout(attempt, now)
        return attempt

    def _cascade_to_rollout(self, attempt: Attempt, now: float) -> None:
        """Carry the latest attempt's status over to its rollout, applying the retry policy."""
        rollout = self._get_rollout(attempt.rollout_id)
        if rollout is None or rollout.is_terminal:
            return
        latest = self._latest_attempt(rollout.rollout_id)
        if latest is None or latest.attempt_id != attempt.attempt_id:
            return  # an older attempt no longer drives its rollout
        status = rollout_status_after_attempt(attempt, rollout.config)
        if status != rollout.status:
            self._set_rollout_status(rollout, status, now)

    def _note_spans(self, attempt: Attempt, max_sequence_id: int, now: float) -> None:
        """A span is a heartbeat; the first one moves a preparing attempt to running."""
        active = attempt.status in ACTIVE_ATTEMPT_STATUSES
        self._record_activity(attempt.attempt_id, now if active else None, min(max_sequence_id + 1, MAX_INT64))
        if attempt.status == "preparing":
            self._set_attempt_status(replace(attempt, {"last_heartbeat_time": now}), "running", now)

    def _worker_took(self, worker_id: str, attempt: Attempt, now: float) -> None:
        worker = self._get_worker(worker_id) or Worker(worker_id=worker_id)
        self._save_worker(
            replace(
                worker,
                {
                    "status": "busy",
                    "last_dequeue_time": now,
                    "last_busy_time": now,
                    "current_rollout_id": attempt.rollout_id,
                    "current_attempt_id": attempt.attempt_id,
                },
            )
        )

    def _active_attempts_of(self, worker_id: str) -> list[Attempt]:
        return [attempt for attempt, _ in self._active_attempts() if attempt.worker_id == worker_id]

    def _worker_released(self, worker_id: str, attempt: Attempt, now: float) -> None:
        """The worker stays busy (with another of its attempts as current) until its last one ends."""
        worker = self._get_worker(worker_id)
        if worker is None or worker.current_attempt_id != attempt.attempt_id:
            return
        others = [a for a in self._active_attempts_of(worker_id) if a.attempt_id != attempt.attempt_id]
        if others:
            latest = max(others, key=lambda a: a.start_time)
            self._save_worker(
                replace(worker, {"current_rollout_id": latest.rollout_id, "current_attempt_id": latest.attempt_id})
            )
        else:
            self._save_worker(
                replace(
                    worker,
                    {
                        "status": "idle",
                        "last_idle_time": now,
                        "current_rollout_id": None,
                        "current_attempt_id": None,
                    },
                )
            )

    # --- rollouts -------------------------------------------------------------------------
    async def enqueue_rollout(
        self,
        input: Any,
        *,
        mode: Any = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
        rollout_id: str | None = None,
    ) -> Rollout:
        request = validate(
            RolloutRequest,
            input=input,
            mode=mode,
            resources_id=resources_id,
            config=config,
            metadata=metadata,
            rollout_id=rollout_id,
        )
        with self._write():
            return self._enqueue([request], self._clock())[0]

    async def enqueue_many_rollouts(self, requests: Sequence[RolloutRequest]) -> list[Rollout]:
        checked = [as_rollout_request(r) for r in requests]
        with self._write():
            now = self._clock()
            return self._enqueue(checked, now)

    async def dequeue_rollout(self, worker_id: str | None = None) -> AttemptedRollout | None:
        check_id("worker_id", worker_id, optional=True)
        with self._write():
            now = self._clock()
            rollout = self._next_queued()
            if rollout is None:
                if worker_id is not None:
                    worker = self._get_worker(worker_id) or Worker(worker_id=worker_id, status="idle")
                    self._save_worker(replace(worker, {"last_dequeue_time": now}))
                return None
            return self._begin_attempt(rollout, worker_id, now)

    async def start_rollout(
        self,
        input: Any,
        *,
        mode: Any = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
        worker_id: str | None = None,
        rollout_id: str | None = None,
    ) -> AttemptedRollout:
        request = validate(
            RolloutRequest,
            input=input,
            mode=mode,
            resources_id=resources_id,
            config=config,
            metadata=metadata,
            rollout_id=rollout_id,
        )
        check_id("worker_id", worker_id, optional=True)
        with self._write():
            now = self._clock()
            existing = None if rollout_id is None else self._get_rollout(rollout_id)
            if existing is not None:
                latest = self._latest_attempt(rollout_id)  # type: ignore[arg-type]
                if latest is not None:
                    return AttemptedRollout(**existing.__dict__, attempt=latest)
                raise InvalidTransition("rollout", existing.rollout_id, existing.status, "preparing")
            (rollout,) = self._new_rollouts([request], "preparing", now)
            self._insert_rollouts([rollout], queued=False)
            return self._begin_attempt(rollout, worker_id, now, first=True)

    async def start_attempt(self, rollout_id: str, worker_id: str | None = None) -> AttemptedRollout:
        check_id("rollout_id", rollout_id)
        check_id("worker_id", worker_id, optional=True)
        with self._write():
            rollout = self._require_rollout(rollout_id)
            latest = self._latest_attempt(rollout_id)
            if rollout.is_terminal or (latest is not None and not latest.is_terminal):
                raise InvalidTransition("rollout", rollout_id, rollout.status, "preparing")
            return self._begin_attempt(rollout, worker_id, self._clock())

    async def update_rollout(
        self,
        rollout_id: str,
        *,
        input: Any = UNSET,
        mode: Any = UNSET,
        resources_id: str | None = UNSET,
        status: Any = UNSET,
        config: RolloutConfig = UNSET,
        metadata: dict[str, Any] = UNSET,
    ) -> Rollout:
        check_id("rollout_id", rollout_id)
        changes: dict[str, Any] = {}
        if status is not UNSET:
            check_status("rollout status", status, ROLLOUT_STATUSES)
        if mode is not UNSET:
            if mode is not None:
                check_status("rollout mode", mode, ROLLOUT_MODES)
            changes["mode"] = mode
        if input is not UNSET:
            changes["input"] = as_json_value(input, "rollout input")
        if resources_id is not UNSET:
            changes["resources_id"] = resources_id
        if config is not UNSET:
            if isinstance(config, RolloutConfig):
                changes["config"] = config
            elif isinstance(config, dict):
                changes["config"] = validate(RolloutConfig, **config)
            else:
                raise InvalidInput(f"rollout config must be an object, got {type(config).__name__}")
        with self._write():
            now = self._clock()
            rollout = self._require_rollout(rollout_id)
            if metadata is not UNSET:
                changes["metadata"] = {**rollout.metadata, **as_json_object(metadata, "rollout metadata")}
            rollout = replace(rollout, changes)
            if status is UNSET or status == rollout.status:
                self._save_rollout(rollout, queued=None)
                return rollout
            if status in ("queuing", "preparing", "running"):
                # These follow from enqueueing and from attempts, never from a direct update.
                raise InvalidTransition("rollout", rollout_id, rollout.status, status)
            check_rollout_transition(rollout_id, rollout.status, status)
            latest = self._latest_attempt(rollout_id)
            if latest is not None and not latest.is_terminal:
                ending = "succeeded" if status == "succeeded" else "failed"
                self._set_attempt_status(latest, ending, now, cascade=False)
            return self._set_rollout_status(rollout, status, now)

    async def get_rollout_by_id(self, rollout_id: str) -> Rollout | None:
        check_id("rollout_id", rollout_id)
        with self._read():
            return self._get_rollout(rollout_id)

    async def wait_for_rollouts(self, rollout_ids: Sequence[str], timeout: float | None = None) -> list[Rollout]:
        check_wait_timeout(timeout)
        wanted = check_wait_ids(rollout_ids)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        waiter = _Waiter(loop, asyncio.Event())
        with self._waiters_lock:
            self._waiters.add(waiter)
        try:
            while True:
                waiter.event.clear()  # before reading, so a finish during the read is not missed
                with self._read():
                    rollouts = [self._require_rollout(rollout_id) for rollout_id in wanted]
                finished = [r for r in rollouts if r.is_terminal]
                remaining = None if deadline is None else deadline - loop.time()
                if len(finished) == len(wanted) or (remaining is not None and remaining <= 0):
                    return finished
                with suppress(TimeoutError):
                    await asyncio.wait_for(waiter.event.wait(), remaining)
        finally:
            with self._waiters_lock:
                self._waiters.discard(waiter)

    # --- attempts -------------------------------------------------------------------------
    async def get_latest_attempt(self, rollout_id: str) -> Attempt | None:
        check_id("rollout_id", rollout_id)
        with self._read():
            return self._latest_attempt(rollout_id)

    async def update_attempt(
        self,
        rollout_id: str,
        attempt_id: str | Literal["latest"],
        *,
        status: Any = UNSET,
        worker_id: str | None = UNSET,
        last_heartbeat_time: float = UNSET,
        metadata: dict[str, Any] = UNSET,
    ) -> Attempt:
        if status is not UNSET:
            check_status("attempt status", status, ATTEMPT_STATUSES)
        check_id("rollout_id", rollout_id)
        check_id("attempt_id", attempt_id)
        if worker_id is not UNSET:
            check_id("worker_id", worker_id, optional=True)
        with self._write():
            now = self._clock()
            attempt = self._require_attempt(rollout_id, attempt_id)
            previous_worker = attempt.worker_id
            changes: dict[str, Any] = {}
            if worker_id is not UNSET:
                changes["worker_id"] = worker_id
            if last_heartbeat_time is not UNSET:
                changes["last_heartbeat_time"] = last_heartbeat_time
            if metadata is not UNSET:
                changes["metadata"] = {**attempt.metadata, **as_json_object(metadata, "attempt metadata")}
            attempt = replace(attempt, changes)
            if status is not UNSET and status != attempt.status:
                attempt = self._set_attempt_status(attempt, status, now)
            elif changes:
                self._save_attempt(attempt)
            if worker_id is not UNSET and worker_id != previous_worker:
                # The worker that gave the attempt up is released, or it stayed busy with it forever.
                if previous_worker is not None:
                    self._worker_released(previous_worker, attempt, now)
                if worker_id is not None and not attempt.is_terminal:
                    self._worker_took(worker_id, attempt, now)
            return attempt

    # --- spans ----------------------------------------------------------------------------
    async def query_spans(
        self,
        rollout_id: str,
        attempt_id: str | None = None,
        *,
        name: str | None = None,
        sort_by: str = "sequence_id",
        sort_order: str = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[Span]:
        page = self._stored_spans(rollout_id, attempt_id, name, sort_by, sort_order, limit, offset)
        items = [span if span is not None else _decode_span(data) for span, data in page.items]
        return Page(items=items, total=page.total, offset=offset, limit=limit)

    async def query_span_json(
        self,
        rollout_id: str,
        attempt_id: str | None = None,
        *,
        name: str | None = None,
        sort_by: str = "sequence_id",
        sort_order: str = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[bytes]:
        """`query_spans` giving each span as the JSON stored for it (`encode_span`'s), not a model.

        The store server answers span queries with these bytes as they are: building models only to
        serialise them again cost more than the query itself (~7 µs per LLM-sized span).
        """
        page = self._stored_spans(rollout_id, attempt_id, name, sort_by, sort_order, limit, offset)
        return Page(items=[data for _, data in page.items], total=page.total, offset=offset, limit=limit)

    def _stored_spans(
        self,
        rollout_id: str,
        attempt_id: str | None,
        name: str | None,
        sort_by: str,
        sort_order: str,
        limit: int | None,
        offset: int,
    ) -> Page[StoredSpan]:
        """The arguments checked and ``latest`` resolved, then the backend's `_span_page`."""
        check_id("rollout_id", rollout_id)
        check_id("attempt_id", attempt_id, optional=True)
        check_query("spans", sort_by, sort_order, limit, offset)
        if attempt_id == "latest":
            with self._read():
                latest = self._latest_attempt(rollout_id)
            if latest is None:
                return Page(items=[], total=0, offset=offset, limit=limit)
            attempt_id = latest.attempt_id
        return self._span_page(rollout_id, attempt_id, name, sort_by, sort_order, limit, offset)

    async def add_span(self, span: Span) -> Span:
        span = coerce_span(span)
        data = self._encode_span(span)
        with self._write():
            attempt = self._require_attempt(span.rollout_id, span.attempt_id)
            self._save_spans([(span, data)])
            self._note_spans(attempt, span.sequence_id, self._clock())
        return span

    async def add_many_spans(self, spans: Sequence[Span]) -> list[Span]:
        checked = [coerce_span(span) for span in spans]
        encoded = [(span, self._encode_span(span)) for span in checked]
        highest: dict[tuple[str, str], int] = {}
        for span in checked:
            key = (span.rollout_id, span.attempt_id)
            highest[key] = max(highest.get(key, 0), span.sequence_id)
        with self._write():
            now = self._clock()
            attempts = [self._require_attempt(rollout_id, attempt_id) for rollout_id, attempt_id in highest]
            self._save_spans(encoded)
            for attempt, max_sequence_id in zip(attempts, highest.values(), strict=True):
                self._note_spans(attempt, max_sequence_id, now)
        return checked

    async def add_observed_spans(
        self, spans: Sequence[Span], *, new_rollout_metadata: Mapping[str, dict[str, Any]] | None = None
    ) -> list[Span]:
        checked = sorted((coerce_span(span) for span in spans), key=lambda s: s.start_time or 0.0)
        metadata = {
            key: as_json_value(value, "rollout metadata") for key, value in (new_rollout_metadata or {}).items()
        }
        with self._write():
            now = self._clock()
            attempts: dict[tuple[str, str], Attempt] = {}
            stored: list[tuple[Span, bytes]] = []
            for span in checked:
                key = (span.rollout_id, span.attempt_id)
                if key not in attempts:
                    attempts[key] = self._observed_attempt(
                        span.rollout_id, span.attempt_id, span.start_time, metadata.get(span.rollout_id, {}), now
                    )
                if span.sequence_id == 0:
                    span = replace(span, {"sequence_id": self._reserve_span_sequence_id(span.attempt_id, now)})
                stored.append((span, self._encode_span(span)))
            self._save_spans(stored)
            highest: dict[tuple[str, str], int] = {}
            for span, _ in stored:
                key = (span.rollout_id, span.attempt_id)
                highest[key] = max(highest.get(key, 0), span.sequence_id)
            for key, max_sequence_id in highest.items():
                self._note_spans(attempts[key], max_sequence_id, now)
            self._finish_observed_traces([span for span, _ in stored], now)
            return [span for span, _ in stored]

    async def add_observed_span_documents(
        self,
        spans: Sequence[tuple[dict[str, Any], bytes | None]],
        *,
        new_rollout_metadata: Mapping[str, dict[str, Any]] | None = None,
        encode: Callable[[dict[str, Any]], bytes] = encode_span_document,
    ) -> None:
        """`add_observed_spans` for spans given as documents, without a `Span` model per span.

        The OTLP ingest path (`agl.core.otlp.decode_documents`): for LLM-sized spans, building and
        serialising the models took longer than decoding the protobuf. Each span is a document,
        what ``span.model_dump()`` gives for a valid `Span` (same keys in the same order, plain
        dicts and lists, ids within `Id`'s bounds), and its JSON, ``encode(document)``, or None for
        the store to encode it. Neither is checked, so ``encode`` must write what `encode_span`
        would (`orjson.dumps` does, several times faster than the default).

        Everything else is as `add_observed_spans`: one transaction, spans in start-time order,
        ``sequence_id`` 0 replaced by the attempt's next id (in the document, which is then encoded
        again), ``max_span_bytes`` enforced, observed rollouts created and finished.
        """
        ordered = sorted(spans, key=_start_time)
        metadata = {
            key: as_json_value(value, "rollout metadata") for key, value in (new_rollout_metadata or {}).items()
        }
        with self._write():
            now = self._clock()
            attempts: dict[tuple[str, str], Attempt] = {}
            highest: dict[tuple[str, str], int] = {}
            stored: list[tuple[dict[str, Any], bytes]] = []
            for document, data in ordered:
                rollout_id, attempt_id = document["rollout_id"], document["attempt_id"]
                key = (rollout_id, attempt_id)
                if key not in attempts:
                    attempts[key] = self._observed_attempt(
                        rollout_id, attempt_id, document["start_time"], metadata.get(rollout_id, {}), now
                    )
                sequence_id = document["sequence_id"]
                if sequence_id == 0:
                    sequence_id = document["sequence_id"] = self._reserve_span_sequence_id(attempt_id, now)
                    data = None
                if sequence_id > highest.get(key, 0):
                    highest[key] = sequence_id
                if data is None:
                    data = self._encode_document(document, encode)
                if len(data) > self.max_span_bytes:
                    raise InvalidInput(
                        f"span {document['span_id']!r} ({document['name']!r}) is {len(data)} bytes;"
                        f" the limit is {self.max_span_bytes}"
                    )
                stored.append((document, data))
            self._save_span_documents(stored)
            for key, max_sequence_id in highest.items():
                self._note_spans(attempts[key], max_sequence_id, now)
            # Only root spans can finish a rollout: the few there are become models.
            roots = [Span.model_validate(document) for document, _ in ordered if document["parent_id"] is None]
            self._finish_observed_traces(roots, now)

    @staticmethod
    def _encode_document(document: dict[str, Any], encode: Callable[[dict[str, Any]], bytes]) -> bytes:
        try:
            return encode(document)
        except (TypeError, ValueError, PydanticSerializationError) as error:  # orjson raises a TypeError
            raise InvalidInput(
                f"span {document['span_id']!r} ({document['name']!r}) has attributes that are not JSON: {error}"
            ) from None

    def _observed_attempt(
        self, rollout_id: str, attempt_id: str, start_time: float | None, metadata: dict[str, Any], now: float
    ) -> Attempt:
        """The span's attempt, created (with its observed rollout if need be) when missing."""
        attempt = self._get_attempt(attempt_id)
        if attempt is not None:
            if attempt.rollout_id != rollout_id:
                raise AttemptNotFound(attempt_id)
            return attempt
        if attempt_id == "latest":  # as `coerce_span` refuses it; OTLP spans reach here without it
            raise InvalidInput(f"observed spans of rollout {rollout_id!r} must name their attempt by id, not 'latest'")
        rollout = self._get_rollout(rollout_id)
        if rollout is None:
            rollout = Rollout(
                rollout_id=rollout_id,
                input=None,
                status="running",
                metadata={"observed": True, **metadata},
                start_time=start_time or now,
            )
            self._insert_rollouts([rollout], queued=False)
        elif not rollout.metadata.get("observed"):
            raise AttemptNotFound(attempt_id)  # queued rollouts get attempts only by dequeue/start
        latest = self._latest_attempt(rollout.rollout_id)
        attempt = Attempt(
            rollout_id=rollout.rollout_id,
            attempt_id=attempt_id,
            sequence_id=latest.sequence_id + 1 if latest else 1,
            status="running",
            start_time=start_time or now,
            last_heartbeat_time=now,
        )
        self._insert_attempt(attempt)
        return attempt

    def _finish_observed_traces(self, spans: Sequence[Span], now: float) -> None:
        """End observed rollouts whose end arrived: a per-trace one with its root span, a per-process
        one with the program's exit span (which carries the outcome)."""
        for span in spans:
            if span.parent_id is not None:
                continue
            rollout = self._get_rollout(span.rollout_id)
            if rollout is None or rollout.is_terminal or not rollout.metadata.get("observed"):
                continue
            if span.name == PROCESS_EXIT_SPAN:
                outcome = "failed" if span.attributes.get(PROCESS_OUTCOME) == "failed" else "succeeded"
            elif rollout.metadata.get("trace_id") == span.trace_id:
                outcome = "failed" if span.status.status_code == "ERROR" else "succeeded"
            else:
                continue
            attempt = self._get_attempt(span.attempt_id)
            if attempt is not None and not attempt.is_terminal:
                self._set_attempt_status(attempt, outcome, now)

    async def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        check_id("rollout_id", rollout_id)
        check_id("attempt_id", attempt_id)
        with self._write():
            attempt = self._require_attempt(rollout_id, attempt_id)
            return self._reserve_span_sequence_id(attempt.attempt_id, self._clock())

    # --- resources ------------------------------------------------------------------------
    def _put_resources(self, resources_id: str, resources: NamedResources) -> ResourcesUpdate:
        checked = check_resources(resources)
        with self._write():
            now = self._clock()
            existing = self._get_resources(resources_id)
            update = ResourcesUpdate(
                resources_id=resources_id,
                version=existing.version + 1 if existing else 1,
                create_time=existing.create_time if existing else now,
                update_time=now,
                resources=checked,
            )
            self._save_resources(update)
            return update

    async def add_resources(self, resources: NamedResources) -> ResourcesUpdate:
        return self._put_resources(new_resources_id(), resources)

    async def update_resources(self, resources_id: str, resources: NamedResources) -> ResourcesUpdate:
        check_id("resources_id", resources_id)
        if resources_id == "latest":
            raise InvalidInput("resources_id 'latest' is reserved: it names the latest resources")
        return self._put_resources(resources_id, resources)

    async def get_resources_by_id(self, resources_id: str) -> ResourcesUpdate | None:
        """``"latest"`` is the latest resources, as over HTTP, where ``/resources/latest`` is that route."""
        check_id("resources_id", resources_id)
        with self._read():
            return self._latest_resources() if resources_id == "latest" else self._get_resources(resources_id)

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        with self._read():
            return self._latest_resources()

    # --- workers --------------------------------------------------------------------------
    async def update_worker(self, worker_id: str, *, heartbeat_stats: dict[str, Any] = UNSET) -> Worker:
        check_id("worker_id", worker_id)
        with self._write():
            now = self._clock()
            worker = self._get_worker(worker_id) or Worker(worker_id=worker_id, status="idle")
            update: dict[str, Any] = {"last_heartbeat_time": now}
            if heartbeat_stats is not UNSET:
                update["heartbeat_stats"] = as_json_object(heartbeat_stats, "heartbeat stats")
            worker = replace(worker, update)
            self._save_worker(worker)
            for attempt in self._active_attempts_of(worker_id):  # a runner may hold several at once
                self._record_activity(attempt.attempt_id, now, 0)
            return worker

    # --- deadlines ------------------------------------------------------------------------
    def _due_attempts(self, now: float) -> list[tuple[Attempt, str]]:
        due = []
        for attempt, config in self._active_attempts():
            if config.timeout_seconds is not None and now - attempt.start_time > config.timeout_seconds:
                due.append((attempt, "timeout"))
            elif config.unresponsive_seconds is not None:
                # A store opened anew (a server restarted after a crash) or resumed (a suspended
                # machine or process) counts silence from then: workers could not reach it, and
                # marking every attempt unresponsive at its first tick would requeue running work.
                last_sign_of_life = max(attempt.last_heartbeat_time or attempt.start_time, self._silence_counted_from)
                if now - last_sign_of_life > config.unresponsive_seconds:
                    due.append((attempt, "unresponsive"))
        return due

    async def check_deadlines(self) -> int:
        # The watchdog thread calls _enforce_deadlines every ``watchdog_interval`` seconds.
        return self._enforce_deadlines()

    def _enforce_deadlines(self) -> int:
        now = self._clock()
        with self._read():
            if not self._due_attempts(now):
                return 0
        with self._write():
            due = self._due_attempts(now)  # again, under the write lock: another process may have acted
            for attempt, status in due:
                self._set_attempt_status(attempt, status, now)
            return len(due)

    def _watchdog_tick(self) -> None:
        self._notice_suspension()
        if self._waiters and self._changed_elsewhere():
            self._wake_waiters()
        now = time.monotonic()
        if now >= self._next_deadline_check:
            self._next_deadline_check = now + (self._watchdog_interval or 0.0)
            self._enforce_deadlines()
        self._last_tick_end = self._clock()

    def _notice_suspension(self) -> None:
        """After a suspension (a laptop's sleep, a stopped process) the clock has jumped: count
        workers' silence from now, as after a restart. The gap is measured from the previous tick's
        end, so a tick slowed by a busy store does not count; a timeout still counts the whole time."""
        now = self._clock()
        if self._last_tick_end is not None and now - self._last_tick_end > SUSPENSION_SECONDS:
            logger.info(
                "store resumed after %.0f s without a watchdog tick; workers' silence counts from now",
                now - self._last_tick_end,
            )
            self._silence_counted_from = now

    async def statistics(self) -> StoreStatistics:
        with self._read():
            return self._statistics()

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
