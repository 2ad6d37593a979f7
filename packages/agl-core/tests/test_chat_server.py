"""The scripted OpenAI-compatible server: real HTTP on 127.0.0.1, driven by the real openai client."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from agl.core.testing.chat_server import (
    IM_END,
    IM_START,
    ChatLog,
    Reply,
    Script,
    ToolCall,
    chat_log,
    chat_prompt_token_ids,
    chat_server_app,
    decode,
    encode,
    token_logprob,
)
from agl.core.testing.server import ServingThread

openai = pytest.importorskip("openai", reason="the server is checked with the real openai client")

MODEL = "agl-toy"
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
ASK = [{"role": "user", "content": "What is 2 + 3?"}]
TOKEN_IDS = {"return_token_ids": True}

Serve = Callable[..., tuple[openai.OpenAI, ChatLog]]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start a server over a script; returns an openai client for it (no retries) and its log."""
    with ExitStack() as stack:

        def start(script: Script, **options: Any) -> tuple[openai.OpenAI, ChatLog]:
            app = chat_server_app(script, **options)
            server = stack.enter_context(ServingThread(app))
            client = stack.enter_context(openai.OpenAI(base_url=f"{server.url}/v1", api_key="test", max_retries=0))
            return client, chat_log(app)

        yield start


def test_the_toy_tokenizer_is_bytes_plus_ten_with_two_specials() -> None:
    assert encode("Hé") == [ord("H") + 10, 0xC3 + 10, 0xA9 + 10]
    assert decode([IM_START, *encode("Hé, 世界"), IM_END]) == "<|im_start|>Hé, 世界<|im_end|>"
    assert decode(chat_prompt_token_ids([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    with_tools = decode(chat_prompt_token_ids(ASK, TOOLS))
    assert with_tools.startswith(f"<|im_start|>system\n# Tools\n{json.dumps(TOOLS, sort_keys=True)}<|im_end|>\n")


def test_a_chat_completion_returns_vllm_token_ids_and_logprobs(serve: Serve) -> None:
    client, log = serve(["Hello, wörld!"])
    completion = client.chat.completions.create(model=MODEL, messages=ASK, logprobs=True, extra_body=TOKEN_IDS)
    (choice,) = completion.choices
    assert (choice.message.content, choice.finish_reason, completion.model) == ("Hello, wörld!", "stop", MODEL)
    assert completion.prompt_token_ids == chat_prompt_token_ids(ASK)  # type: ignore[attr-defined]
    assert choice.token_ids == [*encode("Hello, wörld!"), IM_END]  # type: ignore[attr-defined]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert [entry.logprob for entry in choice.logprobs.content] == [token_logprob(t) for t in choice.token_ids]  # type: ignore[attr-defined]
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        len(chat_prompt_token_ids(ASK)),
        len(choice.token_ids),  # type: ignore[attr-defined]
    )
    (sent,) = log.replies
    assert (sent.token_ids, sent.prompt_token_ids) == (choice.token_ids, completion.prompt_token_ids)  # type: ignore[attr-defined]
    assert log.requests[0]["messages"] == ASK and log.requests[0]["return_token_ids"] is True


def test_token_ids_and_logprobs_come_only_when_asked_for(serve: Serve) -> None:
    client, _ = serve(["plain", "named"])
    plain = client.chat.completions.create(model=MODEL, messages=ASK)
    assert "prompt_token_ids" not in (plain.model_extra or {})
    assert "token_ids" not in (plain.choices[0].model_extra or {}) and plain.choices[0].logprobs is None
    named = client.chat.completions.create(
        model=MODEL, messages=ASK, logprobs=True, top_logprobs=1, extra_body={"return_tokens_as_token_ids": True}
    )
    assert named.choices[0].logprobs is not None and named.choices[0].logprobs.content is not None
    first = named.choices[0].logprobs.content[0]
    assert first.token == f"token_id:{encode('n')[0]}" and first.top_logprobs[0].logprob == first.logprob


def test_a_streamed_tool_call_adds_up_to_the_whole_reply(serve: Serve) -> None:
    reply = Reply("Let me add.", [ToolCall("add", {"a": 2, "b": 3}, id="call-a"), ToolCall("add", '{"a": 1}')])
    client, log = serve([reply])
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,  # type: ignore[arg-type]
        stream=True,
        logprobs=True,
        stream_options={"include_usage": True},
        extra_body=TOKEN_IDS,
    )
    chunks = list(stream)
    assert [chunk.model_extra.get("prompt_token_ids") is not None for chunk in chunks].count(True) == 1
    assert chunks[0].prompt_token_ids == chat_prompt_token_ids(ASK, TOOLS)  # type: ignore[attr-defined]
    choices = [choice for chunk in chunks for choice in chunk.choices]
    content = "".join(choice.delta.content or "" for choice in choices)
    calls: dict[int, dict[str, str]] = {}
    for choice in choices:
        for delta in choice.delta.tool_calls or ():
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += delta.function.name or "" if delta.function else ""
            call["arguments"] += delta.function.arguments or "" if delta.function else ""
    assert content == "Let me add."
    assert calls == {
        0: {"id": "call-a", "name": "add", "arguments": '{"a": 2, "b": 3}'},
        1: {"id": "call-1", "name": "add", "arguments": '{"a": 1}'},
    }
    token_ids = [t for choice in choices for t in choice.model_extra.get("token_ids") or []]
    logprobs = [entry.logprob for choice in choices if choice.logprobs for entry in choice.logprobs.content or ()]
    assert token_ids == log.replies[0].token_ids and logprobs == log.replies[0].logprobs
    assert decode(token_ids) == (
        'Let me add.<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
        '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call><|im_end|>'
    )
    assert [choice.finish_reason for choice in choices if choice.finish_reason] == ["tool_calls"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(token_ids)


def test_a_tool_round_trip_prompt_continues_the_previous_turn_exactly(serve: Serve) -> None:
    """The template renders a returned assistant turn as it was generated: the second prompt starts
    with the first prompt and reply, token for token (what merging calls for training relies on)."""
    seen: list[list[dict[str, Any]]] = []

    def script(messages: list[dict[str, Any]]) -> str | Reply:
        seen.append(messages)
        return Reply(tool_calls=[ToolCall("add", {"a": 2, "b": 3})]) if len(messages) == 1 else "5"

    client, log = serve(script)
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, extra_body=TOKEN_IDS)  # type: ignore[arg-type]
    message = first.choices[0].message
    assert message.content is None and first.choices[0].finish_reason == "tool_calls"
    call = message.tool_calls[0]  # type: ignore[index]
    history = [*ASK, message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "5"}]
    second = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, extra_body=TOKEN_IDS)  # type: ignore[arg-type]
    assert second.choices[0].message.content == "5" and seen == [ASK, history]
    before = [*first.prompt_token_ids, *first.choices[0].token_ids]  # type: ignore[attr-defined]
    assert second.prompt_token_ids[: len(before)] == before  # type: ignore[attr-defined]
    assert [reply.prompt_token_ids for reply in log.replies] == [first.prompt_token_ids, second.prompt_token_ids]  # type: ignore[attr-defined]


def test_text_completions_whole_and_streamed(serve: Serve) -> None:
    client, log = serve(["ab", "cd"])
    whole = client.completions.create(model=MODEL, prompt="x=", logprobs=1, extra_body=TOKEN_IDS)
    (choice,) = whole.choices
    assert choice.text == "ab" and choice.prompt_token_ids == encode("x=")  # type: ignore[attr-defined]
    assert choice.token_ids == [*encode("ab"), IM_END]  # type: ignore[attr-defined]
    assert choice.logprobs is not None and choice.logprobs.text_offset == [0, 1, 2]
    assert choice.logprobs.token_logprobs == [token_logprob(t) for t in choice.token_ids]  # type: ignore[attr-defined]
    chunks = [
        c.choices[0] for c in client.completions.create(model=MODEL, prompt="y", stream=True, extra_body=TOKEN_IDS)
    ]
    assert "".join(c.text for c in chunks) == "cd" and chunks[-1].finish_reason == "stop"
    assert chunks[0].prompt_token_ids == encode("y") and "prompt_token_ids" not in (chunks[1].model_extra or {})  # type: ignore[attr-defined]
    assert [t for c in chunks for t in c.token_ids] == log.replies[1].token_ids  # type: ignore[attr-defined]
    assert log.requests[1]["prompt"] == "y" and log.replies[1].endpoint == "completions"


def test_models_and_request_errors(serve: Serve) -> None:
    client, log = serve(["only one"], models=("a", "b"))
    assert [model.id for model in client.models.list()] == ["a", "b"]
    with pytest.raises(openai.BadRequestError, match="non-empty"):
        client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model=MODEL, messages=ASK, n=2)
    client.chat.completions.create(model=MODEL, messages=ASK)
    with pytest.raises(openai.InternalServerError, match="no replies left"):
        client.chat.completions.create(model=MODEL, messages=ASK)
    assert len(log.replies) == 1 and len(log.requests) == 3  # the empty-messages request never reached the script
