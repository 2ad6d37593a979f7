"""The store server's protocol sends an answer's head and body in one write, and loses nothing.

`HeadHoldingTransport` is checked over a real socket pair (what the peer can read after each
write); the server itself end to end on 127.0.0.1: keep-alive answers, a HEAD request's bodiless
answer, ``100 Continue``, and uvicorn's own answer-and-close for a malformed request.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from agl.core.server import ServerSettings, create_app
from agl.core.server.protocol import HeadHoldingTransport
from agl.core.store import InMemoryLightningStore
from agl.core.testing.server import ServingThread

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


@pytest.fixture
async def wrapped() -> AsyncIterator[tuple[HeadHoldingTransport, socket.socket]]:
    """The transport over one end of a socket pair; the other end, non-blocking, to read."""
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, ours)
    yield HeadHoldingTransport(transport), peer  # type: ignore[arg-type]
    transport.close()
    peer.close()


def _received(peer: socket.socket) -> bytes:
    try:
        return peer.recv(1 << 20)
    except BlockingIOError:
        return b""


async def test_a_head_waits_for_the_body_and_leaves_with_it(
    wrapped: tuple[HeadHoldingTransport, socket.socket],
) -> None:
    transport, peer = wrapped
    transport.write(HEAD)
    assert _received(peer) == b""  # held
    transport.write(b"ok")
    assert _received(peer) == HEAD + b"ok"  # one write: both at once
    transport.writelines([b"more", b"!"])  # later writes of the answer pass straight through
    assert _received(peer) == b"more!"


async def test_interim_answers_and_other_writes_are_not_held(
    wrapped: tuple[HeadHoldingTransport, socket.socket],
) -> None:
    transport, peer = wrapped
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert _received(peer) == b"HTTP/1.1 100 Continue\r\n\r\n"
    transport.write(b"not a head")
    assert _received(peer) == b"not a head"


async def test_a_held_head_is_sent_by_flush_close_and_half_close(
    wrapped: tuple[HeadHoldingTransport, socket.socket],
) -> None:
    transport, peer = wrapped
    transport.write(HEAD)
    transport.flush()
    assert _received(peer) == HEAD
    transport.write(HEAD)
    transport.write_eof()
    assert _received(peer) == HEAD
    assert _received(peer) == b""  # end of stream


@pytest.fixture
def server() -> Iterator[ServingThread]:
    store = InMemoryLightningStore()
    with ServingThread(create_app(ServerSettings(), store)) as serving:
        yield serving
    asyncio.run(store.close())


def _answer(stream: socket.SocketIO | object, *, body: bool = True) -> tuple[bytes, bytes]:
    """Status line and body of one answer read from a binary file over the socket."""
    status = stream.readline()  # type: ignore[attr-defined]
    length = 0
    while (line := stream.readline()) != b"\r\n":  # type: ignore[attr-defined]
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return status, stream.read(length) if body else b""  # type: ignore[attr-defined]


def test_the_server_answers_whole_over_one_connection(server: ServingThread) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:  # a held head fails, not hangs
        stream = client.makefile("rb")
        for _ in range(3):  # keep-alive: each answer whole, none mixed with the next
            client.sendall(b"GET /health HTTP/1.1\r\nHost: agl\r\n\r\n")
            status, body = _answer(stream)
            assert status.startswith(b"HTTP/1.1 200") and b'"status"' in body
        client.sendall(b"HEAD /health HTTP/1.1\r\nHost: agl\r\n\r\n")  # an answer with no body
        assert _answer(stream, body=False)[0].startswith(b"HTTP/1.1 ")
        client.sendall(b"GET /health HTTP/1.1\r\nHost: agl\r\n\r\n")  # and the next one still comes
        assert _answer(stream)[0].startswith(b"HTTP/1.1 200")


def test_a_client_waiting_for_100_continue_gets_it_and_then_its_answer(server: ServingThread) -> None:
    body = b'{"input": 1}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        stream = client.makefile("rb")
        client.sendall(
            b"POST /v1/agl/rollouts HTTP/1.1\r\nHost: agl\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        assert stream.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert stream.readline() == b"\r\n"
        client.sendall(body)
        status, answer = _answer(stream)
        assert status.startswith(b"HTTP/1.1 200") and b'"rollout_id"' in answer


def test_a_malformed_request_gets_its_400_whole_then_the_close(server: ServingThread) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = client.makefile("rb").read()  # uvicorn writes its 400 and closes
        assert answer.startswith(b"HTTP/1.1 400")
        assert answer.endswith(b"Invalid HTTP request received.")
