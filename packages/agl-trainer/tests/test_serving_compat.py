"""The embedded model server as the official ``openai`` client and LangChain's ChatOpenAI see it,
over real HTTP on 127.0.0.1 with the tiny model of `agl.trainer.testing` (whose ChatML template,
like SmolLM2's, renders no tools): each request is answered as OpenAI's API defines it, or refused
with a 400 naming the option rather than answered as if the option had not been sent."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("openai")

import openai

from agl.trainer.serving.embedded import EmbeddedModelServer
from agl.trainer.testing import build_tiny_model

SERVED = "tiny"
HI: Any = [{"role": "user", "content": "hi"}]
WEATHER: Any = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedModelServer]:
    with EmbeddedModelServer(build_tiny_model(tmp_path_factory.mktemp("tiny") / SERVED, seed=0), seed=0) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: EmbeddedModelServer) -> Any:
    return openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)


def refused(client: Any, **options: Any) -> str:
    """The message of the 400 that a chat request with ``options`` gets, streamed or not."""
    messages = set()
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as refusal:
            client.chat.completions.create(model=SERVED, messages=HI, max_tokens=2, stream=stream, **options)
        messages.add(refusal.value.body["message"])
    [message] = messages
    return message


def test_null_flags_are_answered_as_their_default(client: Any) -> None:
    """OpenAI's ``logprobs`` and ``stream`` are nullable (the openai client sends an explicit None as
    null): they were a 400 "Input should be a valid boolean"."""
    plain = client.chat.completions.create(model=SERVED, messages=HI, max_tokens=4, seed=2)
    nulls = client.chat.completions.create(model=SERVED, messages=HI, max_tokens=4, seed=2, logprobs=None, stream=None)
    assert nulls.choices[0].message.content == plain.choices[0].message.content
    assert nulls.choices[0].logprobs is None
    text = client.completions.create(model=SERVED, prompt="hi", max_tokens=2, stream=None, logprobs=None)
    assert text.usage.completion_tokens == 2


def test_max_completion_tokens_wins_over_the_deprecated_max_tokens(client: Any) -> None:
    """As vLLM: a client sending both means the newer field; max_tokens used to win."""
    answer = client.chat.completions.create(
        model=SERVED, messages=HI, temperature=0, max_completion_tokens=2, max_tokens=6
    )
    assert answer.usage.completion_tokens == 2 and answer.choices[0].finish_reason == "length"


def test_a_text_completion_without_max_tokens_stops_at_16_as_openais(client: Any) -> None:
    """OpenAI's and vLLM's default for ``/v1/completions``; it was 1024 here (chat's), so a script
    moved from vLLM to this server waited for 64 times the tokens it got there."""
    text = client.completions.create(model=SERVED, prompt="hi", temperature=0)
    assert text.usage.completion_tokens == 16 and text.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("functions", [WEATHER]),  # the legacy form of tools: the model never saw them
        ("function_call", {"name": "get_weather"}),
        ("modalities", ["text", "audio"]),
        ("audio", {"voice": "alloy", "format": "wav"}),
    ],
)
def test_options_the_server_cannot_honour_are_a_400_naming_them(client: Any, option: str, value: Any) -> None:
    """They used to be accepted and ignored: a text answer, and no sign the option was dropped."""
    assert refused(client, **{option: value}).startswith(f"{option}=")


def test_their_neutral_values_are_answered(client: Any) -> None:
    answer = client.chat.completions.create(
        model=SERVED, messages=HI, max_tokens=2, functions=[], function_call="auto", modalities=["text"]
    )
    assert answer.usage.completion_tokens == 2


def test_tools_a_chat_template_cannot_render_are_answered_with_a_warning_once(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The template never shows them to the model, which answers as if none were offered: the
    server's log now says so (once), where a tool agent used to stop at its first reply unexplained."""
    tools: Any = [{"type": "function", "function": WEATHER}]
    with caplog.at_level(logging.WARNING, logger="agl.trainer.serving.openai_app"):
        for _ in range(2):
            answer = client.chat.completions.create(model=SERVED, messages=HI, max_tokens=2, tools=tools)
            assert answer.choices[0].message.tool_calls is None
    [warning] = [record.getMessage() for record in caplog.records if "tools" in record.getMessage()]
    assert f"the chat template of {SERVED} does not render tools" in warning


def test_the_served_model_can_be_retrieved_by_name(client: Any) -> None:
    """``client.models.retrieve`` (``GET /v1/models/{model}``) was a bare 404 "Not Found"."""
    model = client.models.retrieve(SERVED)
    assert model.id == SERVED and model.object == "model"
    with pytest.raises(openai.NotFoundError, match="does not exist") as unknown:
        client.models.retrieve("gpt-4o")
    assert unknown.value.param == "model"


def test_a_stream_with_usage_ends_on_a_chunk_without_choices(client: Any) -> None:
    chunks = list(
        client.chat.completions.create(
            model=SERVED, messages=HI, max_tokens=3, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    assert [chunk.usage for chunk in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-2].choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("n", 2),
        ("top_logprobs", 3),
        ("functions", [WEATHER]),
        ("temperature", 3),  # refused by validation, not as unsupported
        ("messages", [{"role": "wizard", "content": "hi"}]),
    ],
)
def test_a_400_about_one_option_names_it_in_param(client: Any, option: str, value: Any) -> None:
    """``BadRequestError.param`` names the option, as from OpenAI and vLLM; it was always None, so a
    client could not tell which of its options to change without parsing the message."""
    options = {"model": SERVED, "messages": HI, "max_tokens": 2, option: value}
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as refusal:
            client.chat.completions.create(**{**options, "stream": stream})
        assert refusal.value.param == option
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=2)
    assert unknown.value.param == "model" and unknown.value.body["message"] == "The model `gpt-4o` does not exist."


def test_stream_options_without_a_stream_are_a_400(client: Any) -> None:
    """As OpenAI and vLLM: they were accepted and ignored, and a client expecting the usage chunk it
    asked for got a whole answer instead."""
    usage = {"include_usage": True}
    with pytest.raises(openai.BadRequestError, match="stream_options can only be set when stream is true") as chat:
        client.chat.completions.create(model=SERVED, messages=HI, max_tokens=2, stream_options=usage)
    with pytest.raises(openai.BadRequestError) as text:
        client.completions.create(model=SERVED, prompt="hi", max_tokens=2, stream=False, stream_options=usage)
    assert chat.value.param == text.value.param == "stream_options"
    answer = client.chat.completions.create(model=SERVED, messages=HI, max_tokens=2, stream_options=None)
    assert answer.usage.completion_tokens == 2


def test_logprobs_bytes_add_up_to_characters_split_across_tokens(client: Any) -> None:
    """The tiny model's byte-level tokenizer spells any non-ASCII character with one token per byte.
    Each token's ``bytes`` were those of its text decoded alone, U+FFFD: the bytes OpenAI sends so
    that a client can put such a character back together held three bytes of "\ufffd" instead."""
    for seed in range(60):  # the first seeded reply holding a non-ASCII character
        answer = client.chat.completions.create(
            model=SERVED, messages=HI, max_tokens=24, temperature=1, seed=seed, logprobs=True
        )
        text = answer.choices[0].message.content
        if any(ord(char) > 127 and char != "\ufffd" for char in text):
            break
    else:
        pytest.fail("no reply held a non-ASCII character")
    tokens = answer.choices[0].logprobs.content
    assert b"".join(bytes(token.bytes) for token in tokens).decode(errors="replace") == text
    assert any(token.token == "\ufffd" and token.bytes != list("\ufffd".encode()) for token in tokens)
    stream = client.chat.completions.create(
        model=SERVED, messages=HI, max_tokens=24, temperature=1, seed=seed, logprobs=True, stream=True
    )
    streamed = [
        token
        for chunk in stream
        if chunk.choices and chunk.choices[0].logprobs
        for token in chunk.choices[0].logprobs.content
    ]
    assert [token.bytes for token in streamed] == [token.bytes for token in tokens]
