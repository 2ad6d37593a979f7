"""The proxy's HTTP app: OpenAI-compatible routes under ``/rollout/{rollout_id}/attempt/{attempt_id}/v1``.

Each call is checked (token, ids, JSON), numbered in its attempt by the store (an unknown rollout
or attempt is refused before the engine spends anything on it), forwarded to the rollout's engine
asking for token ids and logprobs, and recorded as one LLM-call span, which is in the store before
the agent has the whole reply. Errors are OpenAI's JSON shape with a one-line message, so an
openai client raises its usual typed exceptions: 400 bad ids or body, 401 token, 404 unknown
rollout/attempt or route, 413 body too large, 502 no engine answered (or answered nonsense), 503
the store is unavailable, 504 the engine's reply broke off or stalled. What the engine itself
answered (a 4xx, a 500) is passed on as it is. An agent that disconnects before the reply (its
client timed out) ends the call: the engine's request is closed and the span says "cancelled".
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agl.core.errors import AglError, NotFound
from agl.core.server.auth import TokenAuth, check_token
from agl.core.store.base import LightningStore
from agl.trainer.proxy.forward import (
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    BrokenReply,
    Forwarder,
    NoEngineAnswered,
    RetryPolicy,
    Sent,
    new_session,
)
from agl.trainer.proxy.routing import Upstreams
from agl.trainer.proxy.shape import PATHS, Asked, Endpoint, asked, reshape, upstream_body
from agl.trainer.proxy.spans import CallRecord
from agl.trainer.serving.openai_wire import error_body, not_found

logger = logging.getLogger("agl.trainer.proxy")

PREFIX = "/rollout/{rollout_id}/attempt/{attempt_id}/v1"
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_ID_LENGTH = 256
_JSON = "application/json"
_AGENT_LEFT = "the agent closed the connection before the reply"
_T = TypeVar("_T")


def create_proxy_app(
    store: LightningStore,
    upstreams: Upstreams,
    *,
    token: str | None = None,
    upstream_token: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    retry: RetryPolicy = DEFAULT_RETRY,
    timeout: float = DEFAULT_TIMEOUT,
    on_startup: Callable[[], None] | None = None,
) -> FastAPI:
    """The app around ``store`` and ``upstreams`` (both owned by the caller). Its HTTP client is
    made on the serving event loop at start-up and closed at shutdown; ``on_startup`` is called
    once it is ready."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with new_session(timeout) as session:
            calls.forwarder = Forwarder(session, upstreams, retry=retry, upstream_token=upstream_token)
            if on_startup is not None:
                on_startup()
            yield

    app = FastAPI(
        title="agl LLM proxy", docs_url=None, redoc_url=None, lifespan=lifespan, **_without_native_telemetry()
    )
    calls = _Calls(store, max_body_bytes)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code != 404:
            return _error(error.status_code, str(error.detail))
        where = "no such route; calls go to /rollout/{rollout_id}/attempt/{attempt_id}/v1/..."
        return _error(404, not_found(request.url.path, where))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(PREFIX + "/chat/completions", response_model=None)
    async def chat_completions(request: Request, rollout_id: str, attempt_id: str) -> Response:
        return await calls.handle("chat", request, rollout_id, attempt_id)

    @app.post(PREFIX + "/completions", response_model=None)
    async def completions(request: Request, rollout_id: str, attempt_id: str) -> Response:
        return await calls.handle("completions", request, rollout_id, attempt_id)

    @app.get(PREFIX + "/models", response_model=None)
    async def rollout_models(rollout_id: str, attempt_id: str) -> Response:
        return await calls.models(rollout_id)

    @app.get("/v1/models", response_model=None)
    async def models() -> Response:
        return await calls.models("")

    if token:
        check_token(token)
        unauthorized = json.dumps(error_body("missing or wrong bearer token", 401)).encode()
        # A middleware, so every route is guarded, /openapi.json and unknown paths included.
        app.add_middleware(TokenAuth, token=token, error_body=unauthorized)
    return app


class _Calls:
    """The handlers' shared state and steps."""

    def __init__(self, store: LightningStore, max_body_bytes: int) -> None:
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.forwarder: Forwarder | None = None

    async def models(self, rollout_id: str) -> Response:
        assert self.forwarder is not None
        try:
            sent = await self.forwarder.send(rollout_id, "GET", "/models")
        except NoEngineAnswered as error:
            return _error(502, str(error))
        except BrokenReply as error:
            return _error(504, f"the engine's reply broke off: {error}")
        try:
            payload = await sent.read()
        except BrokenReply as error:
            return _error(504, f"the engine's reply broke off: {error}")
        finally:
            await sent.close()
        return Response(payload, sent.status, media_type=sent.content_type)

    async def handle(self, endpoint: Endpoint, request: Request, rollout_id: str, attempt_id: str) -> Response:
        for name, value in (("rollout id", rollout_id), ("attempt id", attempt_id)):
            if not _valid_id(value):
                return _error(400, f"malformed {name} {value[:80]!r}")
        raw = await _body_within(request, self.max_body_bytes)
        if raw is None:
            return _error(413, f"the request body exceeds {self.max_body_bytes} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # nested past the parser's depth: not JSON it can read
            return _error(400, "the request body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object")
        agent = asked(endpoint, body)
        try:
            content = json.dumps(upstream_body(endpoint, body, agent), ensure_ascii=False).encode()
        except UnicodeEncodeError:  # JSON's "\ud800": a lone surrogate, which UTF-8 (and the store) cannot carry
            return _error(400, "the request body holds a lone surrogate (\\ud800-\\udfff), which is not text")
        try:
            sequence_id = await self.store.get_next_span_sequence_id(rollout_id, attempt_id)
        except NotFound as error:
            return _error(404, _one_line(str(error)))
        except AglError as error:
            return _error(503, f"the store is unavailable: {_one_line(str(error))}")
        record = CallRecord(
            endpoint,
            body,
            rollout_id=rollout_id,
            attempt_id=attempt_id,
            sequence_id=sequence_id,
            traceparent=request.headers.get("traceparent"),
        )
        assert self.forwarder is not None
        try:
            sent = await self._unless_agent_leaves(
                request, record, self.forwarder.send(rollout_id, "POST", PATHS[endpoint], content)
            )
        except NoEngineAnswered as error:
            record.fail(type(error).__name__, str(error))
            await self.save(record)
            return _error(502, str(error))
        except BrokenReply as error:
            record.fail(type(error).__name__, f"the engine's reply broke off: {error}")
            await self.save(record)
            return _error(504, f"the engine's reply broke off: {error}")
        if sent is None:
            return _error(499, _AGENT_LEFT)
        record.upstream = sent.url
        if sent.status == 200 and sent.content_type.startswith("text/event-stream"):
            relay = _Relay(endpoint, sent, record, agent, self.save)
            return StreamingResponse(relay.events(), media_type="text/event-stream")
        try:
            payload = await self._unless_agent_leaves(request, record, sent.read())
            if payload is None:
                return _error(499, _AGENT_LEFT)
        except BrokenReply as error:
            record.fail(type(error).__name__, f"the engine's reply broke off: {error}")
            await self.save(record)
            return _error(504, f"the engine's reply broke off: {error}")
        finally:
            await sent.close()
        status = sent.status
        if status != 200:
            answer = _one_line(payload.decode(errors="replace"))
            record.fail(f"http.{status}", f"the engine answered {status}: {answer}")
            await self.save(record)
            return Response(payload, status, media_type=sent.content_type)
        try:
            data = json.loads(payload)
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except ValueError:
            record.fail("invalid_reply", "the engine's reply is not a JSON object")
            await self.save(record)
            return _error(502, "the engine's reply is not a JSON object")
        record.add_reply(data)
        await self.save(record)
        if not agent.everything:
            payload = json.dumps(reshape(endpoint, data, agent), ensure_ascii=False).encode()
        return Response(payload, 200, media_type=_JSON)

    async def _unless_agent_leaves(self, request: Request, record: CallRecord, work: Awaitable[_T]) -> _T | None:
        """``work``'s result, or None if the agent disconnected first (its client timed out, say):
        the call is then stored as cancelled and ``work`` cancelled, so neither a reply the agent
        never got is recorded as its call (its retry is another) nor the engine generates for nobody."""
        task = asyncio.ensure_future(work)
        left = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait((task, left), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            left.cancel()
        if task.done():
            return task.result()
        record.fail("cancelled", _AGENT_LEFT)
        await self.save(record)
        task.cancel()
        await asyncio.wait((task,))
        return None

    async def save(self, record: CallRecord) -> None:
        """Store the call's span. The agent's call matters more than its record: a failure is logged."""
        try:
            await self.store.add_span(record.span())
        except Exception:
            where = f"{record.rollout_id}/{record.attempt_id}"
            logger.warning("could not record the LLM call of %s", where, exc_info=True)


class _Relay:
    """An engine's event stream passed to the agent as it arrives, each chunk also recorded; the
    span is stored before the stream's last event (``[DONE]``) goes out, so an agent that has read
    the whole stream finds its call in the store."""

    def __init__(
        self,
        endpoint: Endpoint,
        sent: Sent,
        record: CallRecord,
        agent: Asked,
        save: Callable[[CallRecord], Awaitable[None]],
    ) -> None:
        self.endpoint, self.sent, self.record, self.agent, self.save = endpoint, sent, record, agent, save
        self.saved = False

    async def events(self) -> AsyncIterator[bytes]:
        pending = b""
        try:
            async for data in self.sent.chunks():
                pending = (pending + data).replace(b"\r\n", b"\n")  # whole, or a CRLF cut in two stays
                *events, pending = pending.split(b"\n\n")
                if events:
                    out, done = self._relay(events)
                    if done:
                        await self._save()
                    yield out
            if pending.strip():
                out, _ = self._relay([pending])
                yield out
        except BrokenReply as error:
            if self.saved:  # after [DONE]: the agent has the whole reply, the call is complete
                return
            message = f"the engine's stream broke off: {error}"
            self.record.fail(type(error).__name__, message)
            await self._save()  # before the agent hears of it, as for a whole stream
            # an error event: openai clients raise it, where a stream merely cut short would look complete
            yield b"data: " + json.dumps(error_body(_one_line(message), 502)).encode() + b"\n\n"
        except (asyncio.CancelledError, GeneratorExit):  # cancelled awaiting the engine, or closed after a send failed
            self.record.fail("cancelled", "the agent closed the stream before its end")
            raise
        finally:
            await self.sent.close()
            if not self.saved:
                await asyncio.shield(self._save())

    def _relay(self, events: list[bytes]) -> tuple[bytes, bool]:
        """The bytes to send for complete events, and whether the last one (``[DONE]``) is among them."""
        out: list[bytes] = []
        done = False
        for event in events:
            payload = _data_of(event)
            if payload is None or payload == b"[DONE]":
                done = done or payload == b"[DONE]"
                out.append(event + b"\n\n")
                continue
            try:
                chunk = json.loads(payload)
            except ValueError:
                out.append(event + b"\n\n")
                continue
            if not isinstance(chunk, dict):
                out.append(event + b"\n\n")
                continue
            error = _error_event(chunk)
            if error is not None:  # the engine failed after answering 200: the call failed, in order or not
                self.record.fail("stream_error", f"the engine's stream ended in an error: {error}")
                out.append(event + b"\n\n")
                continue
            self.record.add_chunk(chunk)
            if self.agent.everything:
                out.append(event + b"\n\n")
            else:
                out.append(b"data: " + json.dumps(reshape(self.endpoint, chunk, self.agent)).encode() + b"\n\n")
        return b"".join(out), done

    async def _save(self) -> None:
        self.saved = True
        await self.save(self.record)


async def _disconnected(request: Request) -> None:
    """Returns once the agent has disconnected (its body is read: the server has nothing else to say)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _body_within(request: Request, limit: int) -> bytes | None:
    """The body, or None once it is over ``limit`` bytes (refused by its declared length before
    reading, else counted as it arrives, so an oversized body is never held whole)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            return None
        parts.append(part)
    return b"".join(parts)


def _without_native_telemetry() -> dict[str, Any]:
    """FastAPI's own tracing off (newer versions trace by default): the proxy records its calls
    itself, and the agent's tracing must not see the proxy's requests as its own."""
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    return {}


def _data_of(event: bytes) -> bytes | None:
    """The data of one server-sent event (its ``data:`` lines joined), None for a comment-only event."""
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def _error_event(chunk: dict[str, Any]) -> str | None:
    """The message of an error event (``{"error": {...}}``, as this project's servers and vLLM send)."""
    if "error" not in chunk:
        return None
    message = chunk["error"].get("message") if isinstance(chunk["error"], dict) else chunk["error"]
    return _one_line(message if isinstance(message, str) else json.dumps(chunk))


def _valid_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID_LENGTH and value.isprintable() and not any(c.isspace() for c in value)


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _error(status: int, message: str) -> JSONResponse:
    """OpenAI's error shape, which openai clients turn into their typed exceptions: the one `agl
    serve` (and vLLM) answer too, so an agent sees one shape whether the proxy or the engine refused."""
    return JSONResponse(error_body(_one_line(message), status), status)
