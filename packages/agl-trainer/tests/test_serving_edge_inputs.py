"""Unusual but plausible OpenAI requests to the embedded model server, over real HTTP on 127.0.0.1
with the tiny model of `agl.trainer.testing`: each is answered as asked or refused with a one-line 400."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from agl.trainer.serving.embedded import EmbeddedModelServer
from agl.trainer.testing import build_tiny_model

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedModelServer]:
    with EmbeddedModelServer(build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0), seed=0) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: EmbeddedModelServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        yield http


def refusal(client: httpx.Client, body: dict[str, Any]) -> str:
    """The one-line message of the 400 that ``body`` gets, streamed or not."""
    messages = set()
    for streamed in (False, True):
        response = client.post("/chat/completions", json={**body, "stream": streamed})
        assert response.status_code == 400, response.text
        messages.add(response.json()["error"]["message"])
    [message] = messages
    assert "\n" not in message
    return message


def test_an_empty_stop_string_stops_nothing(client: httpx.Client) -> None:
    """OpenAI and vLLM ignore an empty stop string; it used to match at once and end every answer empty."""
    body = {"messages": HI, "max_tokens": 8, "seed": 4, "return_token_ids": True}
    free = client.post("/chat/completions", json=body).json()["choices"][0]
    for stop in ("", [""]):
        choice = client.post("/chat/completions", json={**body, "stop": stop}).json()["choices"][0]
        assert choice["token_ids"] == free["token_ids"] and choice["message"] == free["message"], stop


@pytest.mark.parametrize("role", ["wizard", "User", ""])
def test_an_unknown_role_is_a_400_naming_it(client: httpx.Client, role: str) -> None:
    """As OpenAI: a typo'd role used to reach the chat template and be answered as if it meant something."""
    message = refusal(client, {"messages": [{"role": role, "content": "hi"}], "max_tokens": 2})
    assert f"role {role!r}" in message and "user" in message


def test_every_openai_role_is_answered(client: httpx.Client) -> None:
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {}}]},
        {"role": "tool", "content": "42", "tool_call_id": "c"},
        {"role": "function", "content": "42", "name": "f"},
    ]
    response = client.post("/chat/completions", json={"messages": messages, "max_tokens": 2})
    assert response.status_code == 200, response.text


def test_text_parts_are_the_same_prompt_as_the_string(client: httpx.Client) -> None:
    parts = [{"type": "text", "text": "What is the "}, {"type": "text", "text": "capital?"}]
    ids = []
    for content in (parts, "What is the capital?"):
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": 1, "return_token_ids": True}
        ids.append(client.post("/chat/completions", json=body).json()["prompt_token_ids"])
    assert ids[0] == ids[1]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ([{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "data:,"}}], "part 1 is image_url"),
        ([{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}], "part 0 is input_audio"),
        (["hi"], "part 0 is str"),
        ([{"type": "text"}], "part 0 has no text"),
        ([{"type": "text", "text": 5}], "part 0 has no text"),
        (5, "content must be a string"),
        ({"text": "hi"}, "content must be a string"),
    ],
)
def test_content_the_model_cannot_read_is_a_400(client: httpx.Client, content: Any, says: str) -> None:
    """A text-only model: other parts used to be dropped, and the model answered a prompt without them."""
    message = refusal(client, {"messages": [{"role": "user", "content": content}], "max_tokens": 2})
    assert f"message 0: {says}" in message or f"message 0: content {says}" in message, message


def test_the_server_answers_after_every_refusal(client: httpx.Client) -> None:
    for raw in (b"{", b"", b'{"messages": "hi"}', b"[" * 100_000 + b"]" * 100_000, b'{"messages": [{"content": 1}]}'):
        response = client.post("/chat/completions", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 400 and "\n" not in response.json()["error"]["message"]
    assert client.post("/chat/completions", json={"messages": HI, "max_tokens": 1}).status_code == 200
