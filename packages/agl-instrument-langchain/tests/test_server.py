"""``server.address`` / ``server.port`` of a chat model's LLM span, read off the model's own base-URL
setting, whatever the provider; a model that sets none gets none (no default host is guessed)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_openai import ChatOpenAI
from pydantic import Field

from agl.core.testing.chat_server import chat_server_app
from agl.core.testing.server import ServingThread
from agl.core.tracing import semconv


class SelfHosted(GenericFakeChatModel):
    """A provider whose URL setting has the common name (``ChatOllama``, ``ChatCohere``…)."""

    base_url: str | None = None


class AnthropicLike(GenericFakeChatModel):
    anthropic_api_url: str = "https://api.anthropic.com"


class AcmeChat(GenericFakeChatModel):
    """A provider's own name for the setting, given as ``base_url`` (``ChatGroq``'s ``groq_api_base``…)."""

    acme_api_base: str | None = Field(default=None, alias="base_url")


class NamedLikeASetting(GenericFakeChatModel):
    def endpoint(self) -> str:
        """A method that happens to bear a setting's name: no URL."""
        return "http://not.a.setting"


def llm_span(captured_spans: Any) -> Any:
    (span,) = [s for s in captured_spans.get_finished_spans() if (s.attributes or {}).get(semconv.LLM_CALL)]
    return span


def server_of(span: Any) -> tuple[Any, Any]:
    return span.attributes.get(semconv.SERVER_ADDRESS), span.attributes.get(semconv.SERVER_PORT)


@pytest.mark.parametrize(
    ("kind", "settings", "server"),
    [
        (SelfHosted, {"base_url": "http://models.internal:8080/v1"}, ("models.internal", 8080)),
        (SelfHosted, {"base_url": "http://[::1]:11434"}, ("::1", 11434)),
        (AnthropicLike, {}, ("api.anthropic.com", 443)),
        (AcmeChat, {"base_url": "http://acme.example/api"}, ("acme.example", 80)),
        (SelfHosted, {"base_url": "gpu-box:11434"}, ("gpu-box", 11434)),  # no scheme: no default port
        (SelfHosted, {"base_url": "gpu-box"}, ("gpu-box", None)),
    ],
)
@pytest.mark.parametrize("how", ["invoke", "stream"])
def test_a_models_base_url_gives_its_spans_server(captured_spans, instrument, kind, settings, server, how) -> None:
    model = kind(messages=iter(["hi"]), **settings)
    instrument()
    model.invoke([HumanMessage("hello")]) if how == "invoke" else list(model.stream([HumanMessage("hello")]))
    assert server_of(llm_span(captured_spans)) == server


@pytest.mark.parametrize(
    ("kind", "settings"),
    [
        (SelfHosted, {}),  # unset: the client's default, which agl does not guess
        (SelfHosted, {"base_url": "http://:8080"}),  # no host
        (SelfHosted, {"base_url": "http://host:port/v1"}),  # not a URL
        (GenericFakeChatModel, {}),  # no such setting
        (NamedLikeASetting, {}),
    ],
)
def test_a_model_without_a_usable_base_url_gets_no_server(captured_spans, instrument, kind, settings) -> None:
    model = kind(messages=iter([AIMessage("hi")]), **settings)
    instrument()
    model.invoke([HumanMessage("hello")])
    assert server_of(llm_span(captured_spans)) == (None, None)


async def test_chat_openai_without_the_openai_instrumentor_gets_its_server(captured_spans, instrument) -> None:
    """Under ``ChatOpenAI`` alone (``agl-instrument-openai`` not installed) the server is its base URL."""
    instrument()
    with ServingThread(chat_server_app(["hi", "hi"])) as server:
        model = ChatOpenAI(model="agl-toy", base_url=f"{server.url}/v1", api_key="test", max_retries=0)  # type: ignore[arg-type]
        await model.ainvoke([HumanMessage("hello")])
    assert server_of(llm_span(captured_spans)) == ("127.0.0.1", server.port)
