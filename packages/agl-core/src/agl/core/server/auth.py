"""Bearer-token check as pure ASGI middleware: every route but /health, WebSocket handshakes included.

A middleware, not a FastAPI dependency: it runs before routing and costs a header lookup,
where a per-route dependency costs a pass of FastAPI's dependency solver on every request.
It also guards what no route declares (``/openapi.json``, unknown paths), so a server's whole
surface is closed to a client without the token.
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from agl.core.errors import InvalidInput
from agl.core.otlp import TRACES_PATH, request_error
from agl.core.store.wire import unsendable_token

OPEN_PATHS = frozenset({"/health"})
UNAUTHORIZED_MESSAGE = "missing or wrong bearer token"
STORE_UNAUTHORIZED = b'{"error":"Unauthorized","message":"missing or wrong bearer token","detail":{}}'
"""The store server's 401 (`ErrorBody`); the OpenAI-compatible servers pass their own shape."""
POLICY_VIOLATION = 1008
"""WebSocket close code for a refused handshake (the server answers it as a 403)."""
_WHITESPACE = b" \t"


def check_token(token: str) -> None:
    """Refuse a blank token, which would guard nothing (``Authorization: Bearer`` alone would
    match), and one no client can send (`unsendable_token`). Called when an app is built:
    Starlette makes its middleware only at the first request."""
    if not token.strip(" \t"):
        raise InvalidInput("the token is blank: set a real token, or none to serve without one")
    if (why := unsendable_token(token)) is not None:
        raise InvalidInput(why)


def bearer_token(header: bytes) -> bytes | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, None for any other scheme.

    RFC 7235 makes the scheme case-insensitive (``bearer`` is ``Bearer``) and lets any run of
    spaces follow it; whitespace around the header's value is not part of it (RFC 9110).
    """
    scheme, _, token = header.strip(_WHITESPACE).partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.lstrip(_WHITESPACE)


class TokenAuth:
    def __init__(self, app: ASGIApp, token: str, error_body: bytes | None = None) -> None:
        """``error_body`` is the 401's JSON: each server answers in its own API's error shape.
        None is the store server's: `STORE_UNAUTHORIZED`, but on its OTLP path the
        ``google.rpc.Status`` OTLP/HTTP requires. ``token`` has passed `check_token`."""
        self.app = app
        self._expected = token.strip(" \t").encode()  # as `bearer_token` reads the header
        self._error_body = error_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._authorized(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": POLICY_VIOLATION})
        elif self._error_body is not None:
            await _unauthorized(send, self._error_body)
        elif scope["path"] == TRACES_PATH:
            await _unauthorized(send, *request_error(scope["headers"], 401, UNAUTHORIZED_MESSAGE))
        else:
            await _unauthorized(send, STORE_UNAUTHORIZED)

    def _authorized(self, scope: Scope) -> bool:
        """Lifespan events, /health, and requests carrying the token pass."""
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            return True
        given = bearer_token(dict(scope["headers"]).get(b"authorization", b""))
        return given is not None and hmac.compare_digest(given, self._expected)  # constant time: no timing oracle


async def _unauthorized(send: Send, body: bytes, content_type: bytes = b"application/json") -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b"Bearer"),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def document_bearer_auth(app: FastAPI) -> None:
    """Declare the token in the OpenAPI spec (the middleware enforces it)."""
    make_spec = app.openapi

    def spec() -> dict:
        if app.openapi_schema is None:
            schema = make_spec()
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "AGL_STORE_TOKEN"}
            }
            schema["security"] = [{"bearer": []}]
            schema["paths"]["/health"]["get"]["security"] = []
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = spec  # type: ignore[method-assign]
