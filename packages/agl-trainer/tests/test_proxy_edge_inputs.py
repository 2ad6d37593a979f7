"""Unusual requests and engine failures through the LLM proxy, over real HTTP on 127.0.0.1: the
agent gets a one-line 4xx or the engine's own error, the proxy stays up, and the span says what
happened (no span for a request refused before the engine saw it)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from starlette.types import Receive, Scope, Send

from agl.core.store.base import LightningStore
from agl.core.testing.server import ServingThread
from agl.core.tracing import semconv
from agl.core.types import AttemptedRollout, Span
from agl.trainer.proxy import LlmProxy
from agl.trainer.proxy.app import _Relay
from agl.trainer.proxy.forward import Forwarder, new_session
from agl.trainer.proxy.routing import Upstreams
from agl.trainer.proxy.shape import Asked
from agl.trainer.proxy.spans import CallRecord

pytest.importorskip("torch")
pytest.importorskip("transformers")

from agl.trainer.serving.embedded import EmbeddedModelServer
from agl.trainer.testing import build_tiny_model

HI = [{"role": "user", "content": "hi"}]
CHUNK = {
    "id": "chatcmpl-x",
    "model": "m",
    "prompt_token_ids": [1, 2],
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "token_ids": [40, 41]}],
}


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedModelServer]:
    with EmbeddedModelServer(build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0), seed=0) as running:
        yield running


@pytest.fixture
async def attempt(sqlite_store: LightningStore) -> AttemptedRollout:
    return await sqlite_store.start_rollout({"task": "say hi"})


async def llm_spans(store: LightningStore, attempt: AttemptedRollout) -> list[Span]:
    spans = await store.query_spans(attempt.rollout_id, attempt.attempt.attempt_id)
    return [span for span in spans if span.attributes.get(semconv.LLM_CALL)]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}',  # a lone surrogate: not text
    ],
    ids=["nested too deep", "lone surrogate"],
)
async def test_a_body_python_cannot_handle_is_a_400_and_the_proxy_stays_up(
    sqlite_store: LightningStore, attempt: AttemptedRollout, model_server: EmbeddedModelServer, raw: bytes
) -> None:
    """Both used to escape as a 500 with a traceback (RecursionError, UnicodeEncodeError)."""
    with LlmProxy(sqlite_store, [model_server.base_url]) as proxy:
        base = proxy.resource.base_url(attempt.rollout_id, attempt.attempt.attempt_id)
        async with httpx.AsyncClient(timeout=60) as client:
            refused = await client.post(base + "/chat/completions", content=raw)
            assert refused.status_code == 400, refused.text
            assert "\n" not in refused.json()["error"]["message"]
            assert await llm_spans(sqlite_store, attempt) == []
            again = await client.post(base + "/chat/completions", json={"messages": HI, "max_tokens": 1})
    assert again.status_code == 200
    assert len(await llm_spans(sqlite_store, attempt)) == 1


async def error_midstream(scope: Scope, receive: Receive, send: Send) -> None:
    """An engine that fails after its first chunk and says so in the stream, as agl's model server and vLLM do."""
    if scope["type"] != "http":
        return
    error = {"error": {"message": "internal server error", "type": "server_error", "param": None, "code": 500}}
    body = f"data: {json.dumps(CHUNK)}\n\ndata: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": body})


async def test_an_error_event_in_the_engines_stream_is_an_error_span(
    sqlite_store: LightningStore, attempt: AttemptedRollout
) -> None:
    """The stream ends in order ([DONE]) after the error: the span used to say OK, the call complete."""
    with ServingThread(error_midstream) as engine, LlmProxy(sqlite_store, [f"{engine.url}/v1"], model="m") as proxy:  # type: ignore[arg-type]
        base_url = proxy.resource.base_url(attempt.rollout_id, attempt.attempt.attempt_id)
        client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0)
        stream = await client.chat.completions.create(model="m", messages=HI, stream=True)  # type: ignore[arg-type]
        received = []
        with pytest.raises(openai.APIError, match="internal server error"):
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content)
    assert received == ["Hel"]
    [span] = await llm_spans(sqlite_store, attempt)
    assert span.status.status_code == "ERROR" and span.attributes["error.type"] == "stream_error"
    assert "internal server error" in (span.status.description or "")
    assert span.attributes[semconv.RESPONSE_TOKEN_IDS] == [40, 41]  # what did arrive is kept


async def first_chunk_then_wait(scope: Scope, receive: Receive, send: Send) -> None:
    """An engine that sends one chunk and then generates until its client goes away."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": f"data: {json.dumps(CHUNK)}\n\n".encode(), "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass


async def test_a_relay_closed_between_events_is_recorded_as_cancelled() -> None:
    """The server closes the relay (GeneratorExit, not a cancellation) when writing to a gone agent
    fails outside it; the span used to be stored as OK, a cut-off reply recorded as complete."""
    saved: list[Span] = []

    async def save(record: CallRecord) -> None:
        saved.append(record.span())

    with ServingThread(first_chunk_then_wait) as engine:  # type: ignore[arg-type]
        upstreams = Upstreams([f"{engine.url}/v1"])
        async with new_session() as session:
            sent = await Forwarder(session, upstreams).send("ro-1", "POST", "/chat/completions", b"{}")
            record = CallRecord("chat", {"messages": HI}, rollout_id="ro-1", attempt_id="at-1", sequence_id=1)
            events = _Relay("chat", sent, record, Asked(token_ids=True, logprobs=True), save).events()
            assert b"Hel" in await anext(events)
            await events.aclose()
    [span] = saved
    assert span.status.status_code == "ERROR" and span.attributes["error.type"] == "cancelled"
    assert upstreams.candidates("ro-1") == [f"{engine.url}/v1"]


async def test_the_responses_api_is_a_404_that_says_to_use_chat_completions(
    sqlite_store: LightningStore, attempt: AttemptedRollout, model_server: EmbeddedModelServer
) -> None:
    """An OpenAI Agents SDK agent, on its default API, is told how to switch to the proxy's."""
    from openai import AsyncOpenAI, NotFoundError

    with LlmProxy(sqlite_store, [model_server.base_url]) as proxy:
        base = proxy.resource.base_url(attempt.rollout_id, attempt.attempt.attempt_id)
        client = AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)
        with pytest.raises(NotFoundError, match=r'set_default_openai_api\("chat_completions"\)'):
            await client.responses.create(model=proxy.resource.model, input="hi")
        await client.close()
    assert await llm_spans(sqlite_store, attempt) == []
