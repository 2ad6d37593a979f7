"""Tool spans say what the model asked for and how the tool really ended: arguments LangGraph
injects (the graph's state, a ``ToolRuntime``, the call id) are not the model's, and a failure the
tool handled itself (``handle_tool_error``) is a failure however the tool was called."""

from __future__ import annotations

import json
from typing import Annotated, Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import InjectedToolCallId, StructuredTool, ToolException, tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import InjectedState, ToolNode, ToolRuntime, create_react_agent
from opentelemetry.trace import StatusCode

from agl.core.tracing import semconv


@tool
def count_words(text: str, state: Annotated[dict[str, Any], InjectedState]) -> int:
    """Count the words of a text."""
    return len(text.split())


@tool
def echo(text: str, runtime: ToolRuntime) -> str:
    """Echo a text."""
    return text


@tool
def stamp(text: str, call_id: Annotated[str, InjectedToolCallId]) -> str:
    """Stamp a text with the call's id."""
    return f"{text} ({call_id})"


def test_arguments_langgraph_injects_are_not_recorded_as_the_models(captured_spans, instrument) -> None:
    asked = [
        {"name": name, "args": {"text": "one two"}, "id": f"call-{name}", "type": "tool_call"}
        for name in ("count_words", "echo", "stamp")
    ]
    graph = StateGraph(MessagesState)
    graph.add_node("tools", ToolNode([count_words, echo, stamp]))
    graph.add_edge(START, "tools")
    instrument()
    result = graph.compile().invoke(
        {"messages": [HumanMessage("A long conversation. " * 50), AIMessage("", tool_calls=asked)]}
    )
    assert [message.content for message in result["messages"][2:]] == ["2", "one two", "one two (call-stamp)"]

    executed = {
        span.attributes[semconv.TOOL_NAME]: span
        for span in captured_spans.get_finished_spans()
        if (span.attributes or {}).get(semconv.OPERATION_NAME) == semconv.EXECUTE_TOOL
    }
    for call in asked:
        span = executed[call["name"]]
        assert json.loads(span.attributes[semconv.TOOL_CALL_ARGUMENTS]) == {"text": "one two"}
        assert span.attributes[semconv.TOOL_CALL_ID] == call["id"]


def test_arguments_the_model_gave_beyond_the_schema_are_kept(captured_spans, instrument) -> None:
    """The model's mistakes (an argument the tool does not take) are what a trace must show."""
    graph = StateGraph(MessagesState)
    graph.add_node("tools", ToolNode([count_words], handle_tool_errors=True))
    graph.add_edge(START, "tools")
    made = {"text": "one", "language": "en"}
    instrument()
    graph.compile().invoke(
        {"messages": [AIMessage("", tool_calls=[{"name": "count_words", "args": made, "id": "call-1"}])]}
    )

    (span,) = [span for span in captured_spans.get_finished_spans() if span.name == "execute_tool count_words"]
    assert json.loads(span.attributes[semconv.TOOL_CALL_ARGUMENTS]) == made


def look_up(word: str) -> str:
    """Look a word up."""
    raise ToolException(f"No entry for {word}.")


async def test_an_error_the_tool_handled_fails_its_span_however_it_was_called(captured_spans, instrument) -> None:
    handled = StructuredTool.from_function(look_up, handle_tool_error=True)
    instrument()
    assert handled.invoke({"word": "agl"}) == "No entry for agl."  # no tool-call id: a plain string
    assert await handled.ainvoke({"word": "agl"}) == "No entry for agl."
    called = {"name": "look_up", "args": {"word": "agl"}, "id": "call-1", "type": "tool_call"}
    message = handled.invoke(called)
    assert isinstance(message, ToolMessage) and message.status == "error"

    spans = captured_spans.get_finished_spans()
    assert [span.name for span in spans] == ["execute_tool look_up"] * 3
    for span in spans:
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes[semconv.TOOL_CALL_RESULT] == "No entry for agl."
        assert [event.attributes["exception.message"] for event in span.events] == ["No entry for agl."]


def test_invalid_arguments_the_tool_handled_fail_its_span(captured_spans, instrument) -> None:
    handled = StructuredTool.from_function(look_up, handle_validation_error="Give a word.")
    instrument()
    assert handled.invoke({"word": ["not", "a", "word"]}) == "Give a word."

    (span,) = captured_spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[semconv.TOOL_CALL_RESULT] == "Give a word."


def test_a_tool_that_succeeds_after_an_error_elsewhere_is_no_failure(captured_spans, instrument) -> None:
    """The handled error fails only the span of the tool that handled it."""
    handled = StructuredTool.from_function(look_up, handle_tool_error=True)

    @tool
    def spell(word: str) -> str:
        """Spell a word, after looking it up."""
        return f"{handled.invoke({'word': word})} {' '.join(word)}"

    instrument()
    assert spell.invoke({"word": "ab"}) == "No entry for ab. a b"

    status = {span.name: span.status.status_code for span in captured_spans.get_finished_spans()}
    assert status == {"execute_tool look_up": StatusCode.ERROR, "execute_tool spell": StatusCode.UNSET}


@tool
def divide(a: int, b: int) -> float:
    """Divide two integers."""
    return a / b


def tool_node_graph(handle_tool_errors: Any = True) -> Any:
    graph = StateGraph(MessagesState)
    graph.add_node("tools", ToolNode([divide], handle_tool_errors=handle_tool_errors))
    graph.add_edge(START, "tools")
    return graph.compile()


def divided(args: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [AIMessage("", tool_calls=[{"name": "divide", "args": args, "id": "call-1"}])]}


@pytest.mark.parametrize(
    ("handle_tool_errors", "args", "error"),
    [
        (True, {"a": 1, "b": 0}, "ZeroDivisionError: division by zero"),
        ("Do not divide by zero.", {"a": 1, "b": 0}, "ZeroDivisionError: division by zero"),
        (True, {"a": "one", "b": 2}, "ValidationError: "),  # LangGraph's default handles invalid arguments only
    ],
)
@pytest.mark.parametrize("how", ["invoke", "ainvoke"])
async def test_a_tool_error_a_tool_node_answers_is_the_failed_spans_result(
    captured_spans, instrument, handle_tool_errors, args, error, how
) -> None:
    """A ToolNode that handles a tool's error tells the model in a ToolMessage: that message, what
    the model sees next, is the failed span's result (the error stays its status and event)."""
    graph = tool_node_graph(handle_tool_errors)
    instrument()
    result = graph.invoke(divided(args)) if how == "invoke" else await graph.ainvoke(divided(args))
    answer = result["messages"][-1]
    assert answer.status == "error"

    (span,) = [span for span in captured_spans.get_finished_spans() if span.name == "execute_tool divide"]
    assert span.attributes[semconv.TOOL_CALL_RESULT] == answer.content
    assert span.status.status_code is StatusCode.ERROR and span.status.description.startswith(error)
    assert [event.name for event in span.events] == ["exception"]


def test_a_tool_error_a_tool_node_does_not_handle_still_ends_the_span_failed(captured_spans, instrument) -> None:
    graph = tool_node_graph(handle_tool_errors=False)
    instrument()
    with pytest.raises(ZeroDivisionError):
        graph.invoke(divided({"a": 1, "b": 0}))

    (span,) = [span for span in captured_spans.get_finished_spans() if span.name == "execute_tool divide"]
    assert span.status.status_code is StatusCode.ERROR and semconv.TOOL_CALL_RESULT not in span.attributes


class ToolModel(GenericFakeChatModel):
    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(tool) for tool in tools], **kwargs)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@pytest.mark.filterwarnings("ignore:create_react_agent has been moved")
@pytest.mark.parametrize("how", ["invoke", "ainvoke"])
async def test_parallel_tool_calls_of_a_prebuilt_agent_are_sibling_spans_each_with_its_call(
    captured_spans, instrument, how
) -> None:
    """One reply calling two tools: LangGraph runs them at once (threads, or tasks); each gets its
    span, side by side under the graph's, and the next model call sees both answers in order."""
    calls = [
        {"name": "add", "args": {"a": 1, "b": 2}, "id": "call-add"},
        {"name": "multiply", "args": {"a": 3, "b": 4}, "id": "call-multiply"},
    ]
    model = ToolModel(messages=iter([AIMessage("", tool_calls=calls), AIMessage("3 and 12.")]))
    agent = create_react_agent(model, [add, multiply], name="calculator")
    question = {"messages": [HumanMessage("1 + 2 and 3 * 4?")]}
    instrument()
    agent.invoke(question) if how == "invoke" else await agent.ainvoke(question)

    spans = sorted(captured_spans.get_finished_spans(), key=lambda span: span.attributes[semconv.SEQUENCE_ID])
    (workflow,) = [span for span in spans if span.name == "invoke_workflow calculator"]
    executed = {span.attributes[semconv.TOOL_CALL_ID]: span for span in spans if span.name.startswith("execute_tool")}
    assert sorted(executed) == ["call-add", "call-multiply"]
    for call, result in zip(calls, ["3", "12"], strict=True):
        span = executed[call["id"]]
        assert span.parent.span_id == workflow.context.span_id
        assert json.loads(span.attributes[semconv.TOOL_CALL_ARGUMENTS]) == call["args"]
        assert span.attributes[semconv.TOOL_CALL_RESULT] == result

    first, second = [span for span in spans if span.attributes.get(semconv.LLM_CALL)]
    seen = json.loads(second.attributes[semconv.INPUT_MESSAGES])
    assert [(message["role"], message.get("tool_call_id"), message["content"]) for message in seen[2:]] == [
        ("tool", "call-add", "3"),
        ("tool", "call-multiply", "12"),
    ]
    assert [made["id"] for made in json.loads(first.attributes[semconv.OUTPUT_MESSAGES])[0]["tool_calls"]] == [
        "call-add",
        "call-multiply",
    ]
