"""Bearer-token check as pure ASGI middleware: every route but /health.

A middleware, not a FastAPI dependency: it runs before routing and costs a header lookup,
where a per-route dependency costs a pass of FastAPI's dependency solver on every request.
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = frozenset({"/health"})


class TokenAuth:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):  # constant time: no timing oracle
                await _unauthorized(send)
                return
        await self.app(scope, receive, send)


async def _unauthorized(send: Send) -> None:
    body = b'{"error":"Unauthorized","message":"missing or wrong bearer token","detail":{}}'
    headers = [
        (b"content-type", b"application/json"),
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
