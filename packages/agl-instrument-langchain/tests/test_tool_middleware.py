"""A tool error that a ``wrap_tool_call`` wrapper (what LangChain v1's agent middleware compiles to,
``ToolNode(wrap_tool_call=…)``) turns into an error message is recorded as a ToolNode's own
``handle_tool_errors`` answer is: the failed span's result is the message the model reads next."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from opentelemetry.trace import StatusCode

from agl.core.tracing import semconv


@tool
def divide(a: int, b: int) -> float:
    """Divide two integers."""
    return a / b


def answer_errors(request: Any, handler: Callable[[Any], Any]) -> Any:
    """A middleware's ``wrap_tool_call`` that tells the model about a failed tool instead of raising."""
    try:
        return handler(request)
    except Exception as error:
        return ToolMessage(f"Tool failed: {error}", tool_call_id=request.tool_call["id"], status="error")


async def aanswer_errors(request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
    try:
        return await handler(request)
    except Exception as error:
        return ToolMessage(f"Tool failed: {error}", tool_call_id=request.tool_call["id"], status="error")


def retry_once_then_answer(request: Any, handler: Callable[[Any], Any]) -> Any:
    """Two attempts (as a retry middleware makes), then the error as a message."""
    try:
        return handler(request)
    except Exception:
        return answer_errors(request, handler)


def graph_with(**wrappers: Any) -> Any:
    graph = StateGraph(MessagesState)
    graph.add_node("tools", ToolNode([divide], **wrappers))
    graph.add_edge(START, "tools")
    return graph.compile()


def divided(a: int, b: int) -> dict[str, Any]:
    return {"messages": [AIMessage("", tool_calls=[{"name": "divide", "args": {"a": a, "b": b}, "id": "call-1"}])]}


def tool_spans(captured_spans: Any) -> list[Any]:
    spans = sorted(captured_spans.get_finished_spans(), key=lambda span: span.attributes[semconv.SEQUENCE_ID])
    return [span for span in spans if span.name == "execute_tool divide"]


@pytest.mark.parametrize(
    ("how", "wrappers"),
    [
        ("invoke", {"wrap_tool_call": answer_errors}),
        ("ainvoke", {"wrap_tool_call": answer_errors}),  # the sync wrapper, run by the async ToolNode
        ("ainvoke", {"awrap_tool_call": aanswer_errors}),
    ],
)
async def test_a_tool_error_a_wrapper_answers_is_the_failed_spans_result(
    captured_spans, instrument, how, wrappers
) -> None:
    graph = graph_with(**wrappers)
    instrument()
    result = graph.invoke(divided(1, 0)) if how == "invoke" else await graph.ainvoke(divided(1, 0))
    answer = result["messages"][-1]
    assert answer.status == "error" and answer.content == "Tool failed: division by zero"

    (span,) = tool_spans(captured_spans)
    assert span.attributes[semconv.TOOL_CALL_RESULT] == answer.content
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ZeroDivisionError: division by zero"
    assert [event.name for event in span.events] == ["exception"]


def test_only_the_last_attempt_of_a_retrying_wrapper_carries_its_answer(captured_spans, instrument) -> None:
    graph = graph_with(wrap_tool_call=retry_once_then_answer)
    instrument()
    answer = graph.invoke(divided(1, 0))["messages"][-1]

    first, last = tool_spans(captured_spans)
    assert semconv.TOOL_CALL_RESULT not in first.attributes
    assert last.attributes[semconv.TOOL_CALL_RESULT] == answer.content
    assert first.status.status_code is StatusCode.ERROR and last.status.status_code is StatusCode.ERROR


def test_a_failed_attempt_ends_before_the_wrapper_tries_again(captured_spans, instrument) -> None:
    """Its span ends when the next attempt starts, not when that one fails (or the answer comes)."""
    seen_by_attempt: list[int] = []

    @tool
    def divide(a: int, b: int) -> float:
        """Divide two integers."""
        seen_by_attempt.append(len(tool_spans(captured_spans)))
        return a / b

    graph = StateGraph(MessagesState)
    graph.add_node("tools", ToolNode([divide], wrap_tool_call=retry_once_then_answer))
    graph.add_edge(START, "tools")
    instrument()
    graph.compile().invoke(divided(1, 0))

    assert seen_by_attempt == [0, 1]
    assert len(tool_spans(captured_spans)) == 2


def test_a_tool_that_succeeds_under_a_wrapper_keeps_its_result(captured_spans, instrument) -> None:
    graph = graph_with(wrap_tool_call=answer_errors)
    instrument()
    graph.invoke(divided(6, 3))

    (span,) = tool_spans(captured_spans)
    assert span.attributes[semconv.TOOL_CALL_RESULT] == "2.0"
    assert span.status.status_code is StatusCode.UNSET


def test_a_tool_error_a_wrapper_lets_through_still_ends_the_span_failed(captured_spans, instrument) -> None:
    graph = graph_with(wrap_tool_call=lambda request, handler: handler(request), handle_tool_errors=False)
    instrument()
    with pytest.raises(ZeroDivisionError):
        graph.invoke(divided(1, 0))

    (span,) = tool_spans(captured_spans)
    assert span.status.status_code is StatusCode.ERROR and semconv.TOOL_CALL_RESULT not in span.attributes
