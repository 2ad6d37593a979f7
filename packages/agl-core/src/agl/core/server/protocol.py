"""uvicorn's HTTP/1.1 protocol, with an answer's head and body sent to the socket in one write.

Why: uvicorn writes an answer's head and its body with two ``transport.write`` calls, so each is
a send(2) of its own and often a TCP segment of its own. A waiting client can wake for the head,
find no body, sleep and wake again. `HeadHoldingTransport` keeps a final answer's head back until
the next write (the body's first bytes) and sends both as one; the protocol sends a head still
held when uvicorn completes the answer (a HEAD request's has no body), and closing or half-closing
sends it first. Nothing is deferred to a later turn of the event loop, and interim answers
(``100 Continue``) go out at once.

It also bounds what uvicorn leaves open to a slow or hostile client, which matters once a server
listens beyond loopback: a request's head (its line and headers) must arrive within
`OneWriteHttpProtocol.head_timeout_seconds` of the connection or of the request's first byte (an
answer 408 otherwise), and within `MAX_HEAD_BYTES` (431). uvicorn's httptools protocol has
neither: a client sending a header a byte a minute, or headers without end, held a connection
and its memory for as long as it liked. Idle keep-alive connections are uvicorn's own timeout.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_INTERIM = (b"HTTP/1.1 1", b"HTTP/1.0 1")
MAX_HEAD_BYTES = 64 * 1024
"""A request line and headers larger than this are refused (431); agl's clients send well under 1 KiB."""
_sweeping: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
"""Event loops whose connections' heads a `OneWriteHttpProtocol._sweep` is watching."""


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
    """uvicorn's httptools protocol over a `HeadHoldingTransport` (pass as ``uvicorn.Config(http=…)``),
    with a deadline and a size limit on each request's head.

    The deadline costs a request two attribute writes: one sweep per event loop (`_sweep`), every
    quarter of the deadline, looks for heads overdue, where a timer per request would cost ~2.4 µs
    to schedule and cancel (a few % of a small call's server time)."""

    head_timeout_seconds = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHoldingTransport(transport))  # type: ignore[arg-type]
        self._head_since: float | None = self.loop.time()
        self._head_bytes = 0
        self._closing_after_refusal: asyncio.TimerHandle | None = None
        if self.loop not in _sweeping:
            _sweeping.add(self.loop)
            self.loop.call_later(self._sweep_period(), self._sweep)

    def _sweep_period(self) -> float:
        return min(self.head_timeout_seconds / 4, 1.0)

    def _sweep(self) -> None:
        """Refuse every head overdue on this loop's connections; again later while there are any."""
        now = self.loop.time()
        for connection in list(self.connections):
            since = getattr(connection, "_head_since", None)
            if since is not None and now - since > connection.head_timeout_seconds:
                connection._refuse(408, "the request's head")
        if self.connections:
            self.loop.call_later(self._sweep_period(), self._sweep)
        else:
            _sweeping.discard(self.loop)

    def data_received(self, data: bytes) -> None:
        if self._closing_after_refusal is not None:
            return  # refused: what the client still sends is read and dropped
        if self._head_since is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        # Counted before parsing, checked after: one read may hold a whole head and some body.
        if self._head_since is not None and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(431, f"request line and headers over {MAX_HEAD_BYTES} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_since is None:  # the next request on a kept-alive connection
            self._head_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self._head_since, self._head_bytes = None, 0
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_since = None
        if self._closing_after_refusal is not None:
            self._closing_after_refusal.cancel()
        super().connection_lost(exc)

    def _refuse(self, status: int, what: str) -> None:
        """Answer ``status`` with a one-line JSON message and end the connection: the answer, then
        our half of it closed; what the client still sends is dropped until it closes its half, or
        the head's deadline passes again. Closing at once, with the client's bytes unread, would
        make the kernel reset the connection, and the client would lose the answer."""
        self._head_since, self._head_bytes = None, 0
        if self.transport.is_closing():
            return
        if status == 408:
            reason, message = b"Request Timeout", f"{what} did not arrive within {self.head_timeout_seconds:g} s"
        else:
            reason, message = b"Request Header Fields Too Large", what
        body = json.dumps({"error": reason.decode(), "message": message, "detail": {}}).encode()
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        self.transport.write(head % (status, reason, len(body)) + body)
        if not self.transport.can_write_eof():  # TLS has no half-close
            self.transport.close()
            return
        self.transport.write_eof()
        self._closing_after_refusal = self.loop.call_later(self.head_timeout_seconds, self.transport.close)

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()
