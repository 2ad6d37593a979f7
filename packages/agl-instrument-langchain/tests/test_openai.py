"""ChatOpenAI over agl's scripted chat server (real HTTP on 127.0.0.1) with the openai instrumentor
underneath: one LLM span per call, with the server's exact token ids; and alongside OpenInference's
LangChain instrumentor, still one canonical LLM span per call."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from openinference.instrumentation.langchain import LangChainInstrumentor as OpenInferenceInstrumentor

from agl.core.testing.chat_server import Reply, ToolCall, chat_log, chat_server_app
from agl.core.testing.server import ServingThread
from agl.core.tracing import semconv
from agl.instrument.openai import OpenAIInstrumentor

MODEL = "agl-toy"
SCRIPT = [Reply(tool_calls=[ToolCall("add", {"a": 17, "b": 25})]), "17 + 25 = 42."]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.fixture
def openai_instrumented(captured_spans) -> Iterator[None]:
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(capture_token_ids=True)
    yield
    instrumentor.uninstrument()


def run_agent(url: str) -> str:
    bound = ChatOpenAI(model=MODEL, base_url=url, api_key="test", max_retries=0).bind_tools([add])  # type: ignore[arg-type]

    def calculator(state: MessagesState) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("calculator", calculator)
    graph.add_node("tools", ToolNode([add]))
    graph.add_edge(START, "calculator")
    graph.add_conditional_edges("calculator", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "calculator")
    result = graph.compile(name="calculator").invoke({"messages": [HumanMessage("What is 17 + 25?")]})
    return str(result["messages"][-1].content)


def check_one_span_per_call(spans: Any, log: Any) -> None:
    calls = sorted(
        (s for s in spans if (s.attributes or {}).get(semconv.LLM_CALL)),
        key=lambda s: s.attributes[semconv.SEQUENCE_ID],
    )
    assert len(calls) == len(log.requests) == 2  # one canonical span per physical call
    by_id = {span.context.span_id: span for span in spans}
    for call, request, sent in zip(calls, log.requests, log.replies, strict=True):
        assert call.name == f"chat {MODEL}" and call.attributes[semconv.AGENT_NAME] == "calculator"
        assert call.attributes[semconv.PROVIDER_NAME] == "openai"
        assert by_id[call.parent.span_id].name == "invoke_agent calculator"  # LangChain's span, joined by openai's
        assert request["return_token_ids"] is True
        assert list(call.attributes[semconv.PROMPT_TOKEN_IDS]) == sent.prompt_token_ids
        assert list(call.attributes[semconv.RESPONSE_TOKEN_IDS]) == sent.token_ids
        assert list(call.attributes[semconv.RESPONSE_LOGPROBS]) == sent.logprobs
        assert call.attributes[semconv.USAGE_OUTPUT_TOKENS] == len(sent.token_ids)
        seen = json.loads(call.attributes[semconv.INPUT_MESSAGES])
        assert [m["role"] for m in seen] == [m["role"] for m in request["messages"]]
        assert [m.get("content") or "" for m in seen] == [m.get("content") or "" for m in request["messages"]]
    # The reply as the openai layer recorded it off the wire (content null), not LangChain's remake ("").
    first_reply = json.loads(calls[0].attributes[semconv.OUTPUT_MESSAGES])
    assert first_reply == [{"role": "assistant", "content": None, "tool_calls": log.replies[0].tool_calls}]
    assert json.loads(calls[1].attributes[semconv.OUTPUT_MESSAGES])[0]["content"] == "17 + 25 = 42."


def test_chat_openai_gives_one_llm_span_per_call_with_token_ids(captured_spans, instrument, openai_instrumented):
    instrument()
    app = chat_server_app(SCRIPT)
    with ServingThread(app) as server:
        assert run_agent(f"{server.url}/v1") == "17 + 25 = 42."
    spans = captured_spans.get_finished_spans()
    check_one_span_per_call(spans, chat_log(app))
    # The server, as the openai layer joining LangChain's span read it off the client that sent the request.
    calls = [s.attributes or {} for s in spans if (s.attributes or {}).get(semconv.LLM_CALL)]
    assert {(c[semconv.SERVER_ADDRESS], c[semconv.SERVER_PORT]) for c in calls} == {("127.0.0.1", server.port)}


def test_alongside_openinference_there_is_still_one_canonical_span_per_call(
    captured_spans, instrument, openai_instrumented
):
    instrument()
    openinference = OpenInferenceInstrumentor()
    openinference.instrument()
    try:
        app = chat_server_app(SCRIPT)
        with ServingThread(app) as server:
            assert run_agent(f"{server.url}/v1") == "17 + 25 = 42."
    finally:
        openinference.uninstrument()
    spans = captured_spans.get_finished_spans()
    assert any("openinference.span.kind" in (s.attributes or {}) for s in spans)  # both really ran
    check_one_span_per_call(spans, chat_log(app))
