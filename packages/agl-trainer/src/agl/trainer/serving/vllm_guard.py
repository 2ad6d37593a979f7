"""The token check vLLM's server runs under agl: every path but the health checks needs the bearer token.

Why: vLLM's own ``--api-key`` guards only paths under ``/v1``, ``/v2``, ``/inference`` and
``/cohere``, and lets every OPTIONS through; ``/invocations`` (SageMaker's route to the same chat
and completion handlers), ``/tokenize`` and, with ``VLLM_SERVER_DEV_MODE``, ``/collective_rpc``
and ``/pause`` answered anyone who could reach the port. `VllmServer` loads this as
``--middleware``, outside vLLM's own, with the token in ``$AGL_VLLM_TOKEN``: an environment only
its user can read, where an ``--api-key`` argument is on a command line every local user sees
(``ps``). Not in vLLM's ``$VLLM_API_KEY``, which would turn vLLM's check on too, and it reads the
header otherwise (one space after "Bearer", the token unstripped): one check decides.

A browser's CORS preflight (OPTIONS with ``Origin`` and ``Access-Control-Request-Method``) carries
no token and passes: vLLM's CORS middleware, inside, answers it without reaching a route.

Standard library only, and copied on its own next to vLLM (`VllmServer`): vLLM runs in an
environment of its own, which need not have agl installed.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

TOKEN_ENV = "AGL_VLLM_TOKEN"
OPEN_PATHS = frozenset({"/health", "/ping"})
"""vLLM's health checks (``/ping`` is SageMaker's)."""
UNAUTHORIZED = (
    b'{"error":{"message":"missing or wrong bearer token","type":"invalid_request_error","param":null,"code":401}}'
)
_REFUSAL_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", b"%d" % len(UNAUTHORIZED)),
    (b"www-authenticate", b"Bearer"),
]
POLICY_VIOLATION = 1008
_WHITESPACE = b" \t"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class BearerEverywhere:
    """ASGI middleware: HTTP requests and WebSocket handshakes without the token are refused.

    vLLM builds it with the app alone, so the token comes from `TOKEN_ENV`; none set is an error at
    start-up rather than a server left open."""

    def __init__(self, app: App) -> None:
        self.app = app
        token = os.environ.get(TOKEN_ENV, "").strip(" \t")
        if not token:
            raise RuntimeError(f"${TOKEN_ENV} is not set: the token guard has no token to check")
        self._expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._authorized(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": POLICY_VIOLATION})
        else:
            await send({"type": "http.response.start", "status": 401, "headers": _REFUSAL_HEADERS})
            await send({"type": "http.response.body", "body": UNAUTHORIZED})

    def _authorized(self, scope: Scope) -> bool:
        """Lifespan events, health checks, CORS preflights and requests carrying the token pass."""
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            return True
        headers = dict(scope["headers"])
        if scope.get("method") == "OPTIONS" and b"origin" in headers and b"access-control-request-method" in headers:
            return True
        given = bearer_token(headers.get(b"authorization", b""))
        return given is not None and hmac.compare_digest(given, self._expected)


def bearer_token(header: bytes) -> bytes | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (the scheme case-insensitive, any
    spaces after it, as `agl.core.server.auth.bearer_token` reads it); None for another scheme."""
    scheme, _, token = header.strip(_WHITESPACE).partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.lstrip(_WHITESPACE)
