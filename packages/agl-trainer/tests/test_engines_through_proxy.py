"""Both model servers behind the LLM proxy: an agent's call through the proxy is recorded with the
token ids the engine itself returns for the same greedy request, and its triplet carries them.

The vLLM case needs ``AGL_VLLM_PYTHON`` (``python3 dev.py test`` builds ``.venvs/vllm``); without it,
it is skipped with that reason."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from agl.core import open_store
from agl.core.adapters import spans_to_triplets
from agl.core.tracing import semconv
from agl.trainer.proxy import LlmProxy
from agl.trainer.serving.embedded import EmbeddedModelServer
from agl.trainer.serving.model_server import ModelServer
from agl.trainer.serving.vllm import PYTHON_ENV, VllmServer
from agl.trainer.serving.vllm_bench import vllm_tiny_model

MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module", params=["transformers", "vllm"])
def model_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    folder = vllm_tiny_model(tmp_path_factory.mktemp("tiny"))  # a tiny model both engines take
    if request.param == "vllm":
        python = os.environ.get(PYTHON_ENV)
        if not python:
            pytest.skip(f"{PYTHON_ENV} is not set (python3 dev.py test builds .venvs/vllm and sets it)")
        server: ModelServer = VllmServer(folder, python=python, kv_cache_bytes=256 << 20)
    else:
        server = EmbeddedModelServer(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def greedy(base_url: str, model: str) -> dict[str, Any]:
    body = {"model": model, "messages": MESSAGES, "max_tokens": 8, "temperature": 0, "return_token_ids": True}
    response = httpx.post(f"{base_url}/chat/completions", json=body, timeout=120)
    response.raise_for_status()
    return response.json()


def test_a_call_through_the_proxy_keeps_the_engines_token_ids(model_server: ModelServer, tmp_path: Path) -> None:
    direct = greedy(model_server.base_url, model_server.model_name)
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", watchdog_interval=None)
    attempt = asyncio.run(store.start_rollout({"task": "colour"}))
    with LlmProxy(store, [model_server.base_url]) as proxy:
        llm = proxy.resource
        client = openai.OpenAI(base_url=llm.base_url(attempt.rollout_id, attempt.attempt.attempt_id), api_key="x")
        reply = client.chat.completions.create(model=llm.model, messages=MESSAGES, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    spans = asyncio.run(store.query_spans(attempt.rollout_id))
    asyncio.run(store.close())

    assert reply.choices[0].message.content == direct["choices"][0]["message"]["content"]
    [call] = [span for span in spans if span.attributes.get(semconv.LLM_CALL)]
    assert call.attributes[semconv.PROMPT_TOKEN_IDS] == direct["prompt_token_ids"]
    assert call.attributes[semconv.RESPONSE_TOKEN_IDS] == direct["choices"][0]["token_ids"]
    assert len(call.attributes[semconv.RESPONSE_LOGPROBS]) == len(direct["choices"][0]["token_ids"])
    [triplet] = spans_to_triplets(spans)
    assert triplet.prompt_token_ids == direct["prompt_token_ids"]
    assert triplet.response_token_ids == direct["choices"][0]["token_ids"]
