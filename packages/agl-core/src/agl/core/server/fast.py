"""The hot store calls answered in plain ASGI, ahead of FastAPI's routing.

Why: one sequential client is bound by the HTTP stack, not the store. Measured in process on
the standard machine, FastAPI's per-request work (route matching, a `Request`, the dependency
solver, `json.loads` then validation from Python objects) costs 100-150 µs before the store is
reached; a whole ``enqueue`` here, store included, ~30 µs. The calls a runner makes for every
rollout and span go through here instead.

What stays the same: the FastAPI routes remain the documented source (the OpenAPI spec) and the
fallback; a fast route FastAPI does not declare is refused when the app starts. Both call the
same `HotCalls`, so they differ only in how a request is parsed. This middleware
sits innermost, after the token check, the body limit and the metrics, so those apply unchanged.
It answers only requests it understands whole — the exact method and path of a route below, a
JSON content type, a body that is strict JSON (`server.bodies`) and validates against the route's
model, plain query values — and hands every other request to FastAPI untouched, body included.
So every malformed request gets FastAPI's own answer; store errors get the same `error_response`
the app's handler uses, and anything unexpected propagates to the app's 500 handler as it would
from a route.
`tests/test_server_fast.py` checks both paths agree.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote

from fastapi import FastAPI
from pydantic import TypeAdapter, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agl.core.errors import AglError
from agl.core.server.bodies import check_json
from agl.core.server.calls import HotCalls
from agl.core.server.errors import error_response
from agl.core.store.wire import (
    API_PREFIX,
    AttemptUpdateBody,
    DequeueBody,
    EnqueueManyBody,
    RolloutUpdateBody,
    SpanBatchBody,
)
from agl.core.types import RolloutRequest, Span

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
        self.path = API_PREFIX + template  # FastAPI's route's path_format: the metrics label by ``path``
        # Ids are matched and decoded as `paths.IdConvertor` does; an empty one ("/rollouts/") is
        # left to FastAPI: no rollout's path makes such a call.
        self.pattern = re.compile("^" + re.sub(r"\{\w+\}", "([^/]+)", self.path) + "$")
        self.static = "{" not in template
        self.handle = handle
        self.body = None if body is None else TypeAdapter(body)
        self.query = query  # None: the route takes no query parameters


def routes(calls: HotCalls) -> list[FastRoute]:
    """The calls of every rollout's path, as FastAPI's routes in ``routes/`` serve them (`HotCalls`)."""

    def query_spans(ids: tuple[str, ...], _: Any, query: dict[str, Any]) -> Awaitable[bytes]:
        return calls.query_spans(ids[0], **query)  # the keys are the store's own argument names

    span_query = {"attempt_id": str, "name": str, "sort_by": str, "sort_order": str, "limit": int, "offset": int}
    return [
        FastRoute("POST", "/spans", lambda _, body, __: calls.add_span(body), Span),
        FastRoute("POST", "/spans/batch", lambda _, body, __: calls.add_many_spans(body), SpanBatchBody),
        FastRoute("GET", "/rollouts/{rollout_id}/spans", query_spans, query=span_query),
        FastRoute(
            "PATCH",
            "/rollouts/{rollout_id}/attempts/{attempt_id}",
            lambda ids, body, _: calls.update_attempt(ids[0], ids[1], body),
            AttemptUpdateBody,
        ),
        FastRoute("POST", "/rollouts", lambda _, body, __: calls.enqueue(body), RolloutRequest),
        FastRoute("POST", "/rollouts/batch", lambda _, body, __: calls.enqueue_many(body), EnqueueManyBody),
        FastRoute("POST", "/dequeue", lambda _, body, __: calls.dequeue(body), DequeueBody),
        FastRoute("GET", "/rollouts/{rollout_id}", lambda ids, _, __: calls.get_rollout(ids[0])),
        FastRoute(
            "PATCH",
            "/rollouts/{rollout_id}",
            lambda ids, body, _: calls.update_rollout(ids[0], body),
            RolloutUpdateBody,
        ),
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
                return fast, tuple(unquote(segment) for segment in found.groups())
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
    """(method, path) of every route in the OpenAPI spec, without building the spec (~0.4 s); the path
    as the spec has it, without convertors (``{rollout_id}``, not ``{rollout_id:agl_id}``)."""
    for route in routes:
        included = getattr(route, "original_router", None)  # newer FastAPI keeps included routers whole
        if included is not None:
            yield from _documented(included.routes)
        elif getattr(route, "include_in_schema", False):
            for method in getattr(route, "methods", ()):
                yield method, route.path_format


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
    """The body as the route's model; None when FastAPI must answer it (pydantic's parser alone
    would take NaN, Infinity and 1e999)."""
    try:
        check_json(raw)
        return adapter.validate_json(raw)
    except (json.JSONDecodeError, ValidationError):
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
