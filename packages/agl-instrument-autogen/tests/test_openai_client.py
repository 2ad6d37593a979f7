"""AutoGen's OpenAI client over agl's scripted chat server (real HTTP on 127.0.0.1) with agl's
openai instrumentor underneath: one canonical LLM span per physical call, carrying the server's
token ids; and the same with OpenInference's AutoGen instrumentor installed beside agl's."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_core import InMemoryStore
from autogen_core.models import CreateResult, UserMessage
from autogen_ext.models.cache import ChatCompletionCache
from autogen_ext.models.openai import AzureOpenAIChatCompletionClient, OpenAIChatCompletionClient
from openinference.instrumentation.autogen_agentchat import AutogenAgentChatInstrumentor

from agl.core.testing.chat_server import Reply, ToolCall
from agl.core.tracing import rollout_context, semconv

from .conftest import MODEL_INFO

MODEL = "agl-toy"
SCRIPT = [Reply(tool_calls=[ToolCall("add", {"a": 17, "b": 25})]), "17 + 25 = 42."]


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@pytest.fixture
def openinference():
    instrumentor = AutogenAgentChatInstrumentor()
    yield instrumentor
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


@pytest.mark.parametrize("stream", [False, True], ids=["create", "create_stream"])
@pytest.mark.parametrize("openinference_order", [None, "before", "after"], ids=["agl", "oi-first", "oi-last"])
async def test_one_llm_span_per_call_with_the_servers_token_ids(
    traced, instrument, serve, openinference, stream: bool, openinference_order: str | None
) -> None:
    """With OpenInference's AutoGen instrumentor too (instrumented before or after agl's; its span
    around the client's ``create`` sits between agl's LLM span and the openai layer or outside
    it), there are still exactly as many canonical LLM spans as requests."""
    if openinference_order == "before":
        openinference.instrument()
    instrument(openai=True)
    if openinference_order == "after":
        openinference.instrument()
    served = serve(SCRIPT)
    client = OpenAIChatCompletionClient(
        model=MODEL, base_url=served.url, api_key="test", model_info=MODEL_INFO, max_retries=0
    )
    agent = AssistantAgent(
        "calculator", model_client=client, tools=[add], reflect_on_tool_use=True, model_client_stream=stream
    )
    with rollout_context("ro-test", "at-test"):
        result = await agent.run(task="What is 17 + 25?")
    await client.close()
    assert result.messages[-1].content == "17 + 25 = 42."

    spans = traced.ours()
    calls = [span for span in spans if (span.attributes or {}).get(semconv.LLM_CALL)]
    assert len(calls) == len(served.log.requests) == 2  # the tool call and the reflection
    by_id = {span.context.span_id: span for span in traced.spans()}
    for span, request, sent in zip(calls, served.log.requests, served.log.replies, strict=True):
        attributes = span.attributes or {}
        assert span.name == f"chat {MODEL}" and attributes[semconv.PROVIDER_NAME] == "openai"
        assert attributes[semconv.AGENT_NAME] == "calculator"
        # The server, as the openai layer joining AutoGen's span read it off the client that sent the request.
        served_at = urlsplit(served.url)
        assert (attributes[semconv.SERVER_ADDRESS], attributes[semconv.SERVER_PORT]) == (
            served_at.hostname,
            served_at.port,
        )
        # As sent on the wire (agl_openai records them, leaving out keys whose value is null).
        assert json.loads(attributes[semconv.INPUT_MESSAGES]) == request["messages"]
        assert list(attributes[semconv.PROMPT_TOKEN_IDS]) == sent.prompt_token_ids
        assert list(attributes[semconv.RESPONSE_TOKEN_IDS]) == sent.token_ids
        assert list(attributes[semconv.RESPONSE_LOGPROBS]) == sent.logprobs
        (message,) = json.loads(attributes[semconv.OUTPUT_MESSAGES])
        assert (message["content"], message.get("tool_calls", [])) == (sent.content, sent.tool_calls)
        ancestors = []
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            ancestors.append(span.name)
        if openinference_order is None:  # (OpenInference's spans may end after the test looks)
            assert ancestors[0] == "invoke_agent calculator"
    scopes = {span.instrumentation_scope.name for span in spans}
    assert ("openinference.instrumentation.autogen_agentchat" in scopes) is (openinference_order is not None)
    assert [span.name for span in spans].count("execute_tool add") == 1


@pytest.mark.parametrize("wire", [False, True], ids=["autogen-only", "with-agl-openai"])
async def test_a_stream_without_usage_records_none_and_finish_reasons_are_openais(
    traced, instrument, serve, wire: bool
) -> None:
    """Asked for no usage, the server streams none and AutoGen reports 0 tokens: the trace leaves
    usage out rather than saying the call cost nothing. AutoGen's finish reasons are recorded as
    the server sent them (``tool_calls``, not AutoGen's ``function_calls``), whichever layer writes
    them."""
    instrument(openai=wire)
    served = serve(SCRIPT)
    client = OpenAIChatCompletionClient(
        model=MODEL, base_url=served.url, api_key="test", model_info=MODEL_INFO, max_retries=0
    )
    agent = AssistantAgent(
        "calculator", model_client=client, tools=[add], reflect_on_tool_use=True, model_client_stream=True
    )
    with rollout_context("ro-test", "at-test"):
        await agent.run(task="What is 17 + 25?")
    await client.close()
    calls = [span for span in traced.ours() if (span.attributes or {}).get(semconv.LLM_CALL)]
    assert (
        [list((span.attributes or {})[semconv.FINISH_REASONS]) for span in calls]
        == [[sent.finish_reason] for sent in served.log.replies]
        == [["tool_calls"], ["stop"]]
    )
    for span in calls:
        attributes = span.attributes or {}
        assert semconv.USAGE_INPUT_TOKENS not in attributes and semconv.USAGE_OUTPUT_TOKENS not in attributes


@pytest.mark.parametrize("stream", [False, True], ids=["create", "create_stream"])
async def test_a_cached_client_is_recorded_with_the_model_and_provider_it_wraps(
    traced, instrument, serve, stream: bool
) -> None:
    """``ChatCompletionCache`` only wraps a client: the calls name the model and provider behind it.
    A cache hit sent no request: it is marked ``agl.llm.cached`` and spent no tokens, though AutoGen
    hands back the first call's usage; it stays a model call, the agent's step that it was."""
    instrument()
    served = serve(["Hello."])
    inner = OpenAIChatCompletionClient(
        model=MODEL, base_url=served.url, api_key="test", model_info=MODEL_INFO, max_retries=0
    )
    client = ChatCompletionCache(inner, InMemoryStore())
    question = [UserMessage(content="Say hello.", source="user")]

    async def ask() -> CreateResult:
        if not stream:
            return await client.create(question)
        items = [item async for item in client.create_stream(question)]
        assert isinstance(items[-1], CreateResult)
        return items[-1]

    with rollout_context("ro-test", "at-test"):
        first = await ask()
        usage = (first.usage.prompt_tokens, first.usage.completion_tokens)
        hit = await ask()
    await inner.close()
    assert hit.cached and len(served.log.requests) == 1
    assert (hit.usage.prompt_tokens, hit.usage.completion_tokens) == usage  # AutoGen's, from the first call
    calls = [span for span in traced.ours() if (span.attributes or {}).get(semconv.LLM_CALL)]
    assert [span.name for span in calls] == [f"chat {MODEL}", f"chat {MODEL}"]
    for span in calls:
        attributes = span.attributes or {}
        assert (attributes[semconv.REQUEST_MODEL], attributes[semconv.PROVIDER_NAME]) == (MODEL, "openai")
        (message,) = json.loads(attributes[semconv.OUTPUT_MESSAGES])
        assert message["content"] == "Hello."
    sent, served_from_cache = (span.attributes or {} for span in calls)
    assert "agl.llm.cached" not in sent and served_from_cache["agl.llm.cached"] is True
    assert (sent.get(semconv.USAGE_INPUT_TOKENS), sent.get(semconv.USAGE_OUTPUT_TOKENS)) == (
        (None, None) if stream else usage  # a stream not asked for usage has none
    )
    assert semconv.USAGE_INPUT_TOKENS not in served_from_cache
    assert semconv.USAGE_OUTPUT_TOKENS not in served_from_cache


async def test_an_azure_openai_client_is_recorded_with_azures_provider_name(traced, instrument, serve) -> None:
    """AutoGen's Azure client lives in its ``openai`` module; OpenTelemetry names its provider
    ``azure.ai.openai``."""
    instrument()
    served = serve(["Hello."], azure_deployment=MODEL)
    client = AzureOpenAIChatCompletionClient(
        model=MODEL,
        azure_deployment=MODEL,
        azure_endpoint=served.url.removesuffix("/v1"),
        api_version="2024-06-01",
        api_key="test",
        model_info=MODEL_INFO,
        max_retries=0,
    )
    with rollout_context("ro-test", "at-test"):
        result = await client.create([UserMessage(content="Say hello.", source="user")])
    await client.close()
    assert result.content == "Hello." and len(served.log.requests) == 1
    (call,) = [span for span in traced.ours() if (span.attributes or {}).get(semconv.LLM_CALL)]
    assert (call.attributes or {})[semconv.PROVIDER_NAME] == "azure.ai.openai"
