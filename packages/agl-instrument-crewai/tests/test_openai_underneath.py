"""CrewAI's own LLM pointed at agl's scripted OpenAI-compatible server (real HTTP on 127.0.0.1):
with ``agl_openai`` on too, each model call is still exactly one LLM span, attributed to its agent
and holding what went over the wire, token ids included. CrewAI 1.x reaches OpenAI-compatible
servers through its native openai provider; LiteLLM is not installed and not involved."""

from __future__ import annotations

import json

from crewai import LLM, Agent, Crew, Task
from crewai.tools import tool
from opentelemetry import trace

from agl.core.testing.chat_server import Reply, ToolCall, chat_log, chat_server_app
from agl.core.testing.server import ServingThread
from agl.core.tracing import semconv
from agl.instrument.openai import OpenAIInstrumentor


@tool("add")
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def test_one_llm_span_per_call_with_the_openai_client_instrumented(captured_spans, instrument, kit) -> None:
    instrument()
    openai_instrumentor = OpenAIInstrumentor()
    openai_instrumentor.instrument(tracer_provider=trace.get_tracer_provider(), capture_token_ids=True)
    app = chat_server_app([Reply(tool_calls=[ToolCall("add", {"a": 17, "b": 25})]), "17 + 25 = 42."])
    try:
        with ServingThread(app) as server:
            llm = LLM(model="openai/agl-toy", base_url=f"{server.url}/v1", api_key="test", max_retries=0)
            agent = Agent(role="Calculator", goal="Add", backstory="You add.", llm=llm, tools=[add])
            task = Task(description="What is 17 + 25?", expected_output="The sum", agent=agent)
            assert Crew(agents=[agent], tasks=[task], name="adder").kickoff().raw == "17 + 25 = 42."
    finally:
        openai_instrumentor.uninstrument()

    log = chat_log(app)
    spans = kit.ordered(captured_spans.get_finished_spans())
    assert [name for name, _ in kit.tree(spans)] == [
        "invoke_workflow adder",
        "task What is 17 + 25?",
        "invoke_agent Calculator",
        "chat agl-toy",
        "execute_tool add",
        "chat agl-toy",
    ]
    calls = [span for span in spans if span.attributes.get(semconv.LLM_CALL)]
    assert len(calls) == len(log.requests) == 2  # one span per request, though two layers saw each
    for span, request, sent in zip(calls, log.requests, log.replies, strict=True):
        assert span.instrumentation_scope.name == "agl.instrument.crewai"  # the outer layer's span
        assert span.attributes[semconv.AGENT_NAME] == "Calculator"
        assert span.attributes[semconv.PROVIDER_NAME] == "openai"
        # As sent (agl_openai leaves out keys whose value is null, such as a tool-calling turn's content).
        assert json.loads(span.attributes[semconv.INPUT_MESSAGES]) == request["messages"]
        assert json.loads(span.attributes[semconv.TOOL_DEFINITIONS]) == request["tools"]
        (message,) = json.loads(span.attributes[semconv.OUTPUT_MESSAGES])
        assert (message["content"], message.get("tool_calls", [])) == (sent.content, sent.tool_calls)
        assert list(span.attributes[semconv.PROMPT_TOKEN_IDS]) == sent.prompt_token_ids
        assert list(span.attributes[semconv.RESPONSE_TOKEN_IDS]) == sent.token_ids
    tool_span = spans[4]
    assert json.loads(tool_span.attributes[semconv.TOOL_CALL_ARGUMENTS]) == {"a": 17, "b": 25}
    assert tool_span.attributes[semconv.TOOL_CALL_RESULT] == "42"
    assert log.requests[1]["messages"][-1]["role"] == "tool" and log.requests[1]["messages"][-1]["content"] == "42"
