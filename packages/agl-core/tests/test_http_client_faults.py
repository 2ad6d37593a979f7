"""The store client against what a deployment puts in its way: a server that closed an idle
keep-alive connection while the client's event loop was busy, a proxy answering HTML or a gateway
error for a request it may have forwarded, a redirect, a wrong token. Each must end as a store
answer or a clear one-line error, never a pydantic traceback, and a write the server may have
carried out must not be reported as refused."""

from __future__ import annotations

import asyncio
import select

import pytest
from test_http_client import Peer, ok

from agl.core import AglError, InvalidInput, StoreUnavailable, StoreUrlError, open_store
from agl.core.server import ServerSettings, create_app
from agl.core.store import InMemoryLightningStore
from agl.core.store.http import HttpLightningStore
from agl.core.store.http1 import ConnectionPool
from agl.core.testing.server import ServingThread

LIMIT = 30.0
"""Bounds every wait; a healthy test needs a fraction of a second."""
HTML = b"<html><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>"


def answer(status: bytes, body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 %s\r\ncontent-type: text/html\r\ncontent-length: %d\r\n" % (status, len(body))
    return head + b"".join(extra) + b"\r\n" + body


class Gateway:
    """A reverse proxy in front of a real server: forwards each request and relays the answer,
    except that to the next ``POST /dequeue`` it forwards (so the server carries it out) it answers
    ``replace_dequeue_answer``, as nginx does when the upstream's answer is late or cut off."""

    def __init__(self, upstream: str, replace_dequeue_answer: bytes) -> None:
        self.upstream = ConnectionPool(upstream)
        self.replacement: bytes | None = replace_dequeue_answer
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Gateway:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        self.upstream.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                status, body, _ = await self.upstream.request(request, LIMIT)
                if self.replacement is not None and head.startswith(b"POST /v1/agl/dequeue "):
                    writer.write(self.replacement)
                    self.replacement = None
                else:
                    writer.write(answer(b"%d X" % status, body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def wait_readable(pool: ConnectionPool) -> None:
    """Block (the event loop too) until the server's FIN is in the idle connection's socket."""
    (connection,) = pool._idle
    assert connection.transport is not None
    readable, _, _ = select.select([connection.transport.get_extra_info("socket")], [], [], LIMIT)
    assert readable, "the server never closed the idle connection"


async def test_a_connection_the_server_closed_while_the_loop_was_busy_is_not_reused() -> None:
    """The server closes an idle connection (a restart, its keep-alive timeout) while the client's
    loop is busy (a training step), so the loop has not yet read the FIN. A write sent next must
    go on a fresh connection: on the dead one it was reported unavailable though the server was up."""
    server_store = InMemoryLightningStore()
    with ServingThread(create_app(ServerSettings(), server_store), timeout_keep_alive=0.2) as server:
        async with HttpLightningStore(server.url, retry_seconds=0) as client:
            await client.statistics()
            wait_readable(client._pool())
            added = await client.add_resources({})
        assert (await server_store.get_latest_resources()) == added
        assert (await server_store.query_resources()).total == 1
        await server_store.close()


@pytest.mark.parametrize("status", [b"502 Bad Gateway", b"504 Gateway Timeout"])
async def test_a_gateway_error_to_a_forwarded_dequeue_recovers_the_claim(status: bytes) -> None:
    """A gateway answers 502/504 to a dequeue it forwarded and the server carried out: the claim
    is found through the worker's record and returned, not left stranded behind an error."""
    server_store = InMemoryLightningStore()
    with ServingThread(create_app(ServerSettings(), server_store)) as server:
        made = await server_store.enqueue_rollout({"n": 1})
        gateway = Gateway(server.url, answer(status, HTML))
        async with gateway, HttpLightningStore(gateway.url, retry_seconds=LIMIT) as client:
            claimed = await client.dequeue_rollout("wk-gw")
            assert gateway.replacement is None  # the dequeue went through the gateway's error
        assert claimed is not None and claimed.rollout_id == made.rollout_id
        (attempt,) = (await server_store.query_attempts(made.rollout_id)).items
        assert claimed.attempt.attempt_id == attempt.attempt_id and attempt.status == "preparing"
        await server_store.close()


async def test_what_a_proxy_or_a_wrong_url_answers_is_one_clear_error() -> None:
    """A 200 HTML page (the URL names a web server, a captive portal), a redirect, a 429 past the
    retry budget and an HTML 403: each an `AglError` saying what came, never pydantic's
    JSON-decoding traceback."""
    answers = [
        ok(HTML),
        answer(b"301 Moved Permanently", HTML, b"location: https://store.example/\r\n"),
        answer(b"429 Too Many Requests", b"slow down", b"retry-after: 1\r\n"),
        answer(b"403 Forbidden", HTML),
        ok(b'{"rollouts": "many"}'),
    ]
    async with Peer(answers) as peer, HttpLightningStore(peer.url, retry_seconds=0) as client:
        with pytest.raises(
            AglError, match=r"answer is not a StoreStatistics \(is the URL a store server's\?\): <html>"
        ):
            await client.statistics()
        with pytest.raises(AglError, match=f"the store at {peer.url} answered HTTP 301, a redirect"):
            await client.statistics()
        with pytest.raises(StoreUnavailable, match=r"answered 429 to GET /statistics: slow down \(gave up after 0 s\)"):
            await client.statistics()
        with pytest.raises(AglError, match="store answered HTTP 403: <html>"):
            await client.add_resources({})
        with pytest.raises(AglError, match=r"answer is not a Rollout .*: \{\"rollouts\""):
            await client.get_rollout_by_id("ro-1")


async def test_a_gateway_error_to_a_write_that_is_not_repeated_is_store_unavailable() -> None:
    """A write not repeated once sent (a new resources version) answered 502/503/504 by a proxy
    or a store whose database is down: `StoreUnavailable` (a runner rides that out), sent once."""
    unavailable = b'{"error":"StoreUnavailable","message":"database is locked","detail":{}}'
    answers = [
        answer(b"502 Bad Gateway", HTML),
        answer(b"503 Service Unavailable", unavailable),
        answer(b"504 Gateway Timeout", HTML),
    ]
    async with Peer(answers) as peer, HttpLightningStore(peer.url, retry_seconds=LIMIT) as client:
        with pytest.raises(
            StoreUnavailable, match=r"store answered 502 to POST /resources: <html>.*; it may have been carried out$"
        ):
            await client.add_resources({})
        with pytest.raises(
            StoreUnavailable, match=r"503 to POST /resources: database is locked; it was not carried out$"
        ):
            await client.add_resources({})
        with pytest.raises(
            StoreUnavailable,
            match=r"store answered 504 to PUT /resources/rs-1: <html>.*; it may have been carried out$",
        ):
            await client.update_resources("rs-1", {})
    assert len(peer.heads) == 3  # none sent twice


async def test_a_rate_limited_call_is_sent_again_even_when_not_repeatable() -> None:
    """A rate-limiting gateway's 429 was an `AglError` at once, failing the runner's dequeue. It
    means the request was not carried out, so even a dequeue (never repeated once it may have
    been) is sent again, after the ``Retry-After``."""
    answers = [answer(b"429 Too Many Requests", b"slow down", b"retry-after: 1\r\n"), ok(b"null")]
    async with Peer(answers) as peer, HttpLightningStore(peer.url, retry_seconds=LIMIT) as client:
        async with asyncio.timeout(LIMIT):
            assert await client.dequeue_rollout() is None
    assert [head.split(b" ", 2)[:2] for head in peer.heads] == [[b"POST", b"/v1/agl/dequeue"]] * 2


@pytest.mark.parametrize("status", [b"429 Too Many Requests", b"503 Service Unavailable"])
async def test_a_retry_after_past_the_retry_budget_gives_up_at_once(status: bytes) -> None:
    """``Retry-After: 3600`` with 1 s of budget: no hour's wait, nor the budget's second for a try
    the server said it would refuse, nor the usual back-off's five tries."""
    answers = [answer(status, b"slow down", b"retry-after: 3600\r\n")] * 10
    async with Peer(answers) as peer, HttpLightningStore(peer.url, retry_seconds=1) as client:
        async with asyncio.timeout(LIMIT):
            with pytest.raises(StoreUnavailable, match=r"to GET /statistics: slow down \(gave up after 1 s\)$"):
                await client.statistics()
    assert len(peer.heads) == 1


def test_a_wrong_token_and_an_oversized_body_are_clear_typed_errors() -> None:
    """Against a real server with a token and a body limit: a 401 names the URL and the variable
    to set; a 413 is the `InvalidInput` the limit is."""
    settings = ServerSettings(token="right", max_body_bytes=10_000)
    with ServingThread(create_app(settings, InMemoryLightningStore())) as server:

        async def ask() -> None:
            async with HttpLightningStore(server.url, token="wrong") as client:
                with pytest.raises(AglError, match=f"the store at {server.url} refused the request") as caught:
                    await client.statistics()
                assert "missing or wrong bearer token" in str(caught.value) and "AGL_STORE_TOKEN" in str(caught.value)
            async with HttpLightningStore(server.url, token="right") as client:
                with pytest.raises(InvalidInput, match="request body exceeds 10000 bytes"):
                    await client.enqueue_rollout("x" * 20_000)

        asyncio.run(ask())


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:notaport", "port could not be cast to integer value"),
        ("http://127.0.0.1:99999", "port out of range"),
        (
            "http://agent:s3cret@127.0.0.1:4747",
            "credentials in the URL are not sent; pass the token in AGL_STORE_TOKEN",
        ),
    ],
)
def test_a_store_url_with_a_bad_port_or_credentials_is_refused_when_opened(url: str, reason: str) -> None:
    """Refused by `open_store`, not by a bare ``ValueError`` at the first call; a password in the
    URL is never sent, and is not echoed into the error (nor a log)."""
    with pytest.raises(StoreUrlError, match=reason) as caught:
        open_store(url)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("token", "kind"),
    [("s3cret\n", "a line break"), ("s3\x7fcret", "a control character"), ("s3crét", "a non-ASCII character")],
)
def test_a_token_no_header_can_carry_is_refused_when_the_client_is_made(
    token: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token read from a file with its line break broke every request's head (a bare 400 from
    the server); a non-ASCII one raised `UnicodeEncodeError` or was a 401 for the right token.
    Refused at once, from the argument or the variable, naming the kind of character, never the
    secret (the server refuses the same tokens at start-up)."""
    with pytest.raises(InvalidInput, match=f"cannot carry \\({kind}\\)") as caught:
        HttpLightningStore("http://127.0.0.1:4747", token=token)
    assert "s3" not in str(caught.value)
    monkeypatch.setenv("AGL_STORE_TOKEN", token)
    with pytest.raises(InvalidInput, match="AGL_STORE_TOKEN"):
        open_store("http://127.0.0.1:4747")
    monkeypatch.setenv("AGL_STORE_TOKEN", " \tright\t ")  # spaces and tabs around it: the header's own trim
    HttpLightningStore("http://127.0.0.1:4747")
