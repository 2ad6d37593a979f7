"""Request-size limit as pure ASGI middleware: refuses by Content-Length before reading, and
counts streamed (chunked) bodies as they arrive, so an oversized body is never held whole."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agl.core.server.errors import BodyTooLarge


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # Raised inside the endpoint's body read; the app's AglError handler answers 413.
                raise BodyTooLarge(f"request body exceeds {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, send: Send) -> None:
        body = b'{"error":"BodyTooLarge","message":"request body exceeds %d bytes","detail":{}}' % self.max_bytes
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
