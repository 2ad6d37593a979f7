"""What the embedded model server does with a request's ``model`` and sampling options, over real
HTTP on 127.0.0.1 with the tiny model of `agl.trainer.testing`: a model it does not serve is a 404
(as from vLLM), an option it cannot honour a one-line 400 naming it, and the neutral values clients
send by default are answered as if absent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from agl.trainer.serving.embedded import EmbeddedModelServer
from agl.trainer.testing import build_tiny_model

SERVED = "tiny-served"
HI = [{"role": "user", "content": "hi"}]
ASK = {"messages": HI, "max_tokens": 6, "seed": 7, "return_token_ids": True}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedModelServer]:
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)
    with EmbeddedModelServer(folder, seed=0, model_name=SERVED) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: EmbeddedModelServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        yield http


def refused(client: httpx.Client, path: str, body: dict[str, Any], status: int = 400) -> str:
    """The one-line message of the ``status`` that ``body`` gets, streamed or not."""
    messages = set()
    for streamed in (False, True):
        response = client.post(path, json={**body, "stream": streamed})
        assert response.status_code == status, response.text
        messages.add(response.json()["error"]["message"])
    [message] = messages
    assert "\n" not in message
    return message


# --- the model's name -------------------------------------------------------------------------


def test_models_lists_the_one_name_requests_are_answered_under(client: httpx.Client) -> None:
    assert [model["id"] for model in client.get("/models").json()["data"]] == [SERVED]
    for body in ({**ASK, "model": SERVED}, ASK, {**ASK, "model": ""}):  # no name: the served model, as vLLM
        response = client.post("/chat/completions", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == SERVED


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
def test_a_model_not_served_is_a_404_saying_it_does_not_exist(client: httpx.Client, path: str) -> None:
    """It used to be answered by the served model under its own name: a client that named another
    model (a typo, a stale config) got a plausible answer from the wrong model, and no error."""
    body = {**ASK, "model": "gpt-4o"} if path == "/chat/completions" else {"model": "gpt-4o", "prompt": "hi"}
    assert refused(client, path, body, 404) == "The model `gpt-4o` does not exist."


def test_the_openai_client_gets_not_found_for_another_model(server: EmbeddedModelServer) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    assert client.chat.completions.create(model=SERVED, messages=HI, max_tokens=2).model == SERVED  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="other", messages=HI, max_tokens=2)  # type: ignore[arg-type]


# --- sampling options ---------------------------------------------------------------------------

NEUTRAL = {
    "n": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0.0,
    "logprobs": False,
    "top_logprobs": 0,
    "logit_bias": {},
    "response_format": {"type": "text"},
    "tool_choice": "auto",
    "best_of": 1,
    "top_k": -1,
    "user": "someone",
}


def test_neutral_values_of_unsupported_options_are_answered_as_if_absent(client: httpx.Client) -> None:
    plain = client.post("/chat/completions", json=ASK).json()["choices"][0]
    response = client.post("/chat/completions", json={**ASK, **NEUTRAL})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["token_ids"] == plain["token_ids"]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("presence_penalty", 0.5),
        ("frequency_penalty", 1),
        ("logit_bias", {"5": 100}),
        ("top_k", 5),
        ("min_p", 0.1),
        ("repetition_penalty", 1.2),
        ("n", 2),
        ("best_of", 3),
        ("top_logprobs", 3),
        ("response_format", {"type": "json_object"}),
        ("tool_choice", "required"),  # a call cannot be forced: nothing constrains decoding to the markup
        ("tool_choice", {"type": "function", "function": {"name": "get_weather"}}),
        ("ignore_eos", True),
        ("presence_penalty", False),  # not a number: not the neutral 0
    ],
)
def test_a_chat_option_the_engine_cannot_honour_is_a_400_naming_it(
    client: httpx.Client, option: str, value: Any
) -> None:
    """Such options used to be accepted and silently ignored: the client got an answer sampled
    without them and no sign that its penalty, bias or format was not applied."""
    message = refused(client, "/chat/completions", {**ASK, option: value})
    assert message.startswith(f"{option}=") and "not supported" in message


@pytest.mark.parametrize(("option", "value"), [("logprobs", 2), ("echo", True), ("suffix", "!"), ("best_of", 2)])
def test_a_completion_option_the_engine_cannot_honour_is_a_400_naming_it(
    client: httpx.Client, option: str, value: Any
) -> None:
    message = refused(client, "/completions", {"prompt": "hi", "max_tokens": 2, option: value})
    assert message.startswith(f"{option}=") and "not supported" in message


def test_the_sampled_tokens_logprobs_are_still_served(client: httpx.Client) -> None:
    """``logprobs=0`` (completions) and ``logprobs=true`` (chat) ask for nothing the engine lacks."""
    text = client.post("/completions", json={"prompt": "hi", "max_tokens": 3, "seed": 1, "logprobs": 0}).json()
    assert len(text["choices"][0]["logprobs"]["token_logprobs"]) == text["usage"]["completion_tokens"]
    chat = client.post("/chat/completions", json={**ASK, "logprobs": True}).json()["choices"][0]
    assert len(chat["logprobs"]["content"]) == len(chat["token_ids"])


def test_langchains_default_request_is_answered(server: EmbeddedModelServer) -> None:
    """LangChain sends its own defaults (``stream``, ``n``, a temperature, ...): all honoured or neutral."""
    langchain_openai = pytest.importorskip("langchain_openai")
    model = langchain_openai.ChatOpenAI(
        model=SERVED, base_url=server.base_url, api_key="none", max_tokens=3, temperature=0, n=1, max_retries=0
    )
    assert isinstance(model.invoke("hi").content, str)
    assert all(isinstance(chunk.content, str) for chunk in model.stream("hi"))
