"""Unusual but legitimate uses of LangChain and LangGraph: async streams left midway, LangGraph's
control flow (an interrupt and its resume, a ``Command`` for the parent graph), a model that
streams another model from inside a span of its own."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.types import Command, interrupt
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from agl.core.tracing import semconv

FAKE_MODEL = "generic-fake-chat-model"
QUESTION = {"messages": [HumanMessage("Count.")]}


def names(spans: Sequence[ReadableSpan]) -> list[str]:
    return sorted(span.name for span in spans)


def failed(spans: Sequence[ReadableSpan]) -> list[str]:
    return [span.name for span in spans if span.status.status_code is StatusCode.ERROR]


def streaming_graph() -> Any:
    """One node, ``counter``, streaming its model's reply."""

    async def counter(state: MessagesState) -> dict[str, Any]:
        model = GenericFakeChatModel(messages=iter(["one two three"]))
        chunks = [chunk async for chunk in model.astream(state["messages"])]
        return {"messages": [AIMessage("".join(str(chunk.content) for chunk in chunks))]}

    graph = StateGraph(MessagesState)
    graph.add_node("counter", counter)
    graph.add_edge(START, "counter")
    return graph.compile(name="counting")


class Errors(BaseCallbackHandler):
    """The user's own handler: the errors LangChain reported to it."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        self.errors.append(error)


async def test_an_async_model_stream_closed_midway_ends_its_span_and_closes_langchains(
    captured_spans, instrument
) -> None:
    instrument()
    errors = Errors()
    model = GenericFakeChatModel(messages=iter(["one two three"]))
    stream = model.astream("Count.", config={"callbacks": [errors]})
    first = await anext(stream)
    await stream.aclose()

    (call,) = captured_spans.get_finished_spans()
    assert json.loads(call.attributes[semconv.OUTPUT_MESSAGES]) == [{"role": "assistant", "content": first.content}]
    assert call.status.status_code is StatusCode.UNSET  # the caller stopped reading: no failure
    assert [type(error) for error in errors.errors] == [GeneratorExit]  # LangChain's stream was closed too


async def test_a_graph_stream_closed_midway_ends_its_spans(captured_spans, instrument) -> None:
    instrument()
    stream = streaming_graph().astream(QUESTION, stream_mode="messages")
    await anext(stream)
    await stream.aclose()

    spans = captured_spans.get_finished_spans()
    assert names(spans) == [f"chat {FAKE_MODEL}", "invoke_agent counter", "invoke_workflow counting"]
    assert "invoke_workflow counting" not in failed(spans)  # LangGraph cancels the node, not the run


def test_streams_left_unfinished_when_the_loop_ends_log_no_asyncio_error(captured_spans, instrument, caplog) -> None:
    """At shutdown the loop closes every async generator it has seen at once; a wrapper generator
    closing the framework's meanwhile made asyncio log "aclose(): asynchronous generator is already
    running"."""
    instrument()

    async def main() -> None:
        model_stream = GenericFakeChatModel(messages=iter(["one two three"])).astream("Count.")
        async for _ in model_stream:
            break
        graph_stream = streaming_graph().astream(QUESTION, stream_mode="messages")
        async for _ in graph_stream:
            break

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(main())
    assert [record.getMessage() for record in caplog.records if record.name == "asyncio"] == []
    spans = captured_spans.get_finished_spans()
    assert names(spans) == [f"chat {FAKE_MODEL}"] * 2 + ["invoke_agent counter", "invoke_workflow counting"]


@tool
def confirm(question: str) -> str:
    """Ask the user to confirm."""
    return str(interrupt(question))


def test_an_interrupt_and_its_resume_are_no_failures(captured_spans, instrument) -> None:
    def asker(state: MessagesState) -> dict[str, Any]:
        answer = confirm.invoke({"question": "Go on?"})
        return {"messages": [GenericFakeChatModel(messages=iter([f"You said {answer}."])).invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("asker", asker)
    graph.add_edge(START, "asker")
    compiled = graph.compile(name="asking", checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": "thread-1"}}
    instrument()
    assert "__interrupt__" in compiled.invoke({"messages": [HumanMessage("Hi.")]}, config)
    assert compiled.invoke(Command(resume="yes"), config)["messages"][-1].content == "You said yes."

    spans = captured_spans.get_finished_spans()
    assert names(spans).count("invoke_agent asker") == names(spans).count("execute_tool confirm") == 2
    assert failed(spans) == []


def test_a_command_for_the_parent_graph_is_no_failure(captured_spans, instrument) -> None:
    def hand_off(state: MessagesState) -> Command[Any]:
        return Command(graph=Command.PARENT, goto="closer", update={"messages": [AIMessage("Over to you.")]})

    inner = StateGraph(MessagesState)
    inner.add_node("hand_off", hand_off)
    inner.add_edge(START, "hand_off")
    outer = StateGraph(MessagesState)
    outer.add_node("team", inner.compile(name="team"), destinations=("closer",))
    outer.add_node("closer", lambda state: {"messages": [AIMessage("Done.")]})
    outer.add_edge(START, "team")
    instrument()
    result = outer.compile(name="office").invoke({"messages": [HumanMessage("Hi.")]})
    assert [message.content for message in result["messages"]] == ["Hi.", "Over to you.", "Done."]

    spans = captured_spans.get_finished_spans()
    assert {"invoke_workflow team", "invoke_agent hand_off", "invoke_agent closer"} <= set(names(spans))
    assert failed(spans) == []


class Relay(BaseChatModel):
    """A model that streams another one from inside a span of its own (a router, a fallback)."""

    inner: Any

    @property
    def _llm_type(self) -> str:
        return "relay"

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        raise NotImplementedError

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        with trace.get_tracer("relay").start_as_current_span("relay hop"):
            for chunk in self.inner.stream(messages):
                yield ChatGenerationChunk(message=AIMessageChunk(content=chunk.content))

    async def _astream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        with trace.get_tracer("relay").start_as_current_span("relay hop"):
            async for chunk in self.inner.astream(messages):
                yield ChatGenerationChunk(message=AIMessageChunk(content=chunk.content))


async def test_a_model_streaming_another_past_a_span_of_its_own_is_one_llm_call(captured_spans, instrument) -> None:
    instrument()
    relay = Relay(inner=GenericFakeChatModel(messages=iter(["one two", "three four"])))
    assert "".join(str(chunk.content) for chunk in relay.stream("Count.")) == "one two"
    assert "".join([str(chunk.content) async for chunk in relay.astream("Count on.")]) == "three four"

    calls = [span for span in captured_spans.get_finished_spans() if (span.attributes or {}).get(semconv.LLM_CALL)]
    assert [call.name for call in calls] == ["chat relay"] * 2  # the inner model joined the relay's call
