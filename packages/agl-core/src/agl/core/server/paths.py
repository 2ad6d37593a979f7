"""Ids in URL paths: each one percent-encoded as a whole segment, routed on the raw path.

Why: ids are client-chosen text ("a/b", "", "50%") and every backend in process takes them as
they are. The server decodes the path before routing, so an id's encoded slash (``%2F``) split it
into two segments and an empty id left ``//``: the route was not found. `RawPath` routes on the
path as sent, and the ``agl_id`` convertor of every id parameter decodes the one segment it
matched, empty included.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from starlette.convertors import Convertor, register_url_convertor
from starlette.types import ASGIApp, Receive, Scope, Send


class IdConvertor(Convertor[str]):
    regex = "[^/]*"

    def convert(self, value: str) -> str:
        return unquote(value)

    def to_string(self, value: str) -> str:
        return quote(value, safe="")


register_url_convertor("agl_id", IdConvertor())


class RawPath:
    """ASGI middleware: the path as the client sent it (still percent-encoded) for routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path")
            scope["path"] = quote(scope["path"]) if raw is None else raw.decode("latin-1")
        await self.app(scope, receive, send)
