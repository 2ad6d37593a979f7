"""A small HTTP/1.1 keep-alive client: the transport under `HttpLightningStore`, nothing else.

Why hand-written: one sequential caller of the store server is bound by per-request overhead.
On the standard machine a store call through aiohttp cost ~210-240 µs of client CPU, through
this ~150-165 µs, most of which is the event loop and the socket calls themselves. The
store's protocol needs little of HTTP: JSON requests to one origin, answers that carry a
``Content-Length`` (or chunked, or end at close when a proxy sends them so), no redirects,
cookies or compression. So this module writes a request in one ``write`` and parses the answer
in an `asyncio.Protocol`, keeping connections per event loop.

Failures come in two kinds, because the caller's retry rule needs them: `ConnectFailed` (the
request never left: safe to send again) and `RequestFailed` (it was sent; the server may have
acted on it); `HandshakeFailed` is a `ConnectFailed` that no retry mends. Timeouts are
`RequestFailed` too. They are enforced by one sweep per pool every `SWEEP_SECONDS` while
requests are in flight, not a timer per request: scheduling and cancelling a timer cost ~5 of
the ~28 µs a request takes on the client (measured against a trivial server). An idle connection
is polled (~1 µs) before it is reused: the loop may not have read the server's FIN yet.
"""

from __future__ import annotations

import asyncio
import os
import select
import ssl
import time
from typing import NamedTuple
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 * 1024
SWEEP_SECONDS = 0.05
"""How often requests in flight are checked against their deadlines: a timeout fires this late at most."""
IDLE_SECONDS = 15.0
"""Idle connections are dropped after this, well before the server's 65 s keep-alive, so a request
is not sent on a connection the server is closing."""


class ConnectFailed(OSError):
    """No connection could be made: the request was not sent."""


class HandshakeFailed(ConnectFailed):
    """The TLS handshake was refused (a plain-HTTP server, an untrusted certificate): no retry mends it."""


class RequestFailed(Exception):
    """The request was sent (in part or whole) but no complete answer came back."""


class Answer(NamedTuple):
    status: int
    body: bytes
    retry_after: bytes | None = None
    """The ``Retry-After`` header as sent, if any: the caller reads it only on a refusal (429, 503)."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = True
        self.idle_since = 0.0
        self.deadline = 0.0  # loop time by which the answer must be in
        self.timeout = 0.0
        self._buffer = bytearray()
        self._answer: asyncio.Future[Answer] | None = None
        self._status = 0
        self._retry_after: bytes | None = None
        self._length: int | None = None  # body length once the head is read; -1 chunked; None: head not read
        self._until_close = False
        self._chunks: list[bytes] = []

    # --- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._answer is None or self._answer.done():
            self._fail(RequestFailed("the server sent data nobody asked for"))
            return
        try:
            self._parse()
        except (ValueError, IndexError) as error:
            self._fail(RequestFailed(f"malformed HTTP answer: {error}"))

    def eof_received(self) -> bool | None:
        self.keep_alive = False
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer is None or self._answer.done():
            return
        if self._until_close and self._length is not None:
            self._finish(bytes(self._buffer))
        else:
            reason = f": {exc}" if exc else ""
            self._answer.set_exception(RequestFailed(f"the server closed the connection before answering{reason}"))

    # --- one exchange ---------------------------------------------------------------------
    async def exchange(self, request: bytes, timeout: float) -> Answer:
        """Send ``request`` and wait for the answer; the pool's sweep fails it past ``timeout``."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        answer = self._answer = loop.create_future()
        self._length, self._until_close, self._chunks = None, False, []
        self.timeout, self.deadline = timeout, loop.time() + timeout
        self.transport.write(request)
        try:
            return await answer
        except BaseException:  # failed, timed out or cancelled: the connection's state is unknown
            self.close()
            raise

    def expire(self, now: float) -> None:
        """Fail the request in flight if its deadline has passed."""
        if now >= self.deadline:
            self._fail(RequestFailed(f"no answer within {self.timeout:g} s"))

    def reusable(self, now: float) -> bool:
        """Whether this idle connection may carry the next request: the server has not closed it.

        Its socket is asked too, not only the loop's callbacks: a loop kept busy (a training step)
        while the server closed the connection (a restart) has not yet read the FIN, and a request
        written then is lost, reported unanswered though the server is up.
        """
        if not self.keep_alive or self.closed or now - self.idle_since >= IDLE_SECONDS:
            return False
        return self.transport is None or not _readable(self.transport.get_extra_info("socket").fileno())

    def close(self) -> None:
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def _fail(self, error: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)
        self.close()

    def _finish(self, body: bytes) -> None:
        assert self._answer is not None
        self._answer.set_result(Answer(self._status, body, self._retry_after))

    def _parse(self) -> None:
        buffer = self._buffer
        while self._length is None:  # the head, skipping any 1xx interim answers
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise ValueError("head too long")
                return
            lines = bytes(buffer[:end]).split(b"\r\n")
            del buffer[: end + 4]
            version, status = lines[0].split(b" ", 2)[:2]
            self._status = int(status)
            if 100 <= self._status < 200:
                continue
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            self._retry_after = headers.get(b"retry-after")
            if version != b"HTTP/1.1" or headers.get(b"connection", b"").lower() == b"close":
                self.keep_alive = False
            if self._status in (204, 304):
                self._length = 0
            elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                self._length = -1
            elif b"content-length" in headers:
                self._length = int(headers[b"content-length"])
            else:
                self._length, self._until_close, self.keep_alive = 0, True, False
        if self._until_close:
            return  # the body ends when the connection does
        if self._length >= 0:
            if len(buffer) >= self._length:
                if len(buffer) > self._length:
                    raise ValueError("more bytes than the answer's length")
                body = bytes(buffer)
                buffer.clear()
                self._finish(body)
            return
        self._parse_chunks()

    def _parse_chunks(self) -> None:
        buffer = self._buffer
        while True:
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(buffer[:line_end]).split(b";", 1)[0], 16)
            if size == 0:  # the last chunk, then optional trailers, then an empty line
                rest = line_end + 2
                if buffer[rest : rest + 2] != b"\r\n" and buffer.find(b"\r\n\r\n", rest) < 0:
                    return
                buffer.clear()
                self._finish(b"".join(self._chunks))
                return
            if len(buffer) < line_end + 2 + size + 2:
                return
            start = line_end + 2
            self._chunks.append(bytes(buffer[start : start + size]))
            del buffer[: start + size + 2]


class ConnectionPool:
    """Keep-alive connections to one origin, for one event loop; at most ``limit`` at once."""

    def __init__(self, url: str, *, limit: int = 64) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(limit)
        self._in_flight: set[_Connection] = set()
        self._sweep: asyncio.TimerHandle | None = None

    async def request(self, request: bytes, timeout: float) -> Answer:
        """Send ``request`` (a whole HTTP/1.1 message) and return the answer."""
        async with self._slots:
            connection = self._idle_connection() or await self._connect(timeout)
            self._in_flight.add(connection)
            if self._sweep is None:
                self._sweep = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self._expire)
            try:
                answer = await connection.exchange(request, timeout)
            finally:
                self._in_flight.discard(connection)
            if connection.keep_alive and not connection.closed:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            else:
                connection.close()
            return answer

    def _expire(self) -> None:
        """The sweep: fail overdue requests; runs again while any request is in flight."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in list(self._in_flight):
            connection.expire(now)
        self._sweep = loop.call_later(SWEEP_SECONDS, self._expire) if self._in_flight else None

    def _idle_connection(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable(now):
                return connection
            connection.close()
        return None

    async def _connect(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                server_hostname = self.host if self.ssl else None
                _, connection = await loop.create_connection(
                    _Connection, self.host, self.port, ssl=self.ssl, server_hostname=server_hostname
                )
        except (OSError, TimeoutError) as error:
            raise _connect_failure(error) from None
        return connection

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._idle:
            self._idle.pop().close()


def _readable(fd: int) -> bool:
    """Whether an idle socket has anything to read (the server's FIN, a reset) without waiting.
    ``poll``, not ``select``: a process may hold more than ``FD_SETSIZE`` (1024) descriptors."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])  # Windows: no poll, and no FD_SETSIZE limit on values


def _connect_failure(error: OSError | TimeoutError) -> ConnectFailed:
    """Why no connection was made, in words: ``connection refused``, not asyncio's ``Connect call failed``."""
    if isinstance(error, ssl.SSLError) and not isinstance(error, ssl.SSLEOFError):  # EOF: cut off, maybe a restart
        return HandshakeFailed(f"TLS handshake failed: {error}")
    if isinstance(error, ConnectionError) and error.errno:
        return ConnectFailed(os.strerror(error.errno).lower())
    return ConnectFailed(str(error) or type(error).__name__)
