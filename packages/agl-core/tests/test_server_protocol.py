"""The store server's protocol sends an answer's head and body in one write, and loses nothing.

`HeadHoldingTransport` is checked over a real socket pair (what the peer can read after each
write); the server itself end to end on 127.0.0.1: keep-alive answers, a HEAD request's bodiless
answer, ``100 Continue``, uvicorn's own answer-and-close for a malformed request, and the deadline
on a request's body.

The body's deadline is shortened (`QuickDeadlines`), and time is told without sleeping by the
server's own clock: a connection that sends nothing gets its 408 once the head's deadline (the
same length) has passed, so by then every body on the server older than it has been judged.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
from fastapi import FastAPI, Request
from starlette.types import Receive, Scope, Send

from agl.core.server import ServerSettings, create_app
from agl.core.server.protocol import HeadHoldingTransport, OneWriteHttpProtocol
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
    while (line := stream.readline()) not in (b"\r\n", b""):  # type: ignore[attr-defined]  # b"": closed
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
        assert _answer(stream, body=False)[0].startswith(b"HTTP/1.1 200")  # uptime probes send HEAD
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


class QuickDeadlines(OneWriteHttpProtocol):
    """The defaults' 30 s and 16 KiB/s, shortened so the tests need not wait for them."""

    head_timeout_seconds = 0.2
    body_timeout_seconds = 0.2
    body_min_bytes_per_second = 10_000


class NoCredit(QuickDeadlines):
    """Bytes received buy no time: a body's deadline is 0.2 s from when the server reads it."""

    body_min_bytes_per_second = 10**12


BODY_408 = "the request's body did not arrive within 0.2 s plus 1 s per 10000 bytes received"


@pytest.fixture
def quick_server() -> Iterator[ServingThread]:
    store = InMemoryLightningStore()
    with ServingThread(create_app(ServerSettings(), store), http=QuickDeadlines) as serving:
        yield serving
    asyncio.run(store.close())


def _rollout(size: int) -> bytes:
    """A request creating a rollout, its body ``size`` bytes of JSON (the head's bytes come on top)."""
    body = json.dumps({"input": "x" * (size - len(json.dumps({"input": ""})))}).encode()
    head = b"POST /v1/agl/rollouts HTTP/1.1\r\nHost: agl\r\nContent-Type: application/json\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def _received_until_closed(connection: socket.socket) -> bytes:
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def _refused_for_its_body(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    return head.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and json.loads(body)["message"] == BODY_408


def _a_deadline_passes(server: ServingThread) -> None:
    """Return once a connection that sends nothing has got its 408: a head's deadline has passed."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle:
        assert _received_until_closed(idle).startswith(b"HTTP/1.1 408 ")


@pytest.mark.parametrize(
    "sent",
    [
        _rollout(1000)[:-500],
        b'POST /v1/agl/rollouts HTTP/1.1\r\nHost: agl\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n{"input": "\r\n',
    ],
    ids=["content-length", "chunked"],
)
def test_a_body_that_stops_midway_is_a_408_and_the_connection_closed(quick_server: ServingThread, sent: bytes) -> None:
    """A client declaring a body and sending part of it, then nothing, held its connection and the
    body so far for as long as it liked."""
    with socket.create_connection(("127.0.0.1", quick_server.port), timeout=10) as client:
        client.sendall(sent)
        assert _refused_for_its_body(_received_until_closed(client))


def test_a_body_sent_steadily_completes_and_a_trickle_is_refused(quick_server: ServingThread) -> None:
    """Each time a deadline passes (~0.25 s), one client sends 8000 bytes of its body (0.8 s more at
    the minimum 10000 bytes/s) and completes, though the whole takes far longer than the deadline;
    the other sends 100 bytes (0.01 s more) and is refused."""
    steady, trickle = _rollout(32_000), _rollout(1000)
    pieces = range(len(steady) - 32_000 + 8000, len(steady), 8000)  # after the head and the first piece
    with (
        socket.create_connection(("127.0.0.1", quick_server.port), timeout=10) as steady_client,
        socket.create_connection(("127.0.0.1", quick_server.port), timeout=10) as trickle_client,
    ):
        steady_client.sendall(steady[: pieces[0]])
        trickle_client.sendall(trickle[:-900])
        for start in pieces:
            _a_deadline_passes(quick_server)
            steady_client.sendall(steady[start : start + 8000])
            if start == pieces[0]:
                trickle_client.sendall(trickle[-900:-800])  # then nothing: refused by the next deadline
        status, body = _answer(steady_client.makefile("rb"))
        assert status.startswith(b"HTTP/1.1 200") and b'"rollout_id"' in body
        assert _refused_for_its_body(_received_until_closed(trickle_client))


def test_each_request_on_a_kept_alive_connection_has_its_own_body_deadline(quick_server: ServingThread) -> None:
    """An idle kept-alive connection is not cut for a body finished before, and its next request's
    body is bounded again."""
    with socket.create_connection(("127.0.0.1", quick_server.port), timeout=10) as client:
        stream = client.makefile("rb")
        client.sendall(_rollout(100))
        assert _answer(stream)[0].startswith(b"HTTP/1.1 200")
        for _ in range(2):  # longer than the first body's deadline, with its bytes' credit
            _a_deadline_passes(quick_server)
        client.sendall(_rollout(100))
        assert _answer(stream)[0].startswith(b"HTTP/1.1 200")
        client.sendall(_rollout(100)[:-50])
        assert _refused_for_its_body(stream.read())


def _slow_app(entered: threading.Event, release: threading.Event) -> FastAPI:
    """``/slow`` waits for ``release`` before it reads the body; ``/echo`` reads it at once."""
    app = FastAPI()

    @app.post("/slow")
    async def slow(request: Request) -> dict[str, int]:
        entered.set()
        await asyncio.to_thread(release.wait, 10)
        return {"received": len(await request.body())}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    return app


@pytest.mark.parametrize(
    ("expect", "first", "rest"),
    [(b"Expect: 100-continue\r\n", 0, 10), (b"", 70_000, 10_000)],
    ids=["client waiting for 100 Continue", "server's read buffer full"],
)
def test_the_body_deadline_waits_while_the_app_has_not_asked_for_the_body(expect: bytes, first: int, rest: int) -> None:
    """A handler slow to read the body is not cut off, however long it takes: while it has not
    asked, the client cannot send (it waits for ``100 Continue``, or uvicorn stopped reading past
    its 64 KiB buffer). Meanwhile a body stalled on the same server is refused as usual."""
    entered, release = threading.Event(), threading.Event()
    with (
        ServingThread(_slow_app(entered, release), http=NoCredit) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as client,
    ):
        head = b"POST /slow HTTP/1.1\r\nHost: agl\r\n%sContent-Length: %d\r\n\r\n" % (expect, first + rest)
        client.sendall(head + b"x" * first)
        assert entered.wait(10)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as stalled:
            stalled.sendall(b"POST /echo HTTP/1.1\r\nHost: agl\r\nContent-Length: 10\r\n\r\nhalf")
            assert _received_until_closed(stalled).startswith(b"HTTP/1.1 408 ")  # /slow's body is older
        stream = client.makefile("rb")
        if expect:
            release.set()
            assert stream.readline() == b"HTTP/1.1 100 Continue\r\n" and stream.readline() == b"\r\n"
            client.sendall(b"x" * rest)
        else:
            client.sendall(b"x" * rest)  # into the kernel's buffers, the server reading none of it
            release.set()
        status, body = _answer(stream)
        assert status.startswith(b"HTTP/1.1 200") and json.loads(body) == {"received": first + rest}


async def _answering(scope: Scope, receive: Receive, send: Send) -> None:
    """Begins its answer at once, and reads the body on (until the client goes away)."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
    await send({"type": "http.response.body", "body": b"first", "more_body": True})
    while (await receive()).get("more_body"):
        pass


def _answering_app() -> FastAPI:
    """``/answered`` answers without reading the body; ``/answering/`` is `_answering`."""
    app = FastAPI()

    @app.post("/answered")
    async def answered() -> dict[str, bool]:
        return {"answered": True}

    app.mount("/answering", _answering)
    return app


@pytest.mark.parametrize(("path", "answer"), [(b"/answered", b'{"answered":true}'), (b"/answering/", b"first")])
def test_a_body_overdue_once_the_app_has_begun_its_answer_ends_the_connection_without_a_408(
    path: bytes, answer: bytes
) -> None:
    """The app may answer before the body is in (a refusal by its declared length, say): a client
    then owing the rest of it held the kept-alive connection as long as it liked."""
    with (
        ServingThread(_answering_app(), http=QuickDeadlines) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as client,
    ):
        client.sendall(b"POST %s HTTP/1.1\r\nHost: agl\r\nContent-Length: 1000\r\n\r\nhalf" % path)
        received = _received_until_closed(client)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(answer)


class FailingBodyCheck(QuickDeadlines):
    """Checking a body's deadline raises, as an unforeseen state of a connection might."""

    checked = threading.Event()

    def _check_body(self, now: float, since: float) -> None:
        type(self).checked.set()
        raise RuntimeError("an unforeseen state")


def test_one_connections_failed_check_does_not_end_the_watch_over_the_others() -> None:
    store = InMemoryLightningStore()
    with (
        ServingThread(create_app(ServerSettings(), store), http=FailingBodyCheck) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as failing,
    ):
        failing.sendall(_rollout(1000)[:-500])  # awaiting its body: the sweep checks it, and fails
        assert FailingBodyCheck.checked.wait(10)
        _a_deadline_passes(server)  # a later connection's head is still refused on time
    asyncio.run(store.close())


def test_an_empty_line_on_an_idle_kept_alive_connection_is_bounded_by_the_head_deadline(
    quick_server: ServingThread,
) -> None:
    """The parser skips empty lines before a request line (RFC 9112 §2.2) without beginning a
    request, yet uvicorn stopped its idle timer for them: one "\\r\\n" held the connection for good."""
    with socket.create_connection(("127.0.0.1", quick_server.port), timeout=10) as client:
        stream = client.makefile("rb")
        client.sendall(b"GET /health HTTP/1.1\r\nHost: agl\r\n\r\n")
        assert _answer(stream)[0].startswith(b"HTTP/1.1 200")
        client.sendall(b"\r\n")
        assert stream.read().startswith(b"HTTP/1.1 408 Request Timeout\r\n")  # then closed


def _headers(stream: socket.SocketIO | object) -> tuple[bytes, dict[bytes, bytes]]:
    """Status line and headers (lower-case names) of one answer read from a binary file over the socket."""
    status = stream.readline()  # type: ignore[attr-defined]
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b""):  # type: ignore[attr-defined]
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


@pytest.mark.parametrize(
    ("path", "length", "status"),
    [(b"/v1/agl/unknown", 10, b"404"), (b"/v1/agl/rollouts", 64 * 1024 * 1024, b"413")],
    ids=["not found", "too large by its declared length"],
)
def test_an_answer_before_the_body_a_client_holds_back_for_100_continue_ends_the_connection(
    server: ServingThread, path: bytes, length: int, status: bytes
) -> None:
    """The client holds its body back until ``100 Continue``; answered without it, the server cannot
    tell the body from the client's next request: uvicorn kept the connection and read the next
    request as the body (a 400, or no answer at all). RFC 9110 §10.1.1: say which; here, close."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        stream = client.makefile("rb")
        client.sendall(
            b"POST %s HTTP/1.1\r\nHost: agl\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (path, length)
        )
        answer, headers = _headers(stream)
        assert answer.startswith(b"HTTP/1.1 " + status) and headers[b"connection"] == b"close"
        stream.read(int(headers[b"content-length"]))
        assert stream.read() == b""  # closed


def test_a_body_sent_without_waiting_for_100_continue_keeps_the_connection(server: ServingThread) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        stream = client.makefile("rb")
        for _ in range(2):
            client.sendall(
                b"POST /v1/agl/unknown HTTP/1.1\r\nHost: agl\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}"
            )
            status, headers = _headers(stream)
            assert status.startswith(b"HTTP/1.1 404") and b"connection" not in headers
            stream.read(int(headers[b"content-length"]))


def test_an_http_1_0_client_is_never_sent_100_continue(server: ServingThread) -> None:
    """RFC 9110 §10.1.1 and §15.2: an HTTP/1.0 request's expectation is ignored, and an HTTP/1.0
    client gets no 1xx answer (it would take ``100 Continue`` for its answer)."""
    body = b'{"input": 1}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(
            b"POST /v1/agl/rollouts HTTP/1.0\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        answer = _received_until_closed(client)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b'"rollout_id"' in answer


def test_an_idle_connection_after_an_early_answer_and_its_body_is_closed_in_time() -> None:
    """An answer sent before the body was in (a 401, a 413 by its declared length) arms uvicorn's
    idle timer, and the body's bytes then stopped it: an idle connection was held for good."""
    with (
        ServingThread(_answering_app(), http=QuickDeadlines, timeout_keep_alive=1) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as client,
    ):
        stream = client.makefile("rb")
        client.sendall(b"POST /answered HTTP/1.1\r\nHost: agl\r\nContent-Length: 10\r\n\r\n")
        assert _answer(stream) == (b"HTTP/1.1 200 OK\r\n", b'{"answered":true}')
        client.sendall(b"0123456789")
        assert stream.read() == b""  # closed by the idle timeout, nothing said


def test_a_request_after_an_early_answered_body_is_not_cut_by_the_idle_timeout() -> None:
    """The idle timer armed again when such a body ends stops when the next request begins, in
    the same read too: a request taking longer than the idle timeout still gets its answer."""
    entered, release = threading.Event(), threading.Event()
    app = _slow_app(entered, release)

    @app.post("/answered")
    async def answered() -> dict[str, bool]:
        return {"answered": True}

    with (
        ServingThread(app, http=QuickDeadlines, timeout_keep_alive=1) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as client,
    ):
        stream = client.makefile("rb")
        client.sendall(b"POST /answered HTTP/1.1\r\nHost: agl\r\nContent-Length: 10\r\n\r\n")
        assert _answer(stream)[1] == b'{"answered":true}'
        client.sendall(b"0123456789POST /slow HTTP/1.1\r\nHost: agl\r\nContent-Length: 0\r\n\r\n")
        assert entered.wait(10)
        for _ in range(6):  # more than the idle timeout's 1 s
            _a_deadline_passes(server)
        release.set()
        assert _answer(stream) == (b"HTTP/1.1 200 OK\r\n", b'{"received":0}')
