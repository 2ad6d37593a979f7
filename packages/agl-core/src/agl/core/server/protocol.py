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

A request's body, after its head, must keep coming too, as Apache's ``mod_reqtimeout
body=30,MinRate=16384`` has it: it must be whole within `OneWriteHttpProtocol.body_timeout_seconds`
of the head's end (up to a sweep later, at most 1 s), plus a second for every
`OneWriteHttpProtocol.body_min_bytes_per_second` bytes received (a 408, or the connection
closed if the app has answered already). A client declaring ``Content-Length: 1000000`` and
sending a byte every 20 s, or nothing, held the connection and the body buffered so far for as
long as it liked. The clock stops while the server is not reading the body (the app has not
asked for it yet: uvicorn's read buffer is full, or the client waits for ``100 Continue``): only
the client's sending is bounded, never the app's work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

if TYPE_CHECKING:  # annotations only: uvicorn's private modules are not imported at run time
    from uvicorn._types import ASGISendEvent
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

logger = logging.getLogger(__name__)
_INTERIM = (b"HTTP/1.1 1", b"HTTP/1.0 1")
MAX_HEAD_BYTES = 64 * 1024
"""A request line and headers larger than this are refused (431); agl's clients send well under 1 KiB."""
_CLOCK_STOPPED = math.inf
"""A body's clock before the first sweep that finds the server reading it: sweeps, not each request, read the time."""
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
_sweeping: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
"""Event loops whose connections' heads and bodies a `OneWriteHttpProtocol._sweep` is watching."""


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
    with a deadline and a size limit on each request's head, and a deadline on its body.

    The deadlines cost a request a clock read and a few attribute writes: one sweep per event loop
    (`_sweep`), every quarter of the shorter deadline (at most a second), looks for heads and bodies
    overdue, where a timer per request would cost ~2.4 µs to schedule and cancel (a few % of a
    small call's server time).

    The body's numbers: 30 s, like the head's, outlasts a stalled link's TCP retransmissions and a
    client's pauses (a garbage collection, a slow disk); 16 KiB/s (128 kbit/s) is below any link
    that ships span batches, yet a trickler must spend that much bandwidth on every connection it
    holds. The largest body the servers take (32 MiB by default) may take 30 s + 2048 s at that
    rate; a 10 MB OTLP batch on a 1 Mbit/s link needs 80 s of the 640 s it is given."""

    head_timeout_seconds = 30.0
    body_timeout_seconds = 30.0
    body_min_bytes_per_second = 16 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHoldingTransport(transport))  # type: ignore[arg-type]
        self._head_since: float | None = self.loop.time()
        self._head_bytes = 0
        self._body_since: float | None = None
        """When the body's clock started, or `_CLOCK_STOPPED`; None: no body awaited."""
        self._body_bytes = 0
        self._closing_after_refusal: asyncio.TimerHandle | None = None
        if self.loop not in _sweeping:
            _sweeping.add(self.loop)
            self.loop.call_later(self._sweep_period(), self._sweep)

    def _sweep_period(self) -> float:
        return min(self.head_timeout_seconds / 4, self.body_timeout_seconds / 4, 1.0)

    def _sweep(self) -> None:
        """Refuse every head and body overdue on this loop's connections; again later while there
        are any. One connection's failure is logged and skipped: raised, it would end the watch
        over every connection of the loop for good."""
        now = self.loop.time()
        for connection in list(self.connections):
            try:
                connection._check_deadlines(now)
            except Exception:
                logger.exception("checking a connection's deadlines failed")
        if self.connections:
            self.loop.call_later(self._sweep_period(), self._sweep)
        else:
            _sweeping.discard(self.loop)

    def _check_deadlines(self, now: float) -> None:
        since = getattr(self, "_head_since", None)
        if since is not None and now - since > self.head_timeout_seconds:
            self._refuse(408, f"the request's head did not arrive within {self.head_timeout_seconds:g} s")
        elif (body_since := getattr(self, "_body_since", None)) is not None:
            self._check_body(now, body_since)

    def _check_body(self, now: float, since: float) -> None:
        """End a body overdue; stop its clock while the server is not reading it, and start it
        (afresh, credit spent, after a stop) at the first sweep that finds the server reading."""
        if self.flow.read_paused or self.cycle.waiting_for_100_continue:
            self._body_since, self._body_bytes = _CLOCK_STOPPED, 0
        elif since == _CLOCK_STOPPED:
            self._body_since = now
        elif now - since > self.body_timeout_seconds + self._body_bytes / self.body_min_bytes_per_second:
            self._end_overdue_body()

    def _end_overdue_body(self) -> None:
        """A 408 if the app has not begun its answer (the app is told the client went away, and
        what it sends is dropped); once it has, the connection ends without one."""
        cycle = self.cycle
        if not cycle.response_started:
            cycle.disconnected = True
            cycle.message_event.set()
            allowed = f"{self.body_timeout_seconds:g} s plus 1 s per {self.body_min_bytes_per_second:g} bytes received"
            self._refuse(408, f"the request's body did not arrive within {allowed}")
        elif cycle.response_complete:
            self._body_since = None
            self._close_after_answer()
        else:  # an answer half sent: nothing more can be said in this connection
            self._body_since = None
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._closing_after_refusal is not None:
            return  # refused: what the client still sends is read and dropped
        if self.timeout_keep_alive_task is not None and self._head_since is None and self._body_since is None:
            # Bytes on an idle kept-alive connection: uvicorn stops its idle timer for them, but a
            # request (`on_message_begin`) begins only with a method's first byte, not the empty
            # lines the parser skips before one: a "\r\n" held the connection for good.
            self._head_since = self.loop.time()
        if self._head_since is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        # Counted after parsing, so a read that ends a head counts its head bytes to the body too:
        # a few seconds' credit at most (MAX_HEAD_BYTES), for no work on each read.
        if self._body_since is not None:
            self._body_bytes += len(data)
        # Counted before parsing, checked after: one read may hold a whole head and some body.
        if self._head_since is not None and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(431, f"request line and headers over {MAX_HEAD_BYTES} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_since is None:  # the next request on a kept-alive connection
            self._head_since = self.loop.time()
        if self.timeout_keep_alive_task is not None:  # armed by `on_message_complete` earlier in this read
            self._unset_keepalive_if_required()

    def on_headers_complete(self) -> None:
        self._head_since, self._head_bytes = None, 0
        if self.expect_100_continue and self.parser.get_http_version() == "1.0":
            self.expect_100_continue = False  # RFC 9110 §10.1.1: ignored, and no 1xx to an HTTP/1.0 client
        super().on_headers_complete()
        self._body_since, self._body_bytes = _CLOCK_STOPPED, 0  # after: a head refused has no body awaited
        if self.expect_100_continue:
            _close_if_answered_before_continue(self.cycle)

    def on_message_complete(self) -> None:
        self._body_since = None
        super().on_message_complete()
        cycle = self.cycle  # None: an upgrade first on its connection
        if cycle is not None and cycle.response_complete and not self.parser.should_upgrade():
            self._idle_after_early_answer()

    def _idle_after_early_answer(self) -> None:
        """The body of a request answered before it was in (a 401, a 413 by its declared length)
        has ended: the connection is idle, so uvicorn's idle timer runs again. uvicorn armed it at
        the answer and stopped it when the body's bytes came: the connection was held for good."""
        if self.timeout_keep_alive_task is None and not self.transport.is_closing():
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_since = self._body_since = None
        if self._closing_after_refusal is not None:
            self._closing_after_refusal.cancel()
        super().connection_lost(exc)

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with a one-line JSON message and end the connection."""
        self._head_since, self._head_bytes, self._body_since = None, 0, None
        if self.transport.is_closing():
            return
        reason = _REASONS[status]
        body = json.dumps({"error": reason.decode(), "message": message, "detail": {}}).encode()
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        self.transport.write(head % (status, reason, len(body)) + body)
        self._close_after_answer()

    def _close_after_answer(self) -> None:
        """Close our half of the connection; what the client still sends is dropped until it closes
        its half, or the head's deadline passes again. Closing at once, with the client's bytes
        unread, would make the kernel reset the connection, and the client would lose the answer."""
        if self.transport.is_closing():
            return
        if not self.transport.can_write_eof():  # TLS has no half-close
            self.transport.close()
            return
        self.transport.write_eof()
        self._closing_after_refusal = self.loop.call_later(self.head_timeout_seconds, self.transport.close)

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()


def _close_if_answered_before_continue(cycle: RequestResponseCycle) -> None:
    """End the connection after an answer that starts while the client still holds its body back,
    waiting for ``100 Continue`` (a 401, a 413 by the declared length).

    Why: the server then cannot tell whether the client's next bytes are that body or its next
    request; RFC 9110 §10.1.1 asks the server to say which it expects, and ``Connection: close``
    says it (as Go's and nginx's servers do). uvicorn kept the connection and read the next request
    as the body: the client got a 400, or waited for an answer that never came."""
    send = cycle.send

    async def send_closing(message: ASGISendEvent) -> None:
        if cycle.waiting_for_100_continue and cycle.more_body and message["type"] == "http.response.start":
            cycle.keep_alive = False
        await send(message)

    cycle.send = send_closing  # type: ignore[method-assign]
