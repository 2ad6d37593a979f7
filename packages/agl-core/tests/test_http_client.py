"""The store client's HTTP/1.1 transport (`agl.core.store.http1`) against a scripted peer: answer
framings, keep-alive, timeouts, and the request line and headers `HttpLightningStore` sends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agl.core import StoreUnavailable
from agl.core.server import ServerSettings, create_app
from agl.core.store import InMemoryLightningStore
from agl.core.store.http import HttpLightningStore
from agl.core.store.http1 import IDLE_SECONDS, Answer, ConnectFailed, ConnectionPool, RequestFailed, _Connection
from agl.core.testing.server import ServingThread

GET = b"GET /x HTTP/1.1\r\nHost: peer\r\nContent-Length: 0\r\n\r\n"


class Peer:
    """A TCP server answering each request with the next scripted bytes (a callable may split them
    into several writes or close instead); it records request heads and connections."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.heads: list[bytes] = []
        self.connections = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Peer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                await reader.readexactly(length)
                answer = self.answers.pop(0)
                if callable(answer):
                    if await answer(writer) == "close":
                        writer.close()
                        return
                else:
                    writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def ok(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), b"".join(extra), body)


NOT_FOUND = ok(b'{"error":"RolloutNotFound","message":"ro","detail":{"object_id":"ro-1"}}').replace(
    b"200 OK", b"404 Not Found"
)


def in_pieces(data: bytes, size: int) -> Callable[[asyncio.StreamWriter], Any]:
    async def write(writer: asyncio.StreamWriter) -> None:
        for start in range(0, len(data), size):
            writer.write(data[start : start + size])
            await writer.drain()

    return write


@pytest.fixture
async def pool_for() -> AsyncIterator[Callable[[Peer], ConnectionPool]]:
    pools: list[ConnectionPool] = []

    def make(peer: Peer) -> ConnectionPool:
        pools.append(ConnectionPool(peer.url))
        return pools[-1]

    yield make
    for pool in pools:
        pool.close()


async def test_answers_in_every_framing(pool_for: Callable[[Peer], ConnectionPool]) -> None:
    chunks = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n"
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunks
    answers = [
        ok(b'{"a": 1}'),
        in_pieces(ok(b"x" * 5000), 7),  # arrives a few bytes at a time
        chunked,
        in_pieces(chunked, 3),
        b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"after"),
        b"HTTP/1.1 204 No Content\r\n\r\n",
        ok(b'{"error": "x"}').replace(b"200 OK", b"404 Not Found"),
    ]
    async with Peer(answers) as peer:
        pool = pool_for(peer)
        got = [await pool.request(GET, 5) for _ in range(7)]
    assert got == [
        Answer(200, b'{"a": 1}'),
        Answer(200, b"x" * 5000),
        Answer(200, b"hello world"),
        Answer(200, b"hello world"),
        Answer(200, b"after"),
        Answer(204, b""),
        Answer(404, b'{"error": "x"}'),
    ]
    assert peer.connections == 1  # all on one keep-alive connection


async def test_connection_close_and_answers_that_end_at_close(pool_for: Callable[[Peer], ConnectionPool]) -> None:
    async def until_close(writer: asyncio.StreamWriter) -> str:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        return "close"

    async def closing(writer: asyncio.StreamWriter) -> str:
        writer.write(ok(b"bye", b"connection: close\r\n"))
        return "close"

    async with Peer([until_close, closing, ok(b"again")]) as peer:
        pool = pool_for(peer)
        assert await pool.request(GET, 5) == Answer(200, b"all of it")
        assert await pool.request(GET, 5) == Answer(200, b"bye")
        assert await pool.request(GET, 5) == Answer(200, b"again")
    assert peer.connections == 3  # neither closed connection was reused


async def test_failures_say_whether_the_request_was_sent(pool_for: Callable[[Peer], ConnectionPool]) -> None:
    async def hang_up(writer: asyncio.StreamWriter) -> str:
        return "close"

    async def silent(writer: asyncio.StreamWriter) -> None:
        return None

    async with Peer([hang_up, silent, b"garbage\r\n\r\n", ok(b"fine")]) as peer:
        pool = pool_for(peer)
        with pytest.raises(RequestFailed, match="closed the connection"):
            await pool.request(GET, 5)
        with pytest.raises(RequestFailed, match=r"no answer within 0\.2 s"):
            await pool.request(GET, 0.2)
        with pytest.raises(RequestFailed, match="malformed"):
            await pool.request(GET, 5)
        assert await pool.request(GET, 5) == Answer(200, b"fine")
    assert peer.connections == 4  # a failed connection is never reused
    with pytest.raises(ConnectFailed):
        await ConnectionPool(peer.url).request(GET, 5)


async def test_the_store_client_sends_a_quoted_path_its_token_and_a_prefix() -> None:
    async with Peer([NOT_FOUND, NOT_FOUND, ok(b"null")]) as peer:
        store = HttpLightningStore(peer.url + "/behind/proxy", token="tok")
        assert await store.get_rollout_by_id("ro with space?and#more%") is None
        assert await store.get_rollout_by_id("ro-plain") is None
        assert await store.dequeue_rollout(worker_id="w") is None
        await store.close()
    lines = [head.split(b"\r\n") for head in peer.heads]
    assert lines[0][0] == b"GET /behind/proxy/v1/agl/rollouts/ro%20with%20space%3Fand%23more%25 HTTP/1.1"
    assert lines[1][0] == b"GET /behind/proxy/v1/agl/rollouts/ro-plain HTTP/1.1"
    assert lines[2][0] == b"POST /behind/proxy/v1/agl/dequeue HTTP/1.1"
    for head in lines:
        assert b"Authorization: Bearer tok" in head and b"Content-Type: application/json" in head
        assert head[1].startswith(b"Host: 127.0.0.1:")


async def test_a_timed_out_claim_is_not_repeated_but_a_read_is() -> None:
    async def silent(writer: asyncio.StreamWriter) -> None:
        return None

    async with Peer([silent, silent, NOT_FOUND]) as peer:
        store = HttpLightningStore(peer.url, request_timeout=0.2, retry_seconds=30)
        with pytest.raises(StoreUnavailable, match="dequeue"):
            await store.dequeue_rollout()
        assert await store.get_rollout_by_id("ro-1") is None  # timed out once, then answered
        await store.close()
    assert len(peer.heads) == 3


def test_one_store_object_serves_several_event_loops_and_concurrent_callers() -> None:
    store = InMemoryLightningStore()
    with ServingThread(create_app(ServerSettings(), store)) as server:
        client = HttpLightningStore(server.url)

        async def many() -> int:
            rollouts = await asyncio.gather(*(client.enqueue_rollout({"i": i}) for i in range(150)))
            await client.close()
            return len({r.rollout_id for r in rollouts})

        assert asyncio.run(many()) == 150
        assert asyncio.run(many()) == 150  # a second loop gets connections of its own
        asyncio.run(store.close())


def test_idle_connections_the_server_closed_or_that_idled_too_long_are_not_reused() -> None:
    pool = ConnectionPool("http://127.0.0.1:1")
    half_closed, closed, stale, fresh = (_Connection() for _ in range(4))
    half_closed.keep_alive = False  # the server's FIN arrived while it was idle
    closed.closed = True
    for connection in (half_closed, closed, stale, fresh):
        connection.idle_since = time.monotonic()
    stale.idle_since -= IDLE_SECONDS + 1
    pool._idle = [fresh, stale, closed, half_closed]
    assert pool._idle_connection() is fresh
    assert pool._idle == []


def test_a_refused_tls_handshake_is_raised_at_once_not_retried() -> None:
    """``https://`` to a plain-HTTP server: no retry mends that (a refused connection is retried: the
    server may be restarting)."""
    with ServingThread(create_app(ServerSettings(), InMemoryLightningStore())) as server:
        url = server.url.replace("http://", "https://")

        async def ask() -> None:
            store = HttpLightningStore(url, retry_seconds=30)
            with pytest.raises(
                StoreUnavailable, match=f"cannot reach the store at {url}: TLS handshake failed"
            ) as caught:
                await store.statistics()
            assert "gave up" not in str(caught.value)
            await store.close()

        asyncio.run(ask())
