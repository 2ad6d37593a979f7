"""The LLM proxy under many concurrent calls, over real HTTP on 127.0.0.1: every call an agent makes
reaches an engine at once, however many are running (the engine, not the proxy, queues them)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from starlette.types import Receive, Scope, Send

from agl.core.store.base import LightningStore
from agl.core.testing.server import ServingThread
from agl.core.tracing import semconv
from agl.core.types import AttemptedRollout
from agl.trainer.proxy import LlmProxy

REPLY = {
    "id": "chatcmpl-held",
    "object": "chat.completion",
    "model": "m",
    "prompt_token_ids": [1, 2],
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop", "token_ids": [5]}
    ],
}


class HoldingEngine:
    """An engine that answers no call until ``expected`` calls are running at once (a batch it
    waits to fill), or until `release`: a long generation, as long as the test needs."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._released: asyncio.Event | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if self._released is None:
            self._loop, self._released = asyncio.get_running_loop(), asyncio.Event()
        while (await receive()).get("more_body"):
            pass
        self.arrived += 1
        if self.arrived >= self.expected:
            self._released.set()
        await self._released.wait()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(REPLY).encode()})

    def release(self) -> None:
        if self._loop is not None and self._released is not None:
            self._loop.call_soon_threadsafe(self._released.set)


async def test_more_concurrent_calls_than_a_connection_pool_holds_all_reach_the_engine(
    store: LightningStore,
) -> None:
    """The proxy's HTTP client pooled at most 1024 connections and gave up waiting for a free one
    after its 5 s connect timeout: with more agents than that generating at once (a large RL
    batch), the rest got a 502 "no engine answered", their rollouts failed."""
    calls = 1100
    attempt: AttemptedRollout = await store.start_rollout({"task": "many"})
    engine = HoldingEngine(expected=calls)
    with ServingThread(engine) as served, LlmProxy(store, [f"{served.url}/v1"], model="m") as proxy:  # type: ignore[arg-type]
        url = proxy.resource.base_url(attempt.rollout_id, attempt.attempt.attempt_id) + "/chat/completions"
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:

            async def call() -> int:
                async with client.post(url, json=body) as reply:
                    await reply.read()
                    return reply.status

            replies = [asyncio.create_task(call()) for _ in range(calls)]
            await asyncio.wait(replies, return_when=asyncio.FIRST_COMPLETED)  # all held, or one refused
            engine.release()
            statuses = await asyncio.gather(*replies)
    assert statuses == [200] * calls, {status: statuses.count(status) for status in set(statuses)}
    spans = await store.query_spans(attempt.rollout_id, attempt.attempt.attempt_id)
    recorded = [span for span in spans if span.attributes.get(semconv.LLM_CALL)]
    assert [span.status.status_code for span in recorded] == ["OK"] * calls
