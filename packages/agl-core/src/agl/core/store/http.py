"""``http(s)://host:port``: a client of the store server (``agl store serve``).

The transport is `agl.core.store.http1`, a small keep-alive HTTP/1.1 client written for this
(its docstring says why: the client is on every rollout's path, and a general-purpose client
costs more per call than the server). Connections are kept per event loop, so threads with
their own loops can share one store object.

Retries: a request that never reached the server (connection refused) is retried whatever it
is; a request that may have been processed is retried only when repeating it is harmless —
reads, upserts, and enqueues and starts that carry a client-chosen id. A dequeue for a worker
whose answer was lost (the server killed after its commit) is recovered, not lost: the worker's
record says whether that dequeue claimed an attempt, and if so that attempt is returned (see
`HttpLightningStore.dequeue_rollout`); otherwise it is sent again. A 502 or 504 (a gateway's:
its upstream failed or was slow, perhaps after carrying the request out) counts as a lost answer
too; a 503 (a store whose database is unavailable) as not carried out. A 429 (a rate-limiting
gateway's Too Many Requests) was not carried out either, and is sent again whatever the call is;
the wait before the next try is the answer's ``Retry-After`` in seconds on a 429 or 503, else the
usual back-off; a wait that would end past ``retry_seconds`` gives up at once. A failed TLS handshake
(``https://`` to a plain-HTTP server, an untrusted certificate) is not retried: no retry mends
it. Errors the server answers (unknown id, bad input, illegal transition) are raised at once as
the same typed error the store raised.
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar
from urllib.parse import SplitResult, quote, urlencode, urlsplit

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, to_json

from agl.core.errors import AglError, AttemptNotFound, InvalidInput, NotFound, StoreUnavailable, StoreUrlError
from agl.core.ids import new_rollout_id
from agl.core.store.base import UNSET, LightningStore, Page, StoreStatistics
from agl.core.store.http1 import ConnectFailed, ConnectionPool, HandshakeFailed, RequestFailed
from agl.core.store.lifecycle import (
    as_json_object,
    as_json_value,
    as_rollout_request,
    check_finite,
    check_resources,
    check_wait_ids,
    check_wait_timeout,
    coerce_span,
    validate,
)
from agl.core.store.query import check_filter, check_id, check_query, check_rollout_filters
from agl.core.store.wire import (
    API_PREFIX,
    LONG_POLL_MAX_SECONDS,
    ErrorBody,
    PageBody,
    error_from_body,
    unsendable_token,
    unset_to_absent,
)
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
from agl.core.types.rollouts import ATTEMPT_STATUSES, ROLLOUT_MODES, ROLLOUT_STATUSES, check_status
from agl.core.types.workers import WORKER_STATUSES

T = TypeVar("T")
TOKEN_ENV = "AGL_STORE_TOKEN"
_RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
"""Answers of a store or gateway that is down, restarting or rate-limiting: sent again if the call
is idempotent, and always after a 429."""
_PACED_STATUS = frozenset({429, 503})
"""Refusals whose ``Retry-After`` says when to try again."""
_adapters: dict[Any, TypeAdapter[Any]] = {}
_request_list: TypeAdapter[list[RolloutRequest]] = TypeAdapter(list[RolloutRequest])


class _Unanswered(StoreUnavailable):
    """A request was sent but no answer came back: the server may have carried it out."""


def _config_body(config: RolloutConfig | dict[str, Any] | None) -> dict[str, Any] | None:
    """Checked here, as in process, so NaN or a wrong field is `InvalidInput`, not a server refusal."""
    if isinstance(config, dict):
        config = validate(RolloutConfig, **config)
    elif config is not None and not isinstance(config, RolloutConfig):
        raise InvalidInput(f"rollout config must be an object, got {type(config).__name__}")
    return None if config is None else config.model_dump(mode="json")


def _decode(payload: bytes, kind: Any) -> Any:
    """A store answer as ``kind``; anything else (a proxy's HTML page) is one clear `AglError`."""
    adapter = _adapters.get(kind)
    if adapter is None:
        adapter = _adapters[kind] = TypeAdapter(kind)
    try:
        return adapter.validate_json(payload)
    except ValidationError:
        name = getattr(kind, "__name__", str(kind))
        raise AglError(
            f"the store's answer is not a {name} (is the URL a store server's?): {_excerpt(payload)}"
        ) from None


def _retry_after_seconds(header: bytes | None) -> float | None:
    """The wait a ``Retry-After`` asks for, in its seconds form; its HTTP-date form, rare from a
    gateway, is not read (the usual back-off applies)."""
    if header is None or not header.strip().isdigit():
        return None
    return float(header)


def _excerpt(payload: bytes) -> str:
    return payload[:200].decode(errors="replace")


def _reason(payload: bytes) -> str:
    """An error answer's message: the server's `ErrorBody`, else the start of whatever came (HTML)."""
    try:
        return ErrorBody.model_validate_json(payload).message
    except ValidationError:
        return _excerpt(payload)


def _encode(body: Any) -> bytes:
    """A request body as JSON; what cannot be JSON is the caller's `InvalidInput`, not a crash."""
    try:
        return body.__pydantic_serializer__.to_json(body) if isinstance(body, BaseModel) else to_json(body)
    except PydanticSerializationError as error:
        raise InvalidInput(f"request is not JSON-serialisable (span attributes?): {error}") from None


def _segment(what: str, value: Any) -> str:
    """An id as one path segment, percent-encoded whole: "/" too, as the server routes on the path as sent."""
    check_id(what, value)
    return quote(value, safe="")


def _check_origin(url: str, parts: SplitResult) -> None:
    """Refuse when opened what would fail only at the first call (a bad port) or would leak: a
    password in the URL is never sent, yet error messages and logs would show it."""
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StoreUrlError(url, "expected http(s)://host[:port][/prefix]")
    try:
        parts.port  # noqa: B018 - parsed here for its ValueError
    except ValueError as error:
        raise StoreUrlError(url, str(error).lower()) from None
    if parts.username is not None:
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        raise StoreUrlError(shown, f"credentials in the URL are not sent; pass the token in {TOKEN_ENV}")


def _params(**values: Any) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in values.items():
        if value is None:
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            pairs.append((key, str(item)))
    return pairs


class HttpLightningStore(LightningStore):
    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        retry_seconds: float = 30.0,
        request_timeout: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        _check_origin(self.url, parts)
        self._api = quote(parts.path, safe="/:@!$&'()*+,;=~") + API_PREFIX
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        if token and (why := unsendable_token(token)) is not None:
            raise InvalidInput(f"store at {self.url}: {why} (the token given, or {TOKEN_ENV})")
        self.token = token or None
        """The bearer token sent (given, else ``$AGL_STORE_TOKEN``): runners this client starts get it."""
        headers = f"Host: {parts.netloc.rpartition('@')[2]}\r\nContent-Type: application/json\r\n"
        if token:
            headers += f"Authorization: Bearer {token}\r\n"
        self._headers = headers.encode("latin-1")
        self.retry_seconds = retry_seconds
        self.request_timeout = request_timeout
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ConnectionPool] = weakref.WeakKeyDictionary()
        self._dequeue_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
            weakref.WeakKeyDictionary()
        )
        self._last_claims: dict[str, str] = {}  # worker id -> the attempt id of the last claim answered to it

    # --- transport ------------------------------------------------------------------------
    def _pool(self) -> ConnectionPool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            pool = self._pools[loop] = ConnectionPool(self.url)
        return pool

    def _message(self, method: str, path: str, body: bytes, params: list[tuple[str, str]] | None) -> bytes:
        target = self._api + path
        if params:
            target += "?" + urlencode(params)
        head = f"{method} {target} HTTP/1.1\r\n".encode() + self._headers
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: list[tuple[str, str]] | None = None,
        idempotent: bool,
        timeout: float | None = None,
    ) -> bytes:
        pool = self._pool()
        request = self._message(method, path, b"" if body is None else _encode(body), params)
        give_up = time.monotonic() + self.retry_seconds
        delay = 0.05
        while True:
            asked: float | None = None  # the wait a Retry-After asks for
            try:
                status, payload, retry_after = await pool.request(request, timeout or self.request_timeout)
            except HandshakeFailed as error:
                raise StoreUnavailable(f"cannot reach the store at {self.url}: {error}") from None
            except ConnectFailed as error:
                problem: str = f"cannot reach the store at {self.url}: {error}"
            except RequestFailed as error:
                problem = f"store request {method} {path} failed: {error}"
                if not idempotent:  # it may have been carried out; repeating it could do it twice
                    raise _Unanswered(f"{problem}; it may have been carried out") from None
            else:
                if status < 300:
                    return payload
                if status not in _RETRYABLE_STATUS:
                    raise self._error(status, payload)
                problem = f"store answered {status} to {method} {path}: {_reason(payload)}"
                if not idempotent and status != 429:  # 429: refused, so safe to send again
                    if status == 503:  # not carried out; a gateway's 502/504 may follow one it forwarded that was
                        raise StoreUnavailable(f"{problem}; it was not carried out")
                    raise _Unanswered(f"{problem}; it may have been carried out")
                if status in _PACED_STATUS:
                    asked = _retry_after_seconds(retry_after)
            wait = delay if asked is None else max(asked, delay)  # at least the back-off: a "0" would spin
            if time.monotonic() + wait > give_up:  # a wait past the budget would end in one more refusal
                raise StoreUnavailable(f"{problem} (gave up after {self.retry_seconds:g} s)")
            await asyncio.sleep(wait)  # back off before the next try
            delay = min(delay * 2, 1.0)

    def _error(self, status: int, payload: bytes) -> AglError:
        """The typed error the server raised; what else answered (a proxy, a redirect) in one line."""
        if status == 401:
            return AglError(
                f"the store at {self.url} refused the request (HTTP 401: {_reason(payload)}); "
                f"set {TOKEN_ENV} to the server's token"
            )
        if status < 400:
            return AglError(f"the store at {self.url} answered HTTP {status}, a redirect, which is not followed")
        try:
            return error_from_body(ErrorBody.model_validate_json(payload))
        except ValidationError:
            return AglError(f"store answered HTTP {status}: {_excerpt(payload)}")

    async def _get_or_none(self, path: str, kind: Any) -> Any:
        try:
            return _decode(await self._call("GET", path, idempotent=True), kind)
        except NotFound:
            return None

    async def _page(self, path: str, item: type[T], **query: Any) -> Page[T]:
        body = _decode(await self._call("GET", path, params=_params(**query), idempotent=True), PageBody[item])  # type: ignore[valid-type]
        return Page(items=body.items, total=body.total, offset=body.offset, limit=body.limit)

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
        request = self._request(input, mode, resources_id, config, metadata, rollout_id)
        return _decode(await self._call("POST", "/rollouts", body=request, idempotent=True), Rollout)

    def _request(self, input: Any, mode: Any, resources_id: Any, config: Any, metadata: Any, rollout_id: Any) -> Any:
        """Validated here, with a client-chosen id, so bad input fails fast and a retry is harmless."""
        return validate(
            RolloutRequest,
            input=as_json_value(input, "rollout input"),
            mode=mode,
            resources_id=resources_id,
            config=config,
            metadata=None if metadata is None else as_json_value(metadata, "rollout metadata"),
            rollout_id=new_rollout_id() if rollout_id is None else rollout_id,
        )

    async def enqueue_many_rollouts(self, requests: Sequence[RolloutRequest]) -> list[Rollout]:
        checked = [as_rollout_request(r) for r in requests]
        # Checked as in process: the dump below wrote NaN as null and crashed on an object.
        as_json_value([request.input for request in checked], "rollout input")
        for request in checked:
            if request.metadata:
                as_json_object(request.metadata, "rollout metadata")
        plain = _request_list.dump_python(checked, mode="json")
        for request in plain:  # ids chosen here, in the dumped dicts: a model copy each cost more than the dump
            if request["rollout_id"] is None:
                request["rollout_id"] = new_rollout_id()
        body = {"requests": plain}
        return _decode(await self._call("POST", "/rollouts/batch", body=body, idempotent=True), list[Rollout])

    async def dequeue_rollout(self, worker_id: str | None = None) -> AttemptedRollout | None:
        """A dequeue whose answer is lost may have claimed a rollout. Without a worker id nothing
        tells whose claim it was, so it raises `StoreUnavailable`; with one, the claim is found
        through the worker's record (`_lost_claim`) and returned, or, if none was made, the
        dequeue is sent again. Dequeues for one worker id are therefore one at a time per event
        loop, and a worker id must not be shared by two clients."""
        check_id("worker_id", worker_id, optional=True)
        if worker_id is None:
            return await self._dequeue(None)
        async with self._dequeue_lock(worker_id):
            give_up = time.monotonic() + self.retry_seconds
            while True:
                try:
                    return self._noted(worker_id, await self._dequeue(worker_id))
                except _Unanswered:
                    if time.monotonic() > give_up:
                        raise
                    claimed = await self._lost_claim(worker_id)
                    if claimed is not None:
                        return self._noted(worker_id, claimed)

    async def _dequeue(self, worker_id: str | None) -> AttemptedRollout | None:
        payload = await self._call("POST", "/dequeue", body={"worker_id": worker_id}, idempotent=False)
        return _decode(payload, AttemptedRollout | None)

    def _dequeue_lock(self, worker_id: str) -> asyncio.Lock:
        locks = self._dequeue_locks.setdefault(asyncio.get_running_loop(), {})
        return locks.setdefault(worker_id, asyncio.Lock())

    def _noted(self, worker_id: str | None, claimed: T) -> T:
        """Remember the last claim answered for ``worker_id``: `_lost_claim` must not return it again."""
        if worker_id is not None and isinstance(claimed, AttemptedRollout):
            self._last_claims[worker_id] = claimed.attempt.attempt_id
        return claimed

    async def _lost_claim(self, worker_id: str) -> AttemptedRollout | None:
        """The attempt an unanswered dequeue claimed for ``worker_id``, or None if it claimed none.

        A claim makes its attempt the worker's current one, started at the worker's last dequeue
        time, and nothing but its holder moves it past ``preparing``. So the lost claim is the
        current attempt if it is such an attempt and not the last claim this client received;
        anything else means the dequeue was not carried out, found the queue empty, or its
        attempt has since been ended (by the watchdog): then there is nothing to return.
        """
        worker = await self.update_worker(worker_id)  # a heartbeat, answered with the worker's record
        rollout_id, attempt_id = worker.current_rollout_id, worker.current_attempt_id
        if rollout_id is None or attempt_id is None or attempt_id == self._last_claims.get(worker_id):
            return None
        rollout = await self.get_rollout_by_id(rollout_id)
        attempt = await self.get_latest_attempt(rollout_id)
        if rollout is None or attempt is None or attempt.attempt_id != attempt_id:
            return None
        if attempt.status != "preparing" or attempt.start_time != worker.last_dequeue_time:
            return None
        return AttemptedRollout(**dict(rollout), attempt=attempt)

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
        request = self._request(input, mode, resources_id, config, metadata, rollout_id)
        check_id("worker_id", worker_id, optional=True)
        body = {**request.model_dump(mode="json"), "worker_id": worker_id}
        payload = await self._call("POST", "/rollouts/start", body=body, idempotent=True)
        return self._noted(worker_id, _decode(payload, AttemptedRollout))

    async def start_attempt(self, rollout_id: str, worker_id: str | None = None) -> AttemptedRollout:
        check_id("worker_id", worker_id, optional=True)
        payload = await self._call(
            "POST",
            f"/rollouts/{_segment('rollout_id', rollout_id)}/attempts",
            body={"worker_id": worker_id},
            idempotent=False,
        )
        return self._noted(worker_id, _decode(payload, AttemptedRollout))

    async def get_rollout_by_id(self, rollout_id: str) -> Rollout | None:
        return await self._get_or_none(f"/rollouts/{_segment('rollout_id', rollout_id)}", Rollout)

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
        body = {
            "status_in": None if status_in is None else list(status_in),
            "rollout_id_in": None if rollout_id_in is None else list(rollout_id_in),
            "mode": mode,
            "resources_id": resources_id,
            "sort_by": sort_by,
            "sort_order": sort_order,
            "limit": limit,
            "offset": offset,
        }
        page = _decode(await self._call("POST", "/rollouts/query", body=body, idempotent=True), PageBody[Rollout])
        return Page(items=page.items, total=page.total, offset=page.offset, limit=page.limit)

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
        if status is not UNSET:
            check_status("rollout status", status, ROLLOUT_STATUSES)
        if mode not in (UNSET, None):
            check_status("rollout mode", mode, ROLLOUT_MODES)
        body = unset_to_absent(
            input=input if input is UNSET else as_json_value(input, "rollout input"),
            mode=mode,
            resources_id=resources_id,
            status=status,
            config=config if config is UNSET else _config_body(config),
            metadata=metadata if metadata is UNSET else as_json_object(metadata, "rollout metadata"),
        )
        return _decode(
            await self._call("PATCH", f"/rollouts/{_segment('rollout_id', rollout_id)}", body=body, idempotent=True),
            Rollout,
        )

    async def wait_for_rollouts(self, rollout_ids: Sequence[str], timeout: float | None = None) -> list[Rollout]:
        """Long-polls the server in slices of at most its cap until ``timeout`` (no client busy loop)."""
        check_wait_timeout(timeout)
        wanted = check_wait_ids(rollout_ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = LONG_POLL_MAX_SECONDS if deadline is None else max(0.0, deadline - time.monotonic())
            poll = min(remaining, LONG_POLL_MAX_SECONDS)
            payload = await self._call(
                "POST",
                "/rollouts/wait",
                body={"rollout_ids": wanted, "timeout": poll},
                idempotent=True,
                timeout=poll + self.request_timeout,
            )
            finished = _decode(payload, list[Rollout])
            if len(finished) == len(wanted) or (deadline is not None and time.monotonic() >= deadline):
                return finished

    # --- attempts -------------------------------------------------------------------------
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
        check_filter("status_in", status_in, ATTEMPT_STATUSES)
        return await self._page(
            f"/rollouts/{_segment('rollout_id', rollout_id)}/attempts",
            Attempt,
            status_in=None if status_in is None else list(status_in),
            sort_by=sort_by,
            sort_order=sort_order,
            limit=limit,
            offset=offset,
        )

    async def get_latest_attempt(self, rollout_id: str) -> Attempt | None:
        try:
            return _decode(
                await self._call(
                    "GET", f"/rollouts/{_segment('rollout_id', rollout_id)}/attempts/latest", idempotent=True
                ),
                Attempt,
            )
        except AttemptNotFound:
            return None

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
        if last_heartbeat_time is not UNSET:
            check_finite("Attempt: last_heartbeat_time", last_heartbeat_time)
        if worker_id is not UNSET:
            check_id("worker_id", worker_id, optional=True)
        body = unset_to_absent(
            status=status,
            worker_id=worker_id,
            last_heartbeat_time=last_heartbeat_time,
            metadata=metadata if metadata is UNSET else as_json_object(metadata, "attempt metadata"),
        )
        path = f"/rollouts/{_segment('rollout_id', rollout_id)}/attempts/{_segment('attempt_id', attempt_id)}"
        return _decode(await self._call("PATCH", path, body=body, idempotent=True), Attempt)

    # --- spans ----------------------------------------------------------------------------
    async def add_span(self, span: Span) -> Span:
        checked = coerce_span(span)
        return _decode(await self._call("POST", "/spans", body=checked, idempotent=True), Span)

    async def add_many_spans(self, spans: Sequence[Span]) -> list[Span]:
        body = {"spans": [coerce_span(span) for span in spans]}
        return _decode(await self._call("POST", "/spans/batch", body=body, idempotent=True), list[Span])

    async def add_observed_spans(
        self, spans: Sequence[Span], *, new_rollout_metadata: Mapping[str, dict[str, Any]] | None = None
    ) -> list[Span]:
        body = {
            "spans": [coerce_span(span) for span in spans],
            "new_rollout_metadata": None
            if new_rollout_metadata is None
            else {key: as_json_value(value, "rollout metadata") for key, value in new_rollout_metadata.items()},
        }
        return _decode(await self._call("POST", "/spans/observed", body=body, idempotent=True), list[Span])

    async def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        # Repeating this only skips a number, which is harmless.
        path = (
            f"/rollouts/{_segment('rollout_id', rollout_id)}/attempts/{_segment('attempt_id', attempt_id)}/sequence-ids"
        )
        payload = await self._call("POST", path, idempotent=True)
        return int(_decode(payload, dict[str, int])["sequence_id"])

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
        check_query("spans", sort_by, sort_order, limit, offset)
        check_id("attempt_id", attempt_id, optional=True)
        return await self._page(
            f"/rollouts/{_segment('rollout_id', rollout_id)}/spans",
            Span,
            attempt_id=attempt_id,
            name=name,
            sort_by=sort_by,
            sort_order=sort_order,
            limit=limit,
            offset=offset,
        )

    # --- resources ------------------------------------------------------------------------
    async def add_resources(self, resources: NamedResources) -> ResourcesUpdate:
        body = {"resources": check_resources(resources)}
        payload = await self._call("POST", "/resources", body=body, idempotent=False)
        return _decode(payload, ResourcesUpdate)

    async def update_resources(self, resources_id: str, resources: NamedResources) -> ResourcesUpdate:
        # Not retried once sent: a repeat would add a version.
        path = f"/resources/{_segment('resources_id', resources_id)}"
        body = {"resources": check_resources(resources)}
        return _decode(await self._call("PUT", path, body=body, idempotent=False), ResourcesUpdate)

    async def get_resources_by_id(self, resources_id: str) -> ResourcesUpdate | None:
        return await self._get_or_none(f"/resources/{_segment('resources_id', resources_id)}", ResourcesUpdate)

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        return await self._get_or_none("/resources/latest", ResourcesUpdate)

    async def query_resources(
        self, *, sort_by: str = "update_time", sort_order: str = "asc", limit: int | None = None, offset: int = 0
    ) -> Page[ResourcesUpdate]:
        check_query("resources", sort_by, sort_order, limit, offset)
        return await self._page(
            "/resources", ResourcesUpdate, sort_by=sort_by, sort_order=sort_order, limit=limit, offset=offset
        )

    # --- workers --------------------------------------------------------------------------
    async def update_worker(self, worker_id: str, *, heartbeat_stats: dict[str, Any] = UNSET) -> Worker:
        body = unset_to_absent(
            heartbeat_stats=heartbeat_stats
            if heartbeat_stats is UNSET
            else as_json_object(heartbeat_stats, "heartbeat stats")
        )
        return _decode(
            await self._call("PUT", f"/workers/{_segment('worker_id', worker_id)}", body=body, idempotent=True), Worker
        )

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
        return await self._page(
            "/workers",
            Worker,
            status_in=None if status_in is None else list(status_in),
            sort_by=sort_by,
            sort_order=sort_order,
            limit=limit,
            offset=offset,
        )

    # --- the store itself -----------------------------------------------------------------
    async def check_deadlines(self) -> int:
        return int(_decode(await self._call("POST", "/deadlines", idempotent=True), dict[str, int])["enforced"])

    async def statistics(self) -> StoreStatistics:
        return _decode(await self._call("GET", "/statistics", idempotent=True), StoreStatistics)

    async def close(self) -> None:
        """Closes this event loop's connections; those of other, finished loops go with their loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        pool = self._pools.pop(loop, None)
        if pool is not None:
            pool.close()
