"""The LLM proxy end to end: a SQLite store file, real HTTP on 127.0.0.1, the scripted chat server
of agl-core as the engine (its token ids are known exactly), and the openai client as the agent."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry import trace
from starlette.types import ASGIApp, Receive, Scope, Send

from agl.core import open_store
from agl.core.adapters import spans_to_triplets
from agl.core.errors import AglError
from agl.core.ids import sequence_clock
from agl.core.store.base import LightningStore
from agl.core.testing.chat_server import (
    IM_END,
    ChatLog,
    Reply,
    Script,
    ToolCall,
    chat_log,
    chat_server_app,
    encode,
    token_logprob,
)
from agl.core.testing.server import ServingThread
from agl.core.testing.tracing import captured_spans
from agl.core.tracing import emit_reward, rollout_context, semconv
from agl.core.types import AttemptedRollout, ProxyLLM, Span
from agl.trainer.proxy import LlmProxy, RetryPolicy
from agl.trainer.serving.openai_wire import error_body

MODEL = "agl-toy"
HI = [{"role": "user", "content": "hi"}]
FAST_RETRY = RetryPolicy(tries_per_engine=2, first_delay=0.001, max_delay=0.001)


@pytest.fixture
async def attempt(sqlite_store: LightningStore) -> AttemptedRollout:
    return await sqlite_store.start_rollout({"task": "say hi"})


class FailFirst:
    """An engine that answers its first ``failures`` POSTs with ``status`` (a restarting server)."""

    def __init__(self, app: ASGIApp, failures: int, status: int = 503) -> None:
        self.app, self.failures, self.status = app, failures, status
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and self.refused < self.failures:
            self.refused += 1
            body = b'{"error": {"message": "warming up", "type": "server_error"}}'
            await send({"type": "http.response.start", "status": self.status, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


@dataclass
class Engine:
    url: str
    log: ChatLog
    gate: FailFirst | None = None


@pytest.fixture
def engines() -> Iterator[Callable[..., Engine]]:
    """``engines(script, failures=0)``: a scripted engine on 127.0.0.1, optionally failing first."""
    with ExitStack() as stack:

        def start(script: Script, *, failures: int = 0) -> Engine:
            app = chat_server_app(script)
            gate = FailFirst(app, failures) if failures else None
            server = stack.enter_context(ServingThread(gate or app))
            return Engine(f"{server.url}/v1", chat_log(app), gate)

        yield start


@pytest.fixture
def proxies(sqlite_store: LightningStore) -> Iterator[Callable[..., LlmProxy]]:
    with ExitStack() as stack:

        def start(upstreams: list[str], **options: Any) -> LlmProxy:
            options.setdefault("model", MODEL)
            options.setdefault("retry", FAST_RETRY)
            return stack.enter_context(LlmProxy(sqlite_store, upstreams, **options))

        yield start


def agent_client(llm: ProxyLLM, attempt: AttemptedRollout) -> openai.AsyncOpenAI:
    """The agent's client, configured from the published resource only."""
    base_url = llm.base_url(attempt.rollout_id, attempt.attempt.attempt_id)
    return openai.AsyncOpenAI(base_url=base_url, api_key=llm.api_key or "none", max_retries=0)


async def llm_spans(store: LightningStore, attempt: AttemptedRollout) -> list[Span]:
    spans = await store.query_spans(attempt.rollout_id, attempt.attempt.attempt_id)
    return [span for span in spans if span.attributes.get(semconv.LLM_CALL)]


# --- one call, one span ---------------------------------------------------------------------


async def test_one_call_is_one_span_with_the_engines_exact_token_ids(
    sqlite_store: LightningStore, attempt: AttemptedRollout, engines: Callable[..., Engine], proxies: Callable[..., Any]
) -> None:
    engine = engines(["Hello!"])
    llm = proxies([engine.url]).resource
    asked_at = sequence_clock(time.time())
    completion = await agent_client(llm, attempt).chat.completions.create(model=llm.model, messages=HI)
    assert completion.choices[0].message.content == "Hello!"

    [span] = await llm_spans(sqlite_store, attempt)
    sent = engine.log.replies[0]
    attributes = span.attributes
    assert span.name == f"chat {MODEL}"
    assert span.status.status_code == "OK"
    assert attributes[semconv.PROMPT_TOKEN_IDS] == sent.prompt_token_ids
    assert attributes[semconv.RESPONSE_TOKEN_IDS] == sent.token_ids
    assert attributes[semconv.RESPONSE_LOGPROBS] == sent.logprobs
    assert json.loads(attributes[semconv.INPUT_MESSAGES]) == HI
    assert json.loads(attributes[semconv.OUTPUT_MESSAGES]) == [{"role": "assistant", "content": "Hello!"}]
    assert attributes[semconv.RESPONSE_ID] == completion.id
    assert attributes[semconv.RESPONSE_MODEL] == MODEL
    assert attributes[semconv.USAGE_INPUT_TOKENS] == len(sent.prompt_token_ids)
    assert attributes[semconv.USAGE_OUTPUT_TOKENS] == len(sent.token_ids)
    assert (attributes[semconv.ROLLOUT_ID], attributes[semconv.ATTEMPT_ID]) == (
        attempt.rollout_id,
        attempt.attempt.attempt_id,
    )
    assert span.sequence_id >= asked_at  # numbered by the clock the agent's own spans use


async def test_rewards_the_agent_emits_match_the_proxied_calls_they_follow(
    sqlite_store: LightningStore, attempt: AttemptedRollout, engines: Callable[..., Engine], proxies: Callable[..., Any]
) -> None:
    # Two producers number one attempt's spans: the proxy (through the store) and the agent's
    # process (its own counter). The adapter orders them by sequence id, so both must follow one clock.
    engine = engines(["first", "second"])
    client = agent_client(proxies([engine.url]).resource, attempt)
    rollout_id, attempt_id = attempt.rollout_id, attempt.attempt.attempt_id
    with captured_spans() as local, rollout_context(rollout_id, attempt_id):
        tracer = trace.get_tracer("agent")
        with tracer.start_as_current_span("agent"):
            await client.chat.completions.create(model=MODEL, messages=HI)
            with tracer.start_as_current_span("tool lookup"):
                pass
            emit_reward(0.25)
            await client.chat.completions.create(model=MODEL, messages=HI)
            emit_reward(1.0)
        for span in local.get_finished_spans():
            sequence_id = (span.attributes or {})[semconv.SEQUENCE_ID]
            await sqlite_store.add_otel_span(rollout_id, attempt_id, span, sequence_id=int(sequence_id))  # type: ignore[arg-type]
    spans = await sqlite_store.query_spans(rollout_id, attempt_id)
    assert [span.name for span in spans] == [
        "agent",
        f"chat {MODEL}",
        "tool lookup",
        "agl.reward",
        f"chat {MODEL}",
        "agl.reward",
    ]
    assert [triplet.reward for triplet in spans_to_triplets(spans, reward="matched")] == [0.25, 1.0]


async def test_any_store_backend_works_from_the_proxys_thread(engines: Callable[..., Engine]) -> None:
    store = open_store("memory://", watchdog_interval=None)
    try:
        attempt = await store.start_rollout({"task": "memory"})
        engine = engines(["in memory"])
        with LlmProxy(store, [engine.url], model=MODEL) as proxy:
            await agent_client(proxy.resource, attempt).chat.completions.create(model=MODEL, messages=HI)
        [span] = await llm_spans(store, attempt)
        assert span.attributes[semconv.RESPONSE_TOKEN_IDS] == engine.log.replies[0].token_ids
    finally:
        await store.close()


async def test_a_w3c_traceparent_puts_the_span_under_the_callers_span(
    sqlite_store: LightningStore, attempt: AttemptedRollout, engines: Callable[..., Engine], proxies: Callable[..., Any]
) -> None:
    engine = engines(["traced"])
    llm = proxies([engine.url]).resource
    trace_id, parent_id = "ab" * 16, "cd" * 8
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            llm.base_url(attempt.rollout_id, attempt.attempt.attempt_id) + "/chat/completions",
            json={"model": MODEL, "messages": HI},
            headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
        )
    assert reply.status_code == 200
    [span] = await llm_spans(sqlite_store, attempt)
    assert (span.trace_id, span.parent_id) == (trace_id, parent_id)


async def test_the_agent_gets_the_shape_it_asked_for(
    attempt: AttemptedRollout, engines: Callable[..., Engine], proxies: Callable[..., Any]
) -> None:
    """The engine is always asked for ids and logprobs; the agent sees them only if it asked."""
    engine = engines(["one", "two"])
    llm = proxies([engine.url]).resource
    client = agent_client(llm, attempt)
    plain = await client.chat.completions.create(model=llm.model, messages=HI)
    assert plain.choices[0].logprobs is None
    assert "prompt_token_ids" not in (plain.model_extra or {})
    assert "token_ids" not in (plain.choices[0].model_extra or {})
    full = await client.chat.completions.create(
        model=llm.model, messages=HI, logprobs=True, extra_body={"return_token_ids": True}
    )
    assert (full.model_extra or {})["prompt_token_ids"] == engine.log.replies[1].prompt_token_ids
    assert (full.choices[0].model_extra or {})["token_ids"] == engine.log.replies[1].token_ids
    assert full.choices[0].logprobs is not None
    assert [entry.logprob for entry in full.choices[0].logprobs.content or ()] == engine.log.replies[1].logprobs
    assert all(request["return_token_ids"] is True and request["logprobs"] is True for request in engine.log.requests)


async def test_a_stream_records_the_same_token_ids_as_a_whole_reply(
    sqlite_store: LightningStore, attempt: AttemptedRollout, engines: Callable[..., Engine], proxies: Callable[..., Any]
) -> None:
    reply = Reply("Let me add.", tool_calls=[ToolCall("add", {"a": 1, "b": 2}, id="call-1")])
    engine = engines([reply, reply])
    llm = proxies([engine.url]).resource
    client = agent_client(llm, attempt)
    whole = await client.chat.completions.create(model=llm.model, messages=HI)
    stream = await client.chat.completions.create(model=llm.model, messages=HI, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == "Let me add."
    assert all("token_ids" not in (chunk.choices[0].model_extra or {}) for chunk in chunks if chunk.choices)

    first, second = await llm_spans(sqlite_store, attempt)  # in the store once the stream has ended
    assert first.attributes[semconv.RESPONSE_ID] == whole.id and second.attributes[semconv.RESPONSE_ID] == chunks[0].id
    for key in (semconv.PROMPT_TOKEN_IDS, semconv.RESPONSE_TOKEN_IDS, semconv.RESPONSE_LOGPROBS):
        assert second.attributes[key] == first.attributes[key]
    assert second.attributes[semconv.RESPONSE_TOKEN_IDS] == engine.log.replies[1].token_ids
    assert json.loads(second.attributes[semconv.OUTPUT_MESSAGES]) == json.loads(
        first.attributes[semconv.OUTPUT_MESSAGES]
    )
    assert second.attributes[semconv.FINISH_REASONS] == ["tool_calls"]


async def test_text_completions_whole_and_streamed(
    sqlite_store: LightningStore, attempt: AttemptedRollout, engines: Callable[..., Engine], proxies: Callable[..., Any]
) -> None:
    engine = engines(["abc", "abc"])
    llm = proxies([engine.url]).resource
    client = agent_client(llm, attempt)
    whole = await client.completions.create(model=llm.model, prompt="say abc")
    assert whole.choices[0].text == "abc" and whole.choices[0].logprobs is None
    streamed = [
        chunk async for chunk in await client.completions.create(model=llm.model, prompt="say abc", stream=True)
    ]
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == "abc"
    first, second = await llm_spans(sqlite_store, attempt)
    assert first.name == f"text_completion {MODEL}"
    for span, sent in zip((first, second), engine.log.replies, strict=True):
        assert span.attributes[semconv.PROMPT_TOKEN_IDS] == sent.prompt_token_ids
        assert span.attributes[semconv.RESPONSE_TOKEN_IDS] == sent.token_ids
        assert span.attributes[semconv.RESPONSE_LOGPROBS] == [token_logprob(t) for t in sent.token_ids]


PROMPT_IDS = [1, 20, 21, 2]
CHOICE_IDS = {0: [30, 31, 2], 1: [40, 41, 42, 43, 2]}  # choice 1 longer: its ids outlast choice 0's


def chosen_logprob(token_id: int) -> float:
    return -token_id / 100


def two_choice_engine() -> FastAPI:
    """An engine answering ``n=2`` the way vLLM does (the scripted server answers one choice): each
    choice its own token ids and logprobs; streamed, the choices' chunks interleave."""
    app = FastAPI()
    head = {"id": "chatcmpl-two", "created": 0, "model": MODEL}

    def logprobs(ids: list[int]) -> dict[str, Any]:
        return {"content": [{"token": f"token_id:{t}", "logprob": chosen_logprob(t), "top_logprobs": []} for t in ids]}

    def chunk(index: int, delta: dict[str, Any], ids: list[int], finish: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": logprobs(ids), "token_ids": ids, "finish_reason": finish}
        return f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', 'choices': [choice]})}\n\n".encode()

    async def events() -> AsyncIterator[bytes]:
        first = {"choices": [], "prompt_token_ids": PROMPT_IDS, "object": "chat.completion.chunk", **head}
        yield f"data: {json.dumps(first)}\n\n".encode()
        for step in range(max(len(ids) for ids in CHOICE_IDS.values())):
            for index, ids in CHOICE_IDS.items():
                if step < len(ids):
                    yield chunk(index, {"content": f"<{ids[step]}>"}, [ids[step]])
        for index in CHOICE_IDS:
            yield chunk(index, {}, [], "stop")
        yield b"data: [DONE]\n\n"

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Response:
        body = await request.json()
        assert body["n"] == 2 and body["return_token_ids"] is True
        if body.get("stream"):
            return StreamingResponse(events(), media_type="text/event-stream")
        choices = [
            {
                "index": index,
                "message": {"role": "assistant", "content": "".join(f"<{t}>" for t in ids)},
                "logprobs": logprobs(ids),
                "token_ids": ids,
                "finish_reason": "stop",
            }
            for index, ids in CHOICE_IDS.items()
        ]
        reply = {**head, "object": "chat.completion", "choices": choices, "prompt_token_ids": PROMPT_IDS}
        return JSONResponse(reply)

    return app


@pytest.mark.parametrize("streamed", [False, True])
async def test_every_choice_of_an_n_sample_reply_keeps_its_token_ids(
    sqlite_store: LightningStore, attempt: AttemptedRollout, proxies: Callable[..., Any], streamed: bool
) -> None:
    """``n=2`` samples two answers to one prompt (GRPO's groups, say); only the first choice's ids
    used to be recorded, and the other samples could not be trained on."""
    with ServingThread(two_choice_engine()) as engine:
        llm = proxies([f"{engine.url}/v1"]).resource
        client = agent_client(llm, attempt)
        reply = await client.chat.completions.create(model=llm.model, messages=HI, n=2, stream=streamed)  # type: ignore[call-overload]
        if streamed:
            [chunk async for chunk in reply]
    [span] = await llm_spans(sqlite_store, attempt)
    attributes = span.attributes
    assert attributes[semconv.PROMPT_TOKEN_IDS] == PROMPT_IDS
    for index, suffix in ((0, ""), (1, ".1")):  # choice 0 where the adapters read it; choice i at ".i"
        assert attributes[semconv.RESPONSE_TOKEN_IDS + suffix] == CHOICE_IDS[index]
        assert attributes[semconv.RESPONSE_LOGPROBS + suffix] == [chosen_logprob(t) for t in CHOICE_IDS[index]]
    assert [message["content"] for message in json.loads(attributes[semconv.OUTPUT_MESSAGES])] == [
        "".join(f"<{t}>" for t in ids) for ids in CHOICE_IDS.values()
    ]
    assert attributes[semconv.USAGE_OUTPUT_TOKENS] == sum(len(ids) for ids in CHOICE_IDS.values())


async def test_triplets_carry_the_engines_ids_and_merge_continuing_turns(
    sqlite_store: LightningStore, attempt: AttemptedRollout, engines: Callable[..., Engine], proxies: Callable[..., Any]
) -> None:
    engine = engines(["Hi! What is 1+2?", "3"])
    llm = proxies([engine.url]).resource
    client = agent_client(llm, attempt)
    first = await client.chat.completions.create(model=llm.model, messages=HI)
    history = [
        *HI,
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "?"},
    ]
    await client.chat.completions.create(model=llm.model, messages=history)

    spans = await sqlite_store.query_spans(attempt.rollout_id, attempt.attempt.attempt_id)
    [separate_1, separate_2] = spans_to_triplets(spans, merge=False)
    sent_1, sent_2 = engine.log.replies
    assert (separate_1.prompt_token_ids, separate_1.response_token_ids) == (sent_1.prompt_token_ids, sent_1.token_ids)
    assert (separate_2.prompt_token_ids, separate_2.response_token_ids) == (sent_2.prompt_token_ids, sent_2.token_ids)
    assert separate_2.response_logprobs == sent_2.logprobs
    [merged] = spans_to_triplets(spans)  # the second prompt continues the first exactly: one sequence
    assert merged.prompt_token_ids == sent_1.prompt_token_ids
    assert merged.prompt_token_ids + (merged.response_token_ids or []) == sent_2.prompt_token_ids + sent_2.token_ids


async def test_concurrent_calls_of_one_attempt_are_numbered_apart(
    sqlite_store: LightningStore, attempt: AttemptedRollout, engines: Callable[..., Engine], proxies: Callable[..., Any]
) -> None:
    engine = engines(lambda messages: str(messages[-1]["content"]).upper())
    llm = proxies([engine.url]).resource
    client = agent_client(llm, attempt)
    words = [f"word {n}" for n in range(16)]
    replies = await asyncio.gather(
        *(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": w}]) for w in words)
    )
    assert [reply.choices[0].message.content for reply in replies] == [w.upper() for w in words]
    spans = await llm_spans(sqlite_store, attempt)
    assert len({span.sequence_id for span in spans}) == 16
    for span in spans:  # each span holds its own call's exchange, ids included
        [asked_for] = json.loads(span.attributes[semconv.INPUT_MESSAGES])
        [answer] = json.loads(span.attributes[semconv.OUTPUT_MESSAGES])
        assert answer["content"] == asked_for["content"].upper()
        assert span.attributes[semconv.RESPONSE_TOKEN_IDS] == [*encode(answer["content"]), IM_END]


# --- routing, retries, failures --------------------------------------------------------------


async def test_each_rollout_sticks_to_one_engine(
    sqlite_store: LightningStore, engines: Callable[..., Engine], proxies: Callable[..., Any]
) -> None:
    first, second = engines(["a"] * 4), engines(["b"] * 4)
    proxy = proxies([first.url, second.url])
    rollouts = [await sqlite_store.start_rollout({"task": n}) for n in range(2)]
    clients = [agent_client(proxy.resource, rollout) for rollout in rollouts]
    answers = [
        [(await client.chat.completions.create(model=MODEL, messages=HI)).choices[0].message.content for _ in range(3)]
        for client in clients
    ]
    assert answers == [["a", "a", "a"], ["b", "b", "b"]]  # the second rollout went to the idle engine
    spans = await llm_spans(sqlite_store, rollouts[0])
    assert {span.attributes["agl.proxy.upstream"] for span in spans} == {first.url}

    proxy.set_upstreams([second.url])  # the engine of rollout 0 is gone: it moves
    moved = await clients[0].chat.completions.create(model=MODEL, messages=HI)
    assert moved.choices[0].message.content == "b"


async def test_a_transient_engine_failure_is_retried(
    sqlite_store: LightningStore, attempt: AttemptedRollout, engines: Callable[..., Engine], proxies: Callable[..., Any]
) -> None:
    engine = engines(["after a retry"], failures=1)
    llm = proxies([engine.url]).resource
    completion = await agent_client(llm, attempt).chat.completions.create(model=llm.model, messages=HI)
    assert completion.choices[0].message.content == "after a retry"
    [span] = await llm_spans(sqlite_store, attempt)
    assert span.status.status_code == "OK"
    assert span.attributes[semconv.RESPONSE_TOKEN_IDS] == engine.log.replies[0].token_ids


async def test_an_engine_that_stays_down_fails_over_to_the_next(
    sqlite_store: LightningStore, attempt: AttemptedRollout, engines: Callable[..., Engine], proxies: Callable[..., Any]
) -> None:
    down = engines(["never"], failures=10)
    up = engines(["from the other engine"])
    llm = proxies([down.url, up.url]).resource
    completion = await agent_client(llm, attempt).chat.completions.create(model=llm.model, messages=HI)
    assert completion.choices[0].message.content == "from the other engine"
    assert down.log.requests == []


async def test_new_rollouts_do_not_each_retry_an_engine_that_is_down(
    sqlite_store: LightningStore, engines: Callable[..., Engine], proxies: Callable[..., Any]
) -> None:
    """Running nothing and serving no rollout, a down engine was the least busy: every new
    rollout's first call went there first and paid its retries (seconds each for a lost host)."""
    down = engines(["never"], failures=100)
    up = engines(["from the other engine"] * 3)
    llm = proxies([down.url, up.url]).resource
    for task in range(3):
        rollout = await sqlite_store.start_rollout({"task": task})
        completion = await agent_client(llm, rollout).chat.completions.create(model=llm.model, messages=HI)
        assert completion.choices[0].message.content == "from the other engine"
    assert down.gate is not None and down.gate.refused == FAST_RETRY.tries_per_engine  # the first rollout's tries only


async def test_the_engines_own_errors_are_passed_on_without_retrying(
    sqlite_store: LightningStore, attempt: AttemptedRollout, engines: Callable[..., Engine], proxies: Callable[..., Any]
) -> None:
    engine = engines(["unused"])
    llm = proxies([engine.url]).resource
    with pytest.raises(openai.BadRequestError, match="one choice"):
        await agent_client(llm, attempt).chat.completions.create(model=llm.model, messages=HI, n=2)
    assert len(engine.log.requests) == 1
    [span] = await llm_spans(sqlite_store, attempt)
    assert span.status.status_code == "ERROR" and "400" in (span.status.description or "")
    assert span.attributes["error.type"] == "http.400"


async def breaking_engine(scope: Scope, receive: Receive, send: Send) -> None:
    """An engine whose stream breaks off after its first chunk (a crashed server)."""
    if scope["type"] != "http":
        return
    chunk = {"id": "chatcmpl-x", "model": MODEL, "prompt_token_ids": [1, 2], "choices": [{"index": 0}]}
    chunk["choices"][0].update(delta={"role": "assistant", "content": "Hel"}, token_ids=[40, 41, 42])
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(), "more_body": True})
    raise RuntimeError("the engine crashed")


async def test_a_stream_that_breaks_off_is_an_error_for_the_agent_and_in_the_span(
    sqlite_store: LightningStore, attempt: AttemptedRollout, proxies: Callable[..., Any]
) -> None:
    with ServingThread(breaking_engine) as engine:  # type: ignore[arg-type]
        llm = proxies([f"{engine.url}/v1"]).resource
        stream = await agent_client(llm, attempt).chat.completions.create(model=MODEL, messages=HI, stream=True)
        received = []
        with pytest.raises(openai.APIError, match="broke off"):
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content)
    assert received == ["Hel"]
    [span] = await llm_spans(sqlite_store, attempt)
    assert span.status.status_code == "ERROR" and "broke off" in (span.status.description or "")
    assert span.attributes[semconv.RESPONSE_TOKEN_IDS] == [40, 41, 42]  # what did arrive is kept


class EngineTheAgentLeaves:
    """An engine that holds its reply until its client (the proxy) goes away, saying when a call
    arrived and when the proxy left."""

    def __init__(self) -> None:
        self.arrived, self.left = threading.Event(), threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.arrived.set()
        while (await receive())["type"] != "http.disconnect":
            pass
        self.left.set()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_an_agent_that_leaves_before_the_reply_is_a_cancelled_call_and_the_engine_is_left(
    sqlite_store: LightningStore, attempt: AttemptedRollout, proxies: Callable[..., Any], stream: bool
) -> None:
    """The proxy waited for the engine's reply whatever the agent did: when the agent's client
    timed out, the engine generated on for nobody and the reply was stored as an OK call the
    agent never saw (beside its retry's: two calls for one)."""
    engine = EngineTheAgentLeaves()
    with ServingThread(engine) as served:  # type: ignore[arg-type]
        llm = proxies([f"{served.url}/v1"]).resource
        url = llm.base_url(attempt.rollout_id, attempt.attempt.attempt_id) + "/chat/completions"
        async with httpx.AsyncClient(timeout=60) as client:
            call = asyncio.create_task(client.post(url, json={"model": MODEL, "messages": HI, "stream": stream}))
            assert await asyncio.to_thread(engine.arrived.wait, 30)
            call.cancel()  # the agent gives up: its connection closes
            await asyncio.wait((call,))
        assert await asyncio.to_thread(engine.left.wait, 30)  # the proxy stopped waiting for the engine
    [span] = await llm_spans(sqlite_store, attempt)
    assert span.status.status_code == "ERROR" and span.attributes["error.type"] == "cancelled"


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/v1"


async def test_every_engine_down_is_a_one_line_502_and_an_error_span(
    sqlite_store: LightningStore, attempt: AttemptedRollout, proxies: Callable[..., Any]
) -> None:
    llm = proxies([closed_port_url(), closed_port_url()]).resource
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            llm.base_url(attempt.rollout_id, attempt.attempt.attempt_id) + "/chat/completions",
            json={"model": MODEL, "messages": HI},
        )
    assert reply.status_code == 502
    message = reply.json()["error"]["message"]
    assert message.startswith("no engine answered") and "\n" not in message
    [span] = await llm_spans(sqlite_store, attempt)
    assert span.status.status_code == "ERROR" and span.attributes["error.type"] == "NoEngineAnswered"
    assert semconv.RESPONSE_TOKEN_IDS not in span.attributes
    assert json.loads(span.attributes[semconv.INPUT_MESSAGES]) == HI
    rollout = await sqlite_store.get_rollout_by_id(attempt.rollout_id)
    assert rollout is not None and rollout.status == "running"  # the store is untouched otherwise


async def test_bad_requests_are_one_line_4xx_and_touch_nothing(
    sqlite_store: LightningStore, attempt: AttemptedRollout, engines: Callable[..., Engine], proxies: Callable[..., Any]
) -> None:
    engine = engines(["unused"])
    proxy = proxies([engine.url], max_body_bytes=10_000)
    base = proxy.resource.base_url(attempt.rollout_id, attempt.attempt.attempt_id)
    async with httpx.AsyncClient() as client:
        cases = {
            "not json": (await client.post(base + "/chat/completions", content=b"{nope"), 400),
            "not an object": (await client.post(base + "/chat/completions", json=[1]), 400),
            "unknown rollout": (
                await client.post(proxy.url + "/rollout/ro-nope/attempt/at-nope/v1/chat/completions", json={}),
                404,
            ),
            "malformed id": (
                await client.post(proxy.url + "/rollout/a%20b/attempt/x/v1/chat/completions", json={}),
                400,
            ),
            "no rollout in the path": (await client.post(proxy.url + "/v1/chat/completions", json={}), 404),
            "too large": (await client.post(base + "/chat/completions", json={"messages": "x" * 20_000}), 413),
        }
    for case, (reply, status) in cases.items():
        assert reply.status_code == status, case
        assert "\n" not in reply.text, case
        # agl serve's error shape (code: the status), as the engines' own errors passed on have it
        assert reply.json() == error_body(reply.json()["error"]["message"], status), case
    assert engine.log.requests == []
    assert await llm_spans(sqlite_store, attempt) == []


async def test_a_token_is_required_when_set(
    attempt: AttemptedRollout, engines: Callable[..., Engine], proxies: Callable[..., Any]
) -> None:
    engine = engines(["with the token"])
    llm = proxies([engine.url], token="s3cret").resource
    assert llm.api_key == "s3cret"
    base = llm.base_url(attempt.rollout_id, attempt.attempt.attempt_id)
    async with httpx.AsyncClient() as client:
        refused = await client.post(base + "/chat/completions", json={"model": MODEL, "messages": HI})
        wrong = await client.get(base + "/models", headers={"authorization": "Bearer nope"})
    assert (refused.status_code, wrong.status_code) == (401, 401)
    assert refused.json()["error"]["message"] == "missing or wrong bearer token"
    completion = await agent_client(llm, attempt).chat.completions.create(model=llm.model, messages=HI)
    assert completion.choices[0].message.content == "with the token"
    assert engine.log.requests[0]["messages"] == HI


async def test_the_engines_token_is_the_proxys_to_send(attempt: AttemptedRollout, proxies: Callable[..., Any]) -> None:
    """The agent's key (the proxy's token) never reaches the engine; the engine's token does."""
    app = chat_server_app(["ok"])
    seen: list[bytes | None] = []

    async def engine(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen.append(dict(scope["headers"]).get(b"authorization"))
        await app(scope, receive, send)

    with ServingThread(engine) as served:  # type: ignore[arg-type]
        llm = proxies([f"{served.url}/v1"], token="for-agents", upstream_token="for-engines").resource
        await agent_client(llm, attempt).chat.completions.create(model=MODEL, messages=HI)
    assert seen == [b"Bearer for-engines"]


async def test_models_are_listed_and_the_model_name_is_discovered(
    attempt: AttemptedRollout, engines: Callable[..., Engine], proxies: Callable[..., Any]
) -> None:
    engine = engines([])
    llm = proxies([engine.url], model=None).resource
    assert llm.model == MODEL
    models = await agent_client(llm, attempt).models.list()
    assert [model.id for model in models.data] == [MODEL]


async def test_the_model_is_discovered_past_an_http_proxy_in_the_environment(
    engines: Callable[..., Engine], proxies: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """urllib sends through $http_proxy by default: set, as on many clusters, discovery went to
    that proxy instead of the engine and failed ("no engine named its model")."""
    engine = engines([])
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, closed_port_url().removesuffix("/v1"))
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    urllib.request.install_opener(None)  # urlopen reads the environment when it first builds its opener
    try:
        assert proxies([engine.url], model=None).resource.model == MODEL
    finally:
        urllib.request.install_opener(None)  # none built under this environment stays


def test_start_and_stop_are_idempotent_and_refuse_what_cannot_work(
    sqlite_store: LightningStore, engines: Callable[..., Engine]
) -> None:
    with pytest.raises(AglError, match="without a token"):
        LlmProxy(sqlite_store, ["http://127.0.0.1:1/v1"], host="0.0.0.0")
    with pytest.raises(AglError, match="pass model="):
        LlmProxy(sqlite_store, [closed_port_url()]).start()
    proxy = LlmProxy(sqlite_store, [engines([]).url], model=MODEL)
    first = proxy.start()
    assert proxy.start() is first and first.endpoint == proxy.url
    proxy.stop()
    proxy.stop()
    with pytest.raises(AglError, match="not started"):
        proxy.resource  # noqa: B018


def test_the_app_is_a_plain_fastapi_app(sqlite_store: LightningStore) -> None:
    """`create_proxy_app` serves under any ASGI server; `LlmProxy` is only one way to run it."""
    from agl.trainer.proxy import Upstreams, create_proxy_app

    app = create_proxy_app(sqlite_store, Upstreams(["http://127.0.0.1:1/v1"]))
    assert isinstance(app, FastAPI)
    paths = {getattr(route, "path", "") for route in app.routes}
    assert "/rollout/{rollout_id}/attempt/{attempt_id}/v1/chat/completions" in paths
