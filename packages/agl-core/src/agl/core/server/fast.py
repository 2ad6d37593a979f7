"""The hot store calls answered in plain ASGI, ahead of FastAPI's routing.

Why: one sequential client is bound by the HTTP stack, not the store. Measured in process on
the standard machine, FastAPI's per-request work (route matching, a `Request`, the dependency
solver, `json.loads` then validation from Python objects) costs 100-150 µs before the store is
reached; a whole ``enqueue`` here, store included, ~30 µs. The calls a runner makes for every
rollout and span go through here instead.

What stays the same: the FastAPI routes remain the documented source (the OpenAPI spec) and the
fallback; a fast route FastAPI does not declare is refused when the app starts. This middleware
sits innermost, after the token check, the body limit and the metrics, so those apply unchanged.
It answers only requests it understands whole — the exact method and path of a route below, a
JSON content type, a body that validates against the route's model, plain query values — and
hands every other request to FastAPI untouched, body included. So every malformed request gets
FastAPI's own answer; store errors get the same `error_response` the app's handler uses, and
anything unexpected propagates to the app's 500 handler as it would from a route.
`tests/test_server_fast.py` checks both paths agree.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI
from pydantic import TypeAdapter, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agl.core.errors import AglError, RolloutNotFound
from agl.core.server.errors import error_response
from agl.core.server.metrics import Metrics
from agl.core.store.base import LightningStore, Page
from agl.core.store.lifecycle import LifecycleStore
from agl.core.store.wire import (
    API_PREFIX,
    AttemptUpdateBody,
    DequeueBody,
    EnqueueManyBody,
    PageBody,
    RolloutUpdateBody,
    SpanBatchBody,
    sent_fields,
)
from agl.core.types import Attempt, AttemptedRollout, Rollout, RolloutRequest, Span

Handler = Callable[[tuple[str, ...], Any, dict[str, Any]], Awaitable[bytes]]

_INT = re.compile(r"[0-9]{1,18}")


class FastRoute:
    """One route of the API answered here; ``template`` is its path under the API prefix, as declared in ``routes/``."""

    def __init__(
        self,
        method: str,
        template: str,
        handle: Handler,
        body: type | None = None,
        query: dict[str, type] | None = None,
    ) -> None:
        self.method = method
        self.path = API_PREFIX + template  # as FastAPI's route has it: the metrics label by ``path``
        self.pattern = re.compile("^" + re.sub(r"\{\w+\}", "([^/]+)", self.path) + "$")
        self.static = "{" not in template
        self.handle = handle
        self.body = None if body is None else TypeAdapter(body)
        self.query = query  # None: the route takes no query parameters


def _dump(kind: Any) -> Callable[[Any], bytes]:
    return TypeAdapter(kind).dump_json


def _page_dump(item: type) -> Callable[[Page[Any]], bytes]:
    dump = TypeAdapter(PageBody[item]).dump_json  # type: ignore[valid-type]

    def page(value: Page[Any]) -> bytes:
        body = PageBody[item].model_construct(  # type: ignore[valid-type]
            items=value.items, total=value.total, offset=value.offset, limit=value.limit
        )
        return dump(body)

    return page


def _json_page(page: Page[bytes]) -> bytes:
    """What ``PageBody`` serialises to, for items that are JSON already."""
    limit = b"null" if page.limit is None else b"%d" % page.limit
    return b'{"items":[%b],"total":%d,"offset":%d,"limit":%b}' % (b",".join(page.items), page.total, page.offset, limit)


def routes(store: LightningStore, metrics: Metrics) -> list[FastRoute]:
    """The calls of every rollout's path; each does what its FastAPI route in ``routes/`` does."""
    rollout, rollouts, attempt = _dump(Rollout), _dump(list[Rollout]), _dump(Attempt)
    span, spans, claimed, span_page = _dump(Span), _dump(list[Span]), _dump(AttemptedRollout | None), _page_dump(Span)
    spans_received = metrics.spans.labels("rest")

    async def enqueue(_: tuple[str, ...], body: RolloutRequest, __: Any) -> bytes:
        # The body is a validated request already: enqueued as one, not taken apart and validated again.
        return rollout((await store.enqueue_many_rollouts([body]))[0])

    async def enqueue_many(_: tuple[str, ...], body: EnqueueManyBody, __: Any) -> bytes:
        return rollouts(await store.enqueue_many_rollouts(body.requests))

    async def dequeue(_: tuple[str, ...], body: DequeueBody, __: Any) -> bytes:
        return claimed(await store.dequeue_rollout(body.worker_id))

    async def get_rollout(ids: tuple[str, ...], _: Any, __: Any) -> bytes:
        found = await store.get_rollout_by_id(ids[0])
        if found is None:
            raise RolloutNotFound(ids[0])
        return rollout(found)

    async def update_rollout(ids: tuple[str, ...], body: RolloutUpdateBody, _: Any) -> bytes:
        return rollout(await store.update_rollout(ids[0], **sent_fields(body)))

    async def update_attempt(ids: tuple[str, ...], body: AttemptUpdateBody, _: Any) -> bytes:
        return attempt(await store.update_attempt(ids[0], ids[1], **sent_fields(body)))

    async def add_span(_: tuple[str, ...], body: Span, __: Any) -> bytes:
        added = await store.add_span(body)
        spans_received.inc()
        return span(added)

    async def add_many_spans(_: tuple[str, ...], body: SpanBatchBody, __: Any) -> bytes:
        added = await store.add_many_spans(body.spans)
        spans_received.inc(len(added))
        return spans(added)

    async def query_spans(ids: tuple[str, ...], _: Any, query: dict[str, Any]) -> bytes:
        arguments = {
            "name": query.get("name"),
            "sort_by": query.get("sort_by", "sequence_id"),
            "sort_order": query.get("sort_order", "asc"),
            "limit": query.get("limit"),
            "offset": query.get("offset", 0),
        }
        if isinstance(store, LifecycleStore):  # the spans' stored JSON, spliced into the page as it is
            stored = await store.query_span_json(ids[0], query.get("attempt_id"), **arguments)
            return _json_page(stored)
        return span_page(await store.query_spans(ids[0], query.get("attempt_id"), **arguments))

    span_query = {"attempt_id": str, "name": str, "sort_by": str, "sort_order": str, "limit": int, "offset": int}
    return [
        FastRoute("POST", "/spans", add_span, Span),
        FastRoute("POST", "/spans/batch", add_many_spans, SpanBatchBody),
        FastRoute("GET", "/rollouts/{rollout_id}/spans", query_spans, query=span_query),
        FastRoute("PATCH", "/rollouts/{rollout_id}/attempts/{attempt_id}", update_attempt, AttemptUpdateBody),
        FastRoute("POST", "/rollouts", enqueue, RolloutRequest),
        FastRoute("POST", "/rollouts/batch", enqueue_many, EnqueueManyBody),
        FastRoute("POST", "/dequeue", dequeue, DequeueBody),
        FastRoute("GET", "/rollouts/{rollout_id}", get_rollout),
        FastRoute("PATCH", "/rollouts/{rollout_id}", update_rollout, RolloutUpdateBody),
    ]


class FastPath:
    """ASGI middleware: answers the requests of ``fast_routes`` it fully understands, passes the rest on."""

    def __init__(self, app: ASGIApp, fastapi: FastAPI, fast_routes: list[FastRoute]) -> None:
        self.app = app
        self._static: dict[tuple[str, str], FastRoute] = {}
        self._templated: dict[str, list[FastRoute]] = {}
        documented = set(_documented(fastapi.routes))
        for fast in fast_routes:
            if (fast.method, fast.path) not in documented:  # a fast route FastAPI lacks is a bug
                raise LookupError(f"the fast path's {fast.method} {fast.path} is not a route of the app")
            if fast.static:
                self._static[fast.method, fast.path] = fast
            else:
                self._templated.setdefault(fast.method, []).append(fast)

    def _match(self, method: str, path: str) -> tuple[FastRoute, tuple[str, ...]] | None:
        fast = self._static.get((method, path))
        if fast is not None:
            return fast, ()
        for fast in self._templated.get(method, ()):
            found = fast.pattern.match(path)
            if found is not None:
                return fast, found.groups()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = None
        if scope["type"] == "http" and not scope.get("root_path"):
            matched = self._match(scope["method"], scope["path"])
        if matched is None:
            await self.app(scope, receive, send)
            return
        fast, ids = matched
        query: dict[str, Any] = {}
        if fast.query is not None:
            parsed = _query(scope["query_string"], fast.query)
            if parsed is None:
                await self.app(scope, receive, send)
                return
            query = parsed
        body = None
        if fast.body is not None:
            messages, raw = await _read_body(receive)
            if raw is None or not _is_json(scope["headers"]) or (body := _validate(fast.body, raw)) is None:
                await self.app(scope, _replay(messages, receive), send)
                return
        scope["route"] = fast  # where FastAPI's router puts its route: the metrics label it by path
        try:
            payload = await fast.handle(ids, body, query)
        except AglError as error:
            await error_response(error)(scope, receive, send)
            return
        headers = [(b"content-length", str(len(payload)).encode()), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _documented(routes: Iterable[Any]) -> Iterator[tuple[str, str]]:
    """(method, path) of every route in the OpenAPI spec, without building the spec (~0.4 s)."""
    for route in routes:
        included = getattr(route, "original_router", None)  # newer FastAPI keeps included routers whole
        if included is not None:
            yield from _documented(included.routes)
        elif getattr(route, "include_in_schema", False):
            for method in getattr(route, "methods", ()):
                yield method, route.path


async def _read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """Every message received, and the whole body (None when the client went away first)."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        if not message.get("more_body", False):
            if len(messages) == 1:
                return messages, message.get("body", b"")
            return messages, b"".join(m.get("body", b"") for m in messages)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that gives back what was already read, then carries on with the client."""
    pending = deque(messages)

    async def replayed() -> Message:
        return pending.popleft() if pending else await receive()

    return replayed


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
            return kind == b"application/json"
    return False  # FastAPI refuses a body without a content type: let it answer


def _validate(adapter: TypeAdapter[Any], raw: bytes) -> Any:
    try:
        return adapter.validate_json(raw)
    except ValidationError:
        return None


def _query(query_string: bytes, accepted: dict[str, type]) -> dict[str, Any] | None:
    """Plain query values (text, or unsigned decimal integers); None for anything else."""
    values: dict[str, Any] = {}
    if not query_string:
        return values
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        kind = accepted.get(key)
        if kind is None or key in values:  # FastAPI ignores unknown keys and keeps the last of repeats
            return None
        if kind is int:
            if not _INT.fullmatch(value):
                return None
            values[key] = int(value)
        else:
            values[key] = value
    return values
