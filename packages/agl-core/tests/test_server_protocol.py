"""The store server's protocol sends each answer in one write, and loses or reorders nothing.

`CoalescingTransport` is checked over a real socket pair: the peer sees nothing until the event
loop's turn ends, then everything in order. The server itself is checked end to end on
127.0.0.1, including uvicorn's own answer-and-close for a malformed request.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from agl.core.server import ServerSettings, create_app
from agl.core.server.protocol import FLUSH_BYTES, CoalescingTransport
from agl.core.store import InMemoryLightningStore
from agl.core.testing.server import ServingThread


@pytest.fixture
async def wrapped() -> AsyncIterator[tuple[CoalescingTransport, socket.socket]]:
    """A coalescing transport over one end of a socket pair; the other end, non-blocking, to read."""
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    yield CoalescingTransport(transport, loop), peer  # type: ignore[arg-type]
    transport.close()
    peer.close()


def _received(peer: socket.socket) -> bytes:
    try:
        return peer.recv(1 << 20)
    except BlockingIOError:
        return b""


async def test_writes_of_one_turn_leave_together_at_its_end(wrapped: tuple[CoalescingTransport, socket.socket]) -> None:
    transport, peer = wrapped
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.writelines([b"o", b"k"])
    assert _received(peer) == b""  # held until the turn ends
    await asyncio.sleep(0)  # one turn: the flush was scheduled before this task's wake-up
    assert _received(peer) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


async def test_close_and_half_close_send_what_is_held_first(wrapped: tuple[CoalescingTransport, socket.socket]) -> None:
    transport, peer = wrapped
    transport.write(b"first")
    transport.write_eof()
    assert _received(peer) == b"first"
    assert _received(peer) == b""  # end of stream


async def test_a_large_write_goes_out_at_once(wrapped: tuple[CoalescingTransport, socket.socket]) -> None:
    transport, peer = wrapped
    transport.write(b"head;")
    transport.write(b"x" * FLUSH_BYTES)
    received = b""
    while len(received) < FLUSH_BYTES + 5:  # without yielding to the loop
        chunk = _received(peer)
        assert chunk, "the large write was held"
        received += chunk
    assert received == b"head;" + b"x" * FLUSH_BYTES


def test_the_server_answers_over_one_connection_and_closes_after_a_malformed_request() -> None:
    store = InMemoryLightningStore()
    with (
        ServingThread(create_app(ServerSettings(), store)) as server,
        socket.create_connection(("127.0.0.1", server.port)) as client,
    ):
        stream = client.makefile("rb")
        for _ in range(3):  # keep-alive: each answer whole, none mixed with the next
            client.sendall(b"GET /health HTTP/1.1\r\nHost: agl\r\n\r\n")
            assert stream.readline().startswith(b"HTTP/1.1 200")
            length = 0
            while (line := stream.readline()) != b"\r\n":
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            assert b'"status"' in stream.read(length)
        client.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = stream.read()  # uvicorn writes its 400 and closes: the whole answer, then EOF
        assert answer.startswith(b"HTTP/1.1 400")
        assert answer.endswith(b"Invalid HTTP request received.")
    asyncio.run(store.close())
