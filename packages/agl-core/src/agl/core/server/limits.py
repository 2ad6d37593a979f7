"""Request-size limit as pure ASGI middleware: refuses by Content-Length before reading, and
counts streamed (chunked) bodies as they arrive, so an oversized body is never held whole.

When a streamed body crosses the limit, the app is told the client went away (so it stops
reading), whatever it then tries to send is dropped, and the client gets a 413.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agl.core.otlp import TRACES_PATH, request_error


def store_error(limit: int) -> bytes:
    """The store server's error shape (`ErrorBody`)."""
    return b'{"error":"BodyTooLarge","message":"request body exceeds %d bytes","detail":{}}' % limit


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, error_body: Callable[[int], bytes] | None = None) -> None:
        """``error_body(limit)`` is the 413's JSON: each server answers in its own API's error shape.
        None is the store server's: `store_error`, but on its OTLP path the ``google.rpc.Status``
        OTLP/HTTP requires."""
        self.app = app
        self.max_bytes = max_bytes
        self.error_body = error_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and b"transfer-encoding" not in headers:
            if int(declared) > self.max_bytes:
                await self._refuse(scope, send)
            else:  # the HTTP parser delivers no more than the declared length: nothing to count
                await self.app(scope, receive, send)
            return
        received = 0
        exceeded = False

        async def limited() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                exceeded = True
                return {"type": "http.disconnect"}
            return message

        async def unless_exceeded(message: Message) -> None:
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, limited, unless_exceeded)
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        body, content_type = self._error(scope)
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _error(self, scope: Scope) -> tuple[bytes, bytes]:
        """The 413's body and content type."""
        if self.error_body is not None:
            return self.error_body(self.max_bytes), b"application/json"
        if scope["path"] == TRACES_PATH:
            return request_error(scope["headers"], 413, f"request body exceeds {self.max_bytes} bytes")
        return store_error(self.max_bytes), b"application/json"
