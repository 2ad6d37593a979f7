"""The HTTP store client across a SIGKILL of the store server: real ``agl store serve`` processes
over one SQLite file, restarted on the same port, behind a TCP relay on 127.0.0.1 that picks the
moment of the crash.

The fault these tests pin: a dequeue the server carried out (its claim committed to SQLite) whose
answer never reached the client, because the server died in between. The client used to raise
`StoreUnavailable`, which ended a `Runner` (failing its rollouts in flight) and left the claimed
rollout in ``preparing`` under a worker that never heard of it: without ``unresponsive_seconds``,
for good. The claim must instead be found and returned, and no claim handed out twice.

The relay makes the crash land exactly there: it forwards a dequeue, and only once it has read the
server's answer (so the claim is committed) does it SIGKILL the server, start it again and cut the
client off; or it does so before forwarding the dequeue at all. Nothing waits on a sleep: every
wait is on an event, a process exit or a store call, bounded by `LIMIT`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry import trace
from store_server_process import Server, running

from agl.core.agent import rollout
from agl.core.runner import Runner
from agl.core.store.http import HttpLightningStore
from agl.core.testing.tracing import fresh_global_tracer_provider

LIMIT = 60.0
"""Bounds every wait; a healthy test needs a few seconds (two server start-ups)."""
WORKER = "wk-restart"


class Relay:
    """Forwards HTTP/1.1 requests to the server one at a time. Armed with `crash_at_next_dequeue`,
    it SIGKILLs and restarts the server at the next ``POST /dequeue`` (before forwarding it, or
    after reading the server's answer) and cuts that client connection off instead of answering."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.url = ""
        self.crashed = asyncio.Event()
        self._armed = False
        self._after_answer = True
        self._listener: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    def crash_at_next_dequeue(self, *, after_answer: bool) -> None:
        self._armed, self._after_answer = True, after_answer

    async def __aenter__(self) -> Relay:
        self._listener = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._listener.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        """Cuts off the connections still open, so each handler ends by itself, not cancelled."""
        assert self._listener is not None
        self._listener.close()
        for writer in self._connections.values():
            writer.transport.abort()
        await asyncio.wait_for(asyncio.gather(*self._connections), LIMIT)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            await self._relay(reader, writer)
        finally:
            del self._connections[task]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.server.port)
        except OSError:  # the server is down: the client sees its request unanswered and retries
            writer.transport.abort()
            return
        try:
            while True:
                request = await _message(reader)
                crash = self._armed and request.startswith(b"POST /v1/agl/dequeue ")
                if crash and not self._after_answer:
                    await self._crash(writer)
                    return
                upstream.write(request)
                answer = await _message(upstream_reader)
                if crash:  # the server has committed the dequeue and answered
                    await self._crash(writer)
                    return
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.transport.abort()
        finally:
            upstream.transport.abort()

    async def _crash(self, writer: asyncio.StreamWriter) -> None:
        self._armed = False
        await self.server.kill()
        await self.server.start()  # same port, same file; clients retry until it listens
        writer.transport.abort()
        self.crashed.set()


async def _message(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 message with a Content-Length body (all the client and uvicorn send here)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running(Server(tmp_path)) as server:
        yield server


@pytest.fixture
async def relay(server: Server) -> AsyncIterator[Relay]:
    async with Relay(server) as relay:
        yield relay


async def test_a_runner_rides_out_a_crash_that_loses_a_dequeues_answer(relay: Relay) -> None:
    async with HttpLightningStore(relay.url, retry_seconds=LIMIT) as store:
        made = [(await store.enqueue_rollout({"n": n})).rollout_id for n in range(3)]

        @rollout
        async def agent(task: dict[str, int]) -> float:
            if task["n"] == 0:  # the second dequeue comes only after this rollout ends
                relay.crash_at_next_dequeue(after_answer=True)
            return 1.0

        with fresh_global_tracer_provider():
            runner = Runner(agent, store, worker_id=WORKER, heartbeat_seconds=0.5, poll_seconds=0.2)
            try:
                taken = await asyncio.wait_for(runner.run(until_empty=True), LIMIT)
            finally:
                trace.get_tracer_provider().shutdown()  # type: ignore[attr-defined]
        assert relay.crashed.is_set()
        assert taken == 3  # each rollout taken once: the lost claim was found, not made again
        for rollout_id in made:
            (attempt,) = await store.query_attempts(rollout_id)
            assert attempt.status == "succeeded" and attempt.worker_id == WORKER
            assert (await store.get_rollout_by_id(rollout_id)).status == "succeeded"  # type: ignore[union-attr]


async def test_a_dequeue_cut_off_before_the_server_saw_it_claims_anew_and_hands_out_no_earlier_claim(
    relay: Relay,
) -> None:
    async with HttpLightningStore(relay.url, retry_seconds=LIMIT) as store:
        made = [(await store.enqueue_rollout({"n": n})).rollout_id for n in range(3)]
        first = await store.dequeue_rollout(WORKER)
        second = await store.dequeue_rollout(WORKER)
        assert first is not None and second is not None
        # The worker's current attempt is now the first claim: an older claim than the last answered.
        await store.update_attempt(second.rollout_id, second.attempt.attempt_id, status="succeeded")
        relay.crash_at_next_dequeue(after_answer=False)
        third = await asyncio.wait_for(store.dequeue_rollout(WORKER), LIMIT)
        assert relay.crashed.is_set()
        assert third is not None and third.rollout_id == made[2] and third.attempt.status == "preparing"
        for rollout_id in made:
            assert len(await store.query_attempts(rollout_id)) == 1


# Cut off after the server's answer (it found the queue empty) or before the server saw it.
@pytest.mark.parametrize("after_answer", [True, False], ids=["answer-lost", "request-lost"])
async def test_a_dequeue_that_claimed_nothing_is_none_though_cut_off_not_the_claim_held(
    relay: Relay, after_answer: bool
) -> None:
    async with HttpLightningStore(relay.url, retry_seconds=LIMIT) as store:
        made = await store.enqueue_rollout("only")
        held = await store.dequeue_rollout(WORKER)
        assert held is not None and held.rollout_id == made.rollout_id
        relay.crash_at_next_dequeue(after_answer=after_answer)
        assert await asyncio.wait_for(store.dequeue_rollout(WORKER), LIMIT) is None
        assert relay.crashed.is_set()
        (attempt,) = await store.query_attempts(made.rollout_id)
        assert attempt.attempt_id == held.attempt.attempt_id and attempt.status == "preparing"
