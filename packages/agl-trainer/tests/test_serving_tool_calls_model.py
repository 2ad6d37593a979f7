"""Tool calls from a real model through the embedded server, over real HTTP on 127.0.0.1.

The tiny model of `agl.trainer.testing` gets a Qwen-style chat template that offers tools and
writes the hermes ``<tool_call>`` markup, and is overfit (a few seconds on CPU) to answer the
weather question with one call. Its reply must reach clients (plain HTTP, the openai client,
LangChain's ``bind_tools``, the LLM proxy's span) as a tool call, while the token ids stay those of
the markup the model sampled; and the next turn, with that call and the tool's answer, must be
rendered by the template.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import sse

from agl.core.testing.server import ServingThread
from agl.trainer.serving.embedded import EmbeddedModelServer
from agl.trainer.serving.openai_app import create_openai_app
from agl.trainer.testing import build_tiny_model

TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n<tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}"
    "</tools>\nCall a tool inside <tool_call></tool_call> tags.<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n{{ message.content or '' }}"
    "{% for call in message.tool_calls %}<tool_call>\n"
    '{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}\n</tool_call>'
    "{% endfor %}<|im_end|>\n"
    "{% elif message.role == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content or '' }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2.5's shape: tools in a system turn, calls as ``<tool_call>`` JSON with ``arguments`` an object."""

PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"name": "get_weather", "description": "The weather in a city", "parameters": PARAMETERS}
TOOLS = [{"type": "function", "function": WEATHER}]
"""With each field vLLM renders (it fills in a missing description with null), so that its prompt is
the one the model was trained on."""
QUESTION = "What is the weather in Paris?"
ASK = [{"role": "user", "content": QUESTION}]
MARKUP = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
GREEDY = {"messages": ASK, "tools": TOOLS, "max_tokens": 80, "temperature": 0, "return_token_ids": True}


def tool_calling_model(folder: Path, build: Callable[..., Path] = build_tiny_model) -> Path:
    """The tiny model (made by ``build``) with `TEMPLATE`, overfit to answer `ASK` with `MARKUP`
    (then its EOS)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    build(folder, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(folder)
    prompt = tokenizer.apply_chat_template(ASK, tools=TOOLS, add_generation_prompt=True, return_dict=False)
    ids = torch.tensor([[*prompt, *tokenizer.encode(MARKUP, add_special_tokens=False), tokenizer.eos_token_id]])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is many times faster than several
    try:
        for _ in range(150):
            optimizer.zero_grad()
            model(input_ids=ids, labels=labels).loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tool_calling_model(tmp_path_factory.mktemp("tool-model"))


@pytest.fixture(scope="module")
def server(folder: Path) -> Iterator[EmbeddedModelServer]:
    with EmbeddedModelServer(folder, seed=0) as running:  # the default parser: auto, from the template
        yield running


@pytest.fixture(scope="module")
def client(server: EmbeddedModelServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        yield http


def decode(server: EmbeddedModelServer, ids: list[int]) -> str:
    return str(server.engine.tokenizer.decode(ids))


def weather_call(call: dict[str, Any]) -> bool:
    """Whether ``call`` is the trained call, in OpenAI's shape."""
    assert call["id"].startswith("call_") and call["type"] == "function"
    return call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_a_reply_with_a_call_carries_it_as_tool_calls_and_the_markups_ids(
    client: httpx.Client, server: EmbeddedModelServer
) -> None:
    """It used to come back as content, so an agent with tools never saw a call."""
    answer = client.post("/chat/completions", json={**GREEDY, "logprobs": True}).json()
    [choice] = answer["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert weather_call(call)
    assert decode(server, choice["token_ids"]) == f"{MARKUP}<|im_end|>"  # training learns from the raw markup
    assert choice["token_ids"][-1] in server.engine.eos_token_ids
    assert len(choice["logprobs"]["content"]) == len(choice["token_ids"]) == answer["usage"]["completion_tokens"]


def test_a_streamed_call_comes_as_one_delta_and_the_ids_add_up(client: httpx.Client) -> None:
    whole = client.post("/chat/completions", json=GREEDY).json()["choices"][0]
    chunks = sse.stream(client, "/chat/completions", GREEDY)
    choices = [chunk["choices"][0] for chunk in chunks if chunk["choices"]]
    calls = [call for choice in choices for call in choice["delta"].get("tool_calls", [])]
    assert len(calls) == 1 and calls[0]["index"] == 0 and weather_call(calls[0])
    assert "".join(choice["delta"].get("content") or "" for choice in choices) == ""
    assert [choice["finish_reason"] for choice in choices if choice["finish_reason"]] == ["tool_calls"]
    ids = [token for choice in choices for token in choice.get("token_ids", [])]
    assert ids == whole["token_ids"]
    assert chunks[0]["prompt_token_ids"] == client.post("/chat/completions", json=GREEDY).json()["prompt_token_ids"]


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_none_leaves_the_markup_as_content(client: httpx.Client, stream: bool) -> None:
    """The same reply that "auto" reads as a call: the client said it wants no call."""
    auto = client.post("/chat/completions", json={**GREEDY, "tool_choice": "auto"}).json()["choices"][0]
    assert auto["finish_reason"] == "tool_calls"
    body = {**GREEDY, "tool_choice": "none"}
    if stream:
        choices = [chunk["choices"][0] for chunk in sse.stream(client, "/chat/completions", body) if chunk["choices"]]
        content = "".join(choice["delta"].get("content") or "" for choice in choices)
        assert not any("tool_calls" in choice["delta"] for choice in choices)
        finish = choices[-1]["finish_reason"]
    else:
        message = client.post("/chat/completions", json=body).json()["choices"][0]
        content, finish = message["message"]["content"], message["finish_reason"]
        assert "tool_calls" not in message["message"]
    assert (content, finish) == (MARKUP, "stop")


def test_a_server_with_the_parser_off_answers_with_the_markup_as_content(server: EmbeddedModelServer) -> None:
    with ServingThread(create_openai_app(server.engine, tool_call_parser=None)) as off:
        answer = httpx.post(f"{off.url}/v1/chat/completions", json=GREEDY, timeout=120).json()
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": MARKUP}
    assert answer["choices"][0]["finish_reason"] == "stop"


def test_the_embedded_servers_factory_takes_the_parser_setting(folder: Path) -> None:
    """``agl serve --engine transformers --tool-call-parser none`` reaches the app through the
    engine's factory, as every `--option` does."""
    from agl.trainer.plugins import model_servers, plugin_manager

    factory, _ = model_servers(plugin_manager())["transformers"]
    with factory(str(folder), port=0, tool_call_parser="none", seed=0) as off:
        answer = httpx.post(f"{off.base_url}/chat/completions", json=GREEDY, timeout=120).json()
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": MARKUP}
    with pytest.raises(ValueError, match="tool call parser 'mistral' is not known"):
        factory(str(folder), port=0, tool_call_parser="mistral")


def test_the_next_turn_renders_the_call_and_the_tools_answer(client: httpx.Client, server: EmbeddedModelServer) -> None:
    """OpenAI clients send the call's arguments as a JSON string; the template writes them as an
    object, so the next prompt holds the call exactly as the model wrote it (not a quoted string),
    and continues the previous prompt and reply id for id."""
    first = client.post("/chat/completions", json=GREEDY).json()
    [call] = first["choices"][0]["message"]["tool_calls"]
    turn = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "18 C and sunny"},
    ]
    for content in (None, ""):
        turn[1]["content"] = content
        response = client.post("/chat/completions", json={**GREEDY, "messages": turn, "max_tokens": 4})
        assert response.status_code == 200, response.text
        prompt_ids = response.json()["prompt_token_ids"]
        prompt = decode(server, prompt_ids)
        assert f"<|im_start|>assistant\n{MARKUP}<|im_end|>\n" in prompt
        assert "<tool_response>\n18 C and sunny\n</tool_response>" in prompt
        # The conversation so far, token for token: what a trainer stitches turns together by.
        sampled = first["prompt_token_ids"] + first["choices"][0]["token_ids"]
        assert prompt_ids[: len(sampled)] == sampled


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_whose_arguments_are_not_json_is_a_400_naming_the_message(client: httpx.Client, stream: bool) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "city=Paris"}}
    turn = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]}]
    response = client.post("/chat/completions", json={**GREEDY, "messages": turn, "stream": stream})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "message 1: tool call 0's function.arguments is not JSON" in message and "\n" not in message


def test_the_openai_client_gets_the_call(server: EmbeddedModelServer) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    reply = client.chat.completions.create(model=server.model_name, messages=ASK, tools=TOOLS, temperature=0)  # type: ignore[arg-type]
    [call] = reply.choices[0].message.tool_calls or []
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert reply.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_langchain_bind_tools_gets_the_call(server: EmbeddedModelServer, stream: bool) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    model = langchain_openai.ChatOpenAI(
        model=server.model_name, base_url=server.base_url, api_key="none", temperature=0, max_retries=0
    ).bind_tools(TOOLS)
    if stream:
        chunks = list(model.stream(QUESTION))
        message = chunks[0]
        for chunk in chunks[1:]:
            message += chunk
    else:
        message = model.invoke(QUESTION)
    [call] = message.tool_calls
    assert (call["name"], call["args"]) == ("get_weather", {"city": "Paris"})
    assert call["id"].startswith("call_")


@pytest.mark.parametrize("stream", [False, True])
def test_the_proxys_span_records_the_call(server: EmbeddedModelServer, tmp_path: Path, stream: bool) -> None:
    """Through agl's LLM proxy: the recorded output message holds the call, the ids its markup."""
    openai = pytest.importorskip("openai")
    from agl.core import open_store
    from agl.core.tracing import semconv
    from agl.trainer.proxy import LlmProxy

    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", watchdog_interval=None)
    attempt = asyncio.run(store.start_rollout({"task": "weather"}))
    with LlmProxy(store, [server.base_url]) as proxy:
        url = proxy.resource.base_url(attempt.rollout_id, attempt.attempt.attempt_id)
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model=proxy.resource.model,
            messages=ASK,  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[arg-type]
            temperature=0,
            stream=stream,
        )
        if stream:
            list(reply)  # type: ignore[arg-type]
    spans = asyncio.run(store.query_spans(attempt.rollout_id))
    asyncio.run(store.close())
    [span] = [span for span in spans if span.attributes.get(semconv.LLM_CALL)]
    [output] = json.loads(span.attributes[semconv.OUTPUT_MESSAGES])
    assert output["content"] is None, output  # as OpenAI sends it whole, though a stream has "" pieces
    [call] = output["tool_calls"]
    assert weather_call(call)
    assert list(span.attributes[semconv.FINISH_REASONS]) == ["tool_calls"]
    assert decode(server, list(span.attributes[semconv.RESPONSE_TOKEN_IDS])) == f"{MARKUP}<|im_end|>"
