"""Unusual but legitimate model replies, recorded as the model gave and saw them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.retrievers import BaseRetriever
from langchain_openai import ChatOpenAI
from langgraph.graph import START, MessagesState, StateGraph

from agl.core.testing.chat_server import Reply, ToolCall, chat_log, chat_server_app
from agl.core.testing.server import ServingThread
from agl.core.tracing import semconv

TRUNCATED = '{"a": 17, "b": '


def test_a_tool_call_whose_arguments_are_not_json_is_recorded_as_made_and_as_sent_back(
    captured_spans, instrument
) -> None:
    instrument()
    app = chat_server_app([Reply(tool_calls=[ToolCall("add", TRUNCATED, id="call-1")]), "Sorry."])
    with ServingThread(app) as server:
        model = ChatOpenAI(model="agl-toy", base_url=f"{server.url}/v1", api_key="test", max_retries=0)  # type: ignore[arg-type]
        reply = model.invoke([HumanMessage("What is 17 + 25?")])
        assert reply.invalid_tool_calls and not reply.tool_calls  # LangChain could not parse it
        model.invoke([HumanMessage("What is 17 + 25?"), reply, ToolMessage("Not JSON.", tool_call_id="call-1")])

    first, second = sorted(captured_spans.get_finished_spans(), key=lambda span: span.attributes[semconv.SEQUENCE_ID])
    made = {"type": "function", "id": "call-1", "function": {"name": "add", "arguments": TRUNCATED}}
    assert json.loads(first.attributes[semconv.OUTPUT_MESSAGES])[0]["tool_calls"] == [made]
    recorded = json.loads(second.attributes[semconv.INPUT_MESSAGES])
    sent = chat_log(app).requests[1]["messages"]
    assert [message.get("tool_calls") for message in recorded] == [message.get("tool_calls") for message in sent]


@pytest.mark.parametrize("arguments", [TRUNCATED, "seventeen and twenty-five", '{"a": 17, "b": 25}', ""])
def test_a_streamed_tool_call_is_recorded_as_the_same_call_not_streamed(captured_spans, instrument, arguments) -> None:
    """A streamed reply's ``tool_calls`` are LangChain's reading of the chunks: cut-off JSON completed
    (the call recorded with arguments the model never wrote), anything else dropped (no call at all)."""
    instrument()
    app = chat_server_app([Reply(tool_calls=[ToolCall("add", arguments, id="call-1")])] * 2 + ["Sorry."])
    with ServingThread(app) as server:
        model = ChatOpenAI(model="agl-toy", base_url=f"{server.url}/v1", api_key="test", max_retries=0)  # type: ignore[arg-type]
        model.invoke([HumanMessage("What is 17 + 25?")])
        streamed = list(model.stream([HumanMessage("What is 17 + 25?")]))
        reply = streamed[0] + streamed[1:]  # what a streaming agent keeps in its history
        model.invoke([HumanMessage("What is 17 + 25?"), reply, ToolMessage("Not JSON.", tool_call_id="call-1")])
    assert len(streamed) > 2

    whole, chunked, answer = sorted(
        captured_spans.get_finished_spans(), key=lambda span: span.attributes[semconv.SEQUENCE_ID]
    )
    made = json.loads(whole.attributes[semconv.OUTPUT_MESSAGES])[0]["tool_calls"]
    assert json.loads(chunked.attributes[semconv.OUTPUT_MESSAGES])[0]["tool_calls"] == made
    assert [call["function"]["arguments"] for call in made] == [
        arguments
        if arguments in (TRUNCATED, "seventeen and twenty-five")
        else json.dumps(json.loads(arguments or "{}"))
    ]
    recorded = json.loads(answer.attributes[semconv.INPUT_MESSAGES])
    sent = chat_log(app).requests[2]["messages"]  # the streamed reply sent back as ChatOpenAI sends it
    assert [message.get("tool_calls") for message in recorded] == [message.get("tool_calls") for message in sent]


def truncated_call_server() -> Any:
    return chat_server_app([Reply(tool_calls=[ToolCall("add", TRUNCATED, id="call-1")])])


def recorded_arguments(spans: Any) -> list[str]:
    (call,) = [span for span in spans if (span.attributes or {}).get(semconv.LLM_CALL)]
    return [
        made["function"]["arguments"] for made in json.loads(call.attributes[semconv.OUTPUT_MESSAGES])[0]["tool_calls"]
    ]


@pytest.mark.parametrize("how", ["invoke", "ainvoke"])
async def test_a_tool_call_streamed_inside_invoke_is_recorded_as_streamed(captured_spans, instrument, how) -> None:
    """``streaming=True``: the model streams inside ``invoke`` and LangChain returns the merged reply,
    cut-off JSON completed (``{"a": 17}``); the model wrote ``{"a": 17, "b": ``."""
    instrument()
    with ServingThread(truncated_call_server()) as server:
        model = ChatOpenAI(model="agl-toy", base_url=f"{server.url}/v1", api_key="test", max_retries=0, streaming=True)  # type: ignore[arg-type]
        question = [HumanMessage("What is 17 + 25?")]
        reply = model.invoke(question) if how == "invoke" else await model.ainvoke(question)
    assert reply.tool_calls[0]["args"] == {"a": 17}  # LangChain's completion, which the program gets unchanged

    assert recorded_arguments(captured_spans.get_finished_spans()) == [TRUNCATED]


def test_a_tool_call_a_graph_streams_as_messages_is_recorded_as_streamed(captured_spans, instrument) -> None:
    """LangGraph's ``stream_mode="messages"`` makes a model called by ``invoke`` in a node stream."""
    instrument()
    with ServingThread(truncated_call_server()) as server:
        model = ChatOpenAI(model="agl-toy", base_url=f"{server.url}/v1", api_key="test", max_retries=0)  # type: ignore[arg-type]
        graph = StateGraph(MessagesState)
        graph.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
        graph.add_edge(START, "agent")
        streamed = list(graph.compile().stream({"messages": [HumanMessage("17 + 25?")]}, stream_mode="messages"))
    assert len(streamed) > 2

    assert recorded_arguments(captured_spans.get_finished_spans()) == [TRUNCATED]


def test_documents_whose_metadata_has_keys_json_lacks_are_still_recorded(captured_spans, instrument) -> None:
    class Grid(BaseRetriever):
        def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
            return [Document(page_content="cell", metadata={(0, 1): "B1", "sheet": "main"})]

    instrument()
    Grid().invoke("cells")
    (span,) = captured_spans.get_finished_spans()
    assert json.loads(span.attributes[semconv.OPERATION_OUTPUT]) == [
        {"page_content": "cell", "metadata": {"(0, 1)": "B1", "sheet": "main"}}
    ]
