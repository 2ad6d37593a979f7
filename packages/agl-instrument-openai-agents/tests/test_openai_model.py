"""The SDK's own OpenAI model over real HTTP (agl's scripted chat server on 127.0.0.1), with the
openai client's instrumentor underneath, and beside OpenInference's Agents SDK instrumentor:
always exactly one canonical LLM span per physical call."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool
from openai import AsyncOpenAI
from openinference.instrumentation.openai_agents import OpenAIAgentsInstrumentor as OpenInferenceInstrumentor

from agl.core.testing.chat_server import ChatLog, Reply, ToolCall, chat_log, chat_server_app
from agl.core.testing.server import ServingThread
from agl.core.tracing import semconv
from agl.instrument.openai import OpenAIInstrumentor

MODEL = "agl-toy"
SCRIPT = [Reply(tool_calls=[ToolCall("add", {"a": 17, "b": 25})]), "17 + 25 = 42."]


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.fixture
def openai_instrumented(captured_spans) -> Iterator[None]:
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(capture_token_ids=True)
    yield
    instrumentor.uninstrument()


async def run_calculator(log_holder: list[ChatLog]) -> str:
    app = chat_server_app(SCRIPT)
    log_holder.append(chat_log(app))
    with ServingThread(app) as server:
        client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="test", max_retries=0)
        model = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
        agent = Agent(name="calculator", instructions="Use the add tool.", tools=[add], model=model)
        result = await Runner.run(agent, "What is 17 + 25?")
        await client.close()
    return str(result.final_output)


def check_one_span_per_call(spans, log: ChatLog) -> None:
    calls = sorted((s for s in spans if s.attributes.get(semconv.LLM_CALL)), key=lambda s: s.start_time)
    assert [span.name for span in calls] == [f"chat {MODEL}"] * 2 == [f"chat {MODEL}"] * len(log.requests)
    by_id = {span.context.span_id: span for span in spans}
    for span, request, sent in zip(calls, log.requests, log.replies, strict=True):
        assert by_id[span.parent.span_id].name == "invoke_agent calculator"
        assert span.attributes[semconv.AGENT_NAME] == "calculator"
        assert span.attributes[semconv.PROVIDER_NAME] == "openai"
        # agl_openai (which saw the wire and recorded first) leaves out keys sent as null ("content": null).
        assert json.loads(span.attributes[semconv.INPUT_MESSAGES]) == request["messages"]
        assert json.loads(span.attributes[semconv.TOOL_DEFINITIONS]) == request["tools"]
        (message,) = json.loads(span.attributes[semconv.OUTPUT_MESSAGES])
        assert (message["content"], message.get("tool_calls", [])) == (sent.content, sent.tool_calls)
        assert list(span.attributes[semconv.PROMPT_TOKEN_IDS]) == sent.prompt_token_ids
        assert list(span.attributes[semconv.RESPONSE_TOKEN_IDS]) == sent.token_ids
        assert span.attributes[semconv.USAGE_INPUT_TOKENS] == len(sent.prompt_token_ids)
    assert log.requests[1]["messages"][-1] == {"role": "tool", "tool_call_id": "call-1", "content": "42"}


async def test_the_sdk_openai_model_gives_one_span_per_call_with_token_ids(
    captured_spans, instrument, openai_instrumented
) -> None:
    instrument()
    logs: list[ChatLog] = []
    assert await run_calculator(logs) == "17 + 25 = 42."
    check_one_span_per_call(list(captured_spans.get_finished_spans()), logs[0])


@pytest.mark.parametrize("order", ["agl first", "openinference first"])
async def test_beside_openinference_still_one_canonical_span_per_call(
    captured_spans, instrument, openai_instrumented, order: str
) -> None:
    """OpenInference replaces every registered Agents SDK processor with its own by default
    (``exclusive_processor``); agl's spans survive that, in either order."""
    openinference = OpenInferenceInstrumentor()
    if order == "openinference first":
        openinference.instrument()
    instrument()
    if order == "agl first":
        openinference.instrument()
    try:
        logs: list[ChatLog] = []
        assert await run_calculator(logs) == "17 + 25 = 42."
    finally:
        openinference.uninstrument()
    spans = list(captured_spans.get_finished_spans())
    check_one_span_per_call(spans, logs[0])
    assert [s.name for s in spans if s.name.startswith("invoke_agent")] == ["invoke_agent calculator"]
    # OpenInference recorded its own spans too (its LLM spans are not agl's canonical ones).
    kinds = {s.attributes.get("openinference.span.kind") for s in spans}
    assert {"AGENT", "LLM", "TOOL"} <= kinds
