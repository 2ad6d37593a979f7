"""uvicorn's HTTP/1.1 protocol, with an answer's head and body sent to the socket in one write.

Why: uvicorn writes an answer's head and its body with two ``transport.write`` calls, so each is
a send(2) of its own and often a TCP segment of its own. A waiting client can wake for the head,
find no body, sleep and wake again. `HeadHoldingTransport` keeps a final answer's head back until
the next write (the body's first bytes) and sends both as one; the protocol sends a head still
held when uvicorn completes the answer (a HEAD request's has no body), and closing or half-closing
sends it first. Nothing is deferred to a later turn of the event loop, and interim answers
(``100 Continue``) go out at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_INTERIM = (b"HTTP/1.1 1", b"HTTP/1.0 1")


class HeadHoldingTransport:
    """A transport that holds a final answer's head until the next write; everything else is the
    wrapped transport's."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif data.startswith(b"HTTP/1.") and not data.startswith(_INTERIM):
            self._head = data
            return
        self._transport.write(data)

    def writelines(self, lines: Iterable[bytes]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Send a head still held (an answer without a body)."""
        if self._head is not None:
            head, self._head = self._head, None
            if not self._transport.is_closing():
                self._transport.write(head)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `HeadHoldingTransport` (pass as ``uvicorn.Config(http=…)``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHoldingTransport(transport))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()
