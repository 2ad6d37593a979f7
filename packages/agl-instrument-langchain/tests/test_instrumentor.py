"""The instrumentor on LangChain and LangGraph, offline, with `GenericFakeChatModel`: span trees,
agent attribution, what each span records, threads and tasks, and the instrumentor's own contract
(never raising, idempotent, reversible, lazy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest
import wrapt
from langchain_core.callbacks.manager import AsyncCallbackManager, CallbackManager
from langchain_core.documents import Document
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_openai_messages,
)
from langchain_core.messages import ai as ai_messages
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig, RunnableSequence
from langchain_core.tools import BaseTool, tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph._internal._runnable import RunnableCallable
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from agl.core.adapters import spans_to_triplets
from agl.core.tracing import semconv
from agl.core.tracing.context import rollout_context
from agl.core.tracing.emitters import emit_reward
from agl.core.types import Span
from agl.instrument.langchain import _wrappers

FAKE_MODEL = "generic-fake-chat-model"
JSON_ATTRIBUTES = (semconv.INPUT_MESSAGES, semconv.OUTPUT_MESSAGES, semconv.TOOL_DEFINITIONS)
CALCULATOR_TREE = [  # the span tree of one run of the calculator graph (a tool call, two model calls)
    ("invoke_workflow calculator", None),
    ("invoke_agent calculator", "invoke_workflow calculator"),
    (f"chat {FAKE_MODEL}", "invoke_agent calculator"),
    ("execute_tool add", "invoke_workflow calculator"),
    ("invoke_agent calculator", "invoke_workflow calculator"),
    (f"chat {FAKE_MODEL}", "invoke_agent calculator"),
]


class ToolModel(GenericFakeChatModel):
    """`GenericFakeChatModel` with ``bind_tools``, as tool agents need (tools in OpenAI's format)."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(tool) for tool in tools], **kwargs)


def attribute(span: ReadableSpan, key: str) -> Any:
    """An attribute as Python values: JSON documents decoded, sequences as lists."""
    assert span.attributes is not None
    value = span.attributes[key]
    return json.loads(value) if key in JSON_ATTRIBUTES else (list(value) if isinstance(value, tuple) else value)


def tree(spans: Sequence[ReadableSpan]) -> list[tuple[str, str | None]]:
    """(name, parent's name) for each span, in start order (agl's sequence ids)."""
    names = {span.context.span_id: span.name for span in spans}
    ordered = sorted(spans, key=lambda span: (span.attributes or {})[semconv.SEQUENCE_ID])
    return [(span.name, names.get(span.parent.span_id) if span.parent else None) for span in ordered]


def llm_spans(spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    ordered = sorted(spans, key=lambda span: (span.attributes or {})[semconv.SEQUENCE_ID])
    return [span for span in ordered if (span.attributes or {}).get(semconv.LLM_CALL)]


def stored(spans: Sequence[ReadableSpan]) -> list[Span]:
    """The spans as the store keeps them (what the adapters read)."""
    return [
        Span.from_otel(
            span,
            rollout_id=attribute(span, semconv.ROLLOUT_ID),
            attempt_id=attribute(span, semconv.ATTEMPT_ID),
            sequence_id=attribute(span, semconv.SEQUENCE_ID),
        )
        for span in spans
    ]


ADD_CALL = {"name": "add", "args": {"a": 17, "b": 25}, "id": "call-1"}
ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
QUESTION = [SystemMessage("You are a calculator."), HumanMessage("What is 17 + 25?")]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def react_graph(model: Any, name: str = "calculator") -> Any:
    """A one-tool ReAct agent as a graph: the node ``calculator`` and LangGraph's ``ToolNode``."""
    bound = model.bind_tools([add])

    def calculator(state: MessagesState) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("calculator", calculator)
    graph.add_node("tools", ToolNode([add]))
    graph.add_edge(START, "calculator")
    graph.add_conditional_edges("calculator", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "calculator")
    return graph.compile(name=name)


def tool_model() -> ToolModel:
    return ToolModel(messages=iter([AIMessage(content="", tool_calls=[ADD_CALL]), AIMessage(content="42")]))


def test_a_one_tool_agent_gives_the_exact_span_tree(captured_spans, instrument) -> None:
    instrument()
    with rollout_context("ro-1", "at-1"):
        result = react_graph(tool_model()).invoke({"messages": QUESTION})
        emit_reward(1.0)
    assert result["messages"][-1].content == "42"  # the program's own result is untouched

    spans = captured_spans.get_finished_spans()
    assert tree(spans) == [*CALCULATOR_TREE, ("agl.reward", None)]
    assert {attribute(span, semconv.ROLLOUT_ID) for span in spans} == {"ro-1"}
    assert len({span.context.trace_id for span in spans if span.name != "agl.reward"}) == 1

    workflow = next(span for span in spans if span.name.startswith("invoke_workflow"))
    assert attribute(workflow, semconv.OPERATION_NAME) == "invoke_workflow"
    agents = [span for span in spans if span.name.startswith("invoke_agent")]
    for agent in agents:
        assert attribute(agent, semconv.OPERATION_NAME) == "invoke_agent"
        assert attribute(agent, semconv.AGENT_NAME) == attribute(agent, semconv.GEN_AI_AGENT_NAME) == "calculator"

    first, second = llm_spans(spans)
    for call in (first, second):
        assert attribute(call, semconv.AGENT_NAME) == "calculator"
        assert attribute(call, semconv.TOOL_DEFINITIONS) == [ADD_TOOL]
        assert attribute(call, semconv.REQUEST_MODEL) == FAKE_MODEL
    asked = [{"role": "system", "content": "You are a calculator."}, {"role": "user", "content": "What is 17 + 25?"}]
    tool_call = {"type": "function", "id": "call-1", "function": {"name": "add", "arguments": '{"a": 17, "b": 25}'}}
    assistant = {"role": "assistant", "content": "", "tool_calls": [tool_call]}
    assert attribute(first, semconv.INPUT_MESSAGES) == asked
    assert attribute(first, semconv.OUTPUT_MESSAGES) == [assistant]
    tool_message = {"role": "tool", "name": "add", "tool_call_id": "call-1", "content": "42"}
    assert attribute(second, semconv.INPUT_MESSAGES) == [*asked, assistant, tool_message]
    assert attribute(second, semconv.OUTPUT_MESSAGES) == [{"role": "assistant", "content": "42"}]

    (executed,) = [span for span in spans if span.name == "execute_tool add"]
    assert attribute(executed, semconv.OPERATION_NAME) == "execute_tool"
    assert attribute(executed, semconv.TOOL_NAME) == "add"
    assert attribute(executed, semconv.TOOL_CALL_ID) == "call-1"
    assert json.loads(attribute(executed, semconv.TOOL_CALL_ARGUMENTS)) == {"a": 17, "b": 25}
    assert attribute(executed, semconv.TOOL_CALL_RESULT) == "42"

    (triplet,) = [t for t in spans_to_triplets(stored(spans)) if t.reward is not None]
    assert triplet.reward == 1.0 and triplet.response == attribute(second, semconv.OUTPUT_MESSAGES)


def two_agents(researcher_model: Any, writer_model: Any, *, parallel: bool = False) -> Any:
    """``researcher`` then ``writer`` (or both at once, from ``START``), each calling its model."""

    def researcher(state: MessagesState) -> dict[str, Any]:
        return {"messages": [researcher_model.invoke([HumanMessage("Find facts about otters.")])]}

    def writer(state: MessagesState) -> dict[str, Any]:
        return {"messages": [writer_model.invoke([HumanMessage("Write about otters.")])]}

    async def aresearcher(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await researcher_model.ainvoke([HumanMessage("Find facts about otters.")])]}

    async def awriter(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await writer_model.ainvoke([HumanMessage("Write about otters.")])]}

    graph = StateGraph(MessagesState)
    graph.add_node("researcher", RunnableCallable(researcher, aresearcher))
    graph.add_node("writer", RunnableCallable(writer, awriter))
    if parallel:
        graph.add_edge(START, "researcher")
        graph.add_edge(START, "writer")
    else:
        graph.add_edge(START, "researcher")
        graph.add_edge("researcher", "writer")
    return graph.compile(name="team")


def test_two_agents_are_told_apart_and_one_can_be_trained_alone(captured_spans, instrument) -> None:
    instrument()
    facts = GenericFakeChatModel(messages=iter(["Otters hold hands."]))
    prose = GenericFakeChatModel(messages=iter(["Otters, hand in hand, drift."]))
    with rollout_context("ro-2", "at-2"):
        two_agents(facts, prose).invoke({"messages": [HumanMessage("Otters, please.")]})
        emit_reward(0.5)

    spans = captured_spans.get_finished_spans()
    assert tree(spans) == [
        ("invoke_workflow team", None),
        ("invoke_agent researcher", "invoke_workflow team"),
        (f"chat {FAKE_MODEL}", "invoke_agent researcher"),
        ("invoke_agent writer", "invoke_workflow team"),
        (f"chat {FAKE_MODEL}", "invoke_agent writer"),
        ("agl.reward", None),
    ]
    assert [attribute(span, semconv.AGENT_NAME) for span in llm_spans(spans)] == ["researcher", "writer"]

    (written,) = spans_to_triplets(stored(spans), agent_match="^writer$")
    assert written.prompt == [{"role": "user", "content": "Write about otters."}]
    assert written.response == [{"role": "assistant", "content": "Otters, hand in hand, drift."}]
    assert written.reward == 0.5
    assert len(spans_to_triplets(stored(spans))) == 2


def test_parallel_nodes_in_executor_threads_keep_their_parents(captured_spans, instrument) -> None:
    instrument()
    facts = GenericFakeChatModel(messages=iter(["facts"]))
    prose = GenericFakeChatModel(messages=iter(["prose"]))
    two_agents(facts, prose, parallel=True).invoke({"messages": [HumanMessage("go")]})

    spans = captured_spans.get_finished_spans()
    by_id = {span.context.span_id: span for span in spans}
    calls = llm_spans(spans)
    assert len(calls) == 2
    for call in calls:
        agent = by_id[call.parent.span_id]
        assert agent.name == f"invoke_agent {attribute(call, semconv.AGENT_NAME)}"
        assert by_id[agent.parent.span_id].name == "invoke_workflow team"
    assert {attribute(call, semconv.OUTPUT_MESSAGES)[0]["content"] for call in calls} == {"facts", "prose"}


async def test_an_async_graph_keeps_parents_across_tasks(captured_spans, instrument) -> None:
    instrument()
    facts = GenericFakeChatModel(messages=iter(["facts"]))
    prose = GenericFakeChatModel(messages=iter(["prose"]))
    await two_agents(facts, prose, parallel=True).ainvoke({"messages": [HumanMessage("go")]})

    spans = captured_spans.get_finished_spans()
    by_id = {span.context.span_id: span for span in spans}
    calls = llm_spans(spans)
    assert sorted(attribute(call, semconv.AGENT_NAME) for call in calls) == ["researcher", "writer"]
    for call in calls:
        assert by_id[call.parent.span_id].name == f"invoke_agent {attribute(call, semconv.AGENT_NAME)}"


def test_a_model_call_reuses_the_parameters_langchain_computed_for_it(captured_spans, instrument) -> None:
    asked: list[Any] = []

    class Counted(TunedModel):
        def _get_invocation_params(self, stop: Any = None, **kwargs: Any) -> dict[str, Any]:
            asked.append(stop)
            return super()._get_invocation_params(stop=stop, **kwargs)

    instrument()
    Counted(messages=iter(["a"])).invoke("One.", stop=["x"])
    assert asked == [["x"]]  # LangChain's own call only
    (call,) = llm_spans(captured_spans.get_finished_spans())
    assert attribute(call, "gen_ai.request.stop_sequences") == ["x"]
    assert not _wrappers._invocations


CONVERSATIONS = {
    "plain": [SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello"), HumanMessage("")],
    "named": [HumanMessage("Hi", name="ada"), AIMessage("Hello", name="bot")],
    "tool calls": [
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": "é"}, "id": "c1"}]),
        ToolMessage("3", tool_call_id="c1"),
        ToolMessage("4", tool_call_id="c2", name="add"),
        AIMessage(
            "on it", tool_calls=[{"name": "f", "args": {}, "id": "c3"}, {"name": "g", "args": {"x": [1]}, "id": None}]
        ),
    ],
    "refusal": [AIMessage("", additional_kwargs={"refusal": "no"})],
    "developer role": [SystemMessage("Rules.", additional_kwargs={"__openai_role__": "developer"})],
    "content blocks": [HumanMessage([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]), AIMessage("ok")],
    "image": [HumanMessage([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}])],
    "chunk": [AIMessageChunk(content="partial"), HumanMessage("go on")],
    "dicts": [{"role": "user", "content": "hi"}, ("assistant", "hello")],
}


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_messages_are_converted_as_langchain_converts_them(name: str) -> None:
    messages = CONVERSATIONS[name]
    assert _wrappers._openai_messages(iter(messages)) == convert_to_openai_messages(messages)


async def test_invoke_stream_and_their_async_forms_give_the_same_tree(captured_spans, instrument) -> None:
    async def astream(graph: Any) -> list[Any]:
        return [chunk async for chunk in graph.astream({"messages": QUESTION})]

    instrument()
    runs = {
        "invoke": lambda graph: graph.invoke({"messages": QUESTION}),
        "stream": lambda graph: list(graph.stream({"messages": QUESTION})),
        "ainvoke": lambda graph: graph.ainvoke({"messages": QUESTION}),
        "astream": astream,
    }
    for name, run in runs.items():
        captured_spans.clear()
        done = run(react_graph(tool_model()))
        if name.startswith("a"):
            await done
        assert tree(captured_spans.get_finished_spans()) == CALCULATOR_TREE, name
        assert _wrappers._invoking.get() is None


def test_a_graph_invoked_inside_a_node_gets_its_own_workflow_span(captured_spans, instrument) -> None:
    inner = react_graph(tool_model(), name="inner")

    def delegate(state: MessagesState) -> dict[str, Any]:
        return {"messages": inner.invoke(state)["messages"][-1:]}

    outer = StateGraph(MessagesState)
    outer.add_node("delegate", delegate)
    outer.add_edge(START, "delegate")
    instrument()
    outer.compile(name="outer").invoke({"messages": QUESTION})

    found = tree(captured_spans.get_finished_spans())
    assert found[:3] == [
        ("invoke_workflow outer", None),
        ("invoke_agent delegate", "invoke_workflow outer"),
        ("invoke_workflow inner", "invoke_agent delegate"),
    ]
    assert found.count(("execute_tool add", "invoke_workflow inner")) == 1


def test_a_streamed_model_call_is_one_span_with_the_whole_reply(captured_spans, instrument) -> None:
    instrument()
    model = GenericFakeChatModel(messages=iter(["one two three"]))
    chunks = list(model.stream("Count.", stop=["four"]))
    assert "".join(chunk.content for chunk in chunks) == "one two three" and len(chunks) > 1

    (call,) = captured_spans.get_finished_spans()
    assert call.name == f"chat {FAKE_MODEL}" and attribute(call, semconv.LLM_CALL) is True
    assert attribute(call, semconv.INPUT_MESSAGES) == [{"role": "user", "content": "Count."}]
    assert attribute(call, semconv.OUTPUT_MESSAGES) == [{"role": "assistant", "content": "one two three"}]
    assert attribute(call, "gen_ai.request.stop_sequences") == ["four"]


def test_a_streamed_reply_is_merged_once_not_chunk_by_chunk(captured_spans, instrument, monkeypatch) -> None:
    """Merged pairwise, each chunk copied the reply so far: recording a long stream grew with its square."""
    merges: list[int] = []
    merge = ai_messages.add_ai_message_chunks

    def counted(left: AIMessageChunk, *others: AIMessageChunk) -> AIMessageChunk:
        merges.append(len(others))
        return merge(left, *others)

    monkeypatch.setattr(ai_messages, "add_ai_message_chunks", counted)
    reply = " ".join(f"w{number}" for number in range(100))

    def stream() -> int:
        merges.clear()
        chunks = list(GenericFakeChatModel(messages=iter([reply])).stream("Count."))
        return len(chunks)

    stream()
    by_langchain = len(merges)
    instrument()
    assert stream() > 100
    assert len(merges) == by_langchain + 1  # agl's own merge: one

    (call,) = captured_spans.get_finished_spans()
    assert attribute(call, semconv.OUTPUT_MESSAGES) == [{"role": "assistant", "content": reply}]


class TunedModel(GenericFakeChatModel):
    """A fake model with the usual sampling fields (LangChain reads them into its ``ls_params``)."""

    model_name: str = "tuned-1"
    temperature: float = 0.25
    max_tokens: int = 64


def test_the_request_parameters_and_provider_are_the_same_on_every_path(captured_spans, instrument) -> None:
    instrument()
    model = TunedModel(messages=iter(["a", "b", "c", "d"]))
    model.invoke("One.")
    model.bind(top_p=0.5, seed=7, stop="end").invoke("Two.")
    list(model.stream("Three.", temperature=0.75))
    model.invoke("Four.", max_tokens=8, stop=["x", "y"])

    calls = llm_spans(captured_spans.get_finished_spans())
    assert [call.name for call in calls] == ["chat tuned-1"] * 4
    assert {attribute(call, semconv.PROVIDER_NAME) for call in calls} == {"tunedmodel"}
    requested = [
        {key.removeprefix("gen_ai.request."): value for key, value in (call.attributes or {}).items()} for call in calls
    ]
    wanted = [
        {"temperature": 0.25, "max_tokens": 64},
        {"temperature": 0.25, "max_tokens": 64, "top_p": 0.5, "seed": 7, "stop_sequences": ("end",)},
        {"temperature": 0.75, "max_tokens": 64},
        {"temperature": 0.25, "max_tokens": 8, "stop_sequences": ("x", "y")},
    ]
    for found, expected in zip(requested, wanted, strict=True):
        assert {key: value for key, value in found.items() if key in _wrappers._PARAMETERS.values()} == expected


class ModelField(GenericFakeChatModel):
    model: str = "by-model"


class BothFields(GenericFakeChatModel):
    model: str = "by-model"
    model_name: str = "by-model-name"


class UnnamedParams(TunedModel):
    """LangSmith parameters of its own, without a model name: the attributes name the model."""

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        return {"ls_provider": "custom", "ls_model_type": "chat"}


@pytest.mark.parametrize(
    ("model_class", "name"),
    [
        (GenericFakeChatModel, FAKE_MODEL),
        (TunedModel, "tuned-1"),
        (ModelField, "by-model"),
        (BothFields, "by-model"),
        (UnnamedParams, "tuned-1"),
    ],
)
def test_the_model_is_named_as_before_on_every_path(captured_spans, instrument, model_class, name) -> None:
    """LangChain's name (``ls_model_name``), else ``model_name``, else ``model``, else ``_llm_type``."""
    instrument()
    model = model_class(messages=iter(["a", "b"]))
    model.invoke("One.")
    list(model.stream("Two."))
    assert [call.name for call in llm_spans(captured_spans.get_finished_spans())] == [f"chat {name}"] * 2


async def test_an_async_stream_and_an_async_call_each_give_one_span(captured_spans, instrument) -> None:
    instrument()
    model = GenericFakeChatModel(messages=iter(["a b", "c"]))
    streamed = [chunk.content async for chunk in model.astream("First.")]
    answered = await model.ainvoke("Second.")
    assert "".join(streamed) == "a b" and answered.content == "c"
    calls = llm_spans(captured_spans.get_finished_spans())
    assert [attribute(call, semconv.OUTPUT_MESSAGES)[0]["content"] for call in calls] == ["a b", "c"]


def test_a_chain_and_a_retriever_get_their_spans(captured_spans, instrument) -> None:
    class Shelf(BaseRetriever):
        def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
            return [Document(page_content=f"about {query}", metadata={"page": 3})]

    instrument()
    documents = Shelf().invoke("otters")
    prompt = ChatPromptTemplate.from_messages([("user", "Say {word}.")])
    chain = prompt | GenericFakeChatModel(messages=iter(["hi"]))
    assert chain.invoke({"word": "hi"}, config={"run_name": "greeter"}).content == "hi"
    assert documents[0].page_content == "about otters"

    spans = captured_spans.get_finished_spans()
    assert tree(spans) == [("retrieve Shelf", None), ("chain greeter", None), (f"chat {FAKE_MODEL}", "chain greeter")]
    retrieve = spans[0] if spans[0].name == "retrieve Shelf" else spans[1]
    assert attribute(retrieve, semconv.OPERATION_INPUT) == "otters"
    assert json.loads(attribute(retrieve, semconv.OPERATION_OUTPUT)) == [
        {"page_content": "about otters", "metadata": {"page": 3}}
    ]
    (call,) = llm_spans(spans)
    assert attribute(call, semconv.INPUT_MESSAGES) == [{"role": "user", "content": "Say hi."}]


async def test_a_graph_run_is_named_by_its_run_name_on_every_path(captured_spans, instrument) -> None:
    """``config["run_name"]`` names the run, as LangChain's callbacks name it (the call's config over
    the graph's own); the agents keep the graph's name, and a subgraph its own."""

    async def astream(graph: Any, config: Any) -> list[Any]:
        return [chunk async for chunk in graph.astream({"messages": QUESTION}, config)]

    instrument()
    runs = {
        "invoke": lambda graph, config: graph.invoke({"messages": QUESTION}, config),
        "stream": lambda graph, config: list(graph.stream({"messages": QUESTION}, config=config)),
        "ainvoke": lambda graph, config: graph.ainvoke({"messages": QUESTION}, config=config),
        "astream": astream,
        "with_config": lambda graph, config: graph.with_config(config).invoke({"messages": QUESTION}),
    }
    workflow = "invoke_workflow calculator"
    renamed = [
        (
            name.replace(workflow, "invoke_workflow weekly sums"),
            parent and parent.replace(workflow, "invoke_workflow weekly sums"),
        )
        for name, parent in CALCULATOR_TREE
    ]
    for name, run in runs.items():
        captured_spans.clear()
        done = run(react_graph(tool_model()), {"run_name": "weekly sums"})
        if name.startswith("a"):
            await done
        spans = captured_spans.get_finished_spans()
        assert tree(spans) == renamed, name
        assert [attribute(call, semconv.AGENT_NAME) for call in llm_spans(spans)] == ["calculator"] * 2, name


def test_a_subgraph_run_from_a_named_run_keeps_its_graph_name(captured_spans, instrument) -> None:
    inner = react_graph(tool_model(), name="inner")

    def delegate(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": inner.invoke(state, config)["messages"][-1:]}

    outer = StateGraph(MessagesState)
    outer.add_node("delegate", delegate)
    outer.add_edge(START, "delegate")
    instrument()
    outer.compile(name="outer").invoke({"messages": QUESTION}, {"run_name": "monday"})

    assert tree(captured_spans.get_finished_spans())[:3] == [
        ("invoke_workflow monday", None),
        ("invoke_agent delegate", "invoke_workflow monday"),
        ("invoke_workflow inner", "invoke_agent delegate"),
    ]


def test_errors_reach_the_caller_unchanged_and_are_recorded(captured_spans, instrument) -> None:
    class Broken(BaseChatModel):
        @property
        def _llm_type(self) -> str:
            return "broken"

        def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
            raise LookupError("no model here")

    @tool
    def fail(x: int) -> int:
        """Always fails."""
        raise ArithmeticError("bad sum")

    instrument()
    with pytest.raises(LookupError, match="no model here"):
        Broken().invoke("hi")
    with pytest.raises(ArithmeticError, match="bad sum"):
        fail.invoke({"x": 1})
    call, executed = sorted(captured_spans.get_finished_spans(), key=lambda s: s.start_time)
    assert (call.name, executed.name) == ("chat broken", "execute_tool fail")
    for span in (call, executed):
        assert span.status.status_code is StatusCode.ERROR and span.events[0].name == "exception"


def test_recording_failures_never_reach_the_program(captured_spans, instrument, monkeypatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("recording is broken")

    instrument()
    monkeypatch.setattr(_wrappers, "_openai_messages", broken)
    monkeypatch.setattr(_wrappers, "_json", broken)
    monkeypatch.setattr(_wrappers, "_node_agent", broken)
    result = react_graph(tool_model()).invoke({"messages": QUESTION})
    assert result["messages"][-1].content == "42"
    names = [name for name, _ in tree(captured_spans.get_finished_spans())]
    assert names.count(f"chat {FAKE_MODEL}") == 2 and "invoke_workflow calculator" in names


PATCHED = [
    (CallbackManager, "on_chat_model_start"),
    (AsyncCallbackManager, "on_chat_model_start"),
    (BaseChatModel, "_generate_with_cache"),
    (BaseChatModel, "_agenerate_with_cache"),
    (BaseChatModel, "stream"),
    (BaseChatModel, "astream"),
    (BaseTool, "run"),
    (BaseTool, "arun"),
    (BaseRetriever, "invoke"),
    (BaseRetriever, "ainvoke"),
    (RunnableSequence, "invoke"),
    (RunnableSequence, "ainvoke"),
    (RunnableSequence, "transform"),
    (RunnableSequence, "atransform"),
    (RunnableSequence, "batch"),
    (RunnableSequence, "abatch"),
]


def test_instrument_twice_is_a_no_op_and_uninstrument_restores_every_original(captured_spans, instrument) -> None:
    from langgraph.pregel import _runner, main

    targets = [*PATCHED, *[(main.Pregel, name) for name in ("invoke", "ainvoke", "stream", "astream")]]
    targets += [(_runner, "run_with_retry"), (_runner, "arun_with_retry")]
    originals = [owner.__dict__[name] for owner, name in targets]
    instrumentor = instrument()
    wrapped = [owner.__dict__[name] for owner, name in targets]
    assert all(
        isinstance(w, wrapt.FunctionWrapper) and w.__wrapped__ is o for w, o in zip(wrapped, originals, strict=True)
    )
    instrument()
    assert [owner.__dict__[name] for owner, name in targets] == wrapped  # no second layer
    GenericFakeChatModel(messages=iter(["x"])).invoke("hi")
    assert len(captured_spans.get_finished_spans()) == 1

    instrumentor.uninstrument()
    assert all(owner.__dict__[name] is original for (owner, name), original in zip(targets, originals, strict=True))
    GenericFakeChatModel(messages=iter(["x"])).invoke("hi")
    assert len(captured_spans.get_finished_spans()) == 1


LAZY = """
import sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from agl.instrument.langchain import LangChainInstrumentor

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
LangChainInstrumentor().instrument(tracer_provider=provider)
assert not [m for m in sys.modules if m.startswith(("langchain", "langgraph"))], "instrument() imported langchain"
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
GenericFakeChatModel(messages=iter(["hello"])).invoke("hi")
print([span.name for span in exporter.get_finished_spans()])
"""


def test_instrument_before_import_patches_when_langchain_is_imported() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGL_"))}
    done = subprocess.run([sys.executable, "-c", LAZY], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"['chat {FAKE_MODEL}']"


def test_a_prebuilt_agent_is_named_after_its_graph(captured_spans, instrument) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from langgraph.prebuilt import create_react_agent

        agent = create_react_agent(tool_model(), [add], name="mathematician")
    instrument()
    assert agent.invoke({"messages": [HumanMessage("What is 17 + 25?")]})["messages"][-1].content == "42"
    spans = captured_spans.get_finished_spans()
    assert [attribute(call, semconv.AGENT_NAME) for call in llm_spans(spans)] == ["mathematician"] * 2
    assert [name for name, _ in tree(spans)].count("invoke_agent mathematician") == 2


def test_concurrent_graph_runs_in_threads_stay_apart(captured_spans, instrument) -> None:
    from concurrent.futures import ThreadPoolExecutor

    instrument()

    def run(index: int) -> str:
        with rollout_context(f"ro-{index}", f"at-{index}"):
            model = GenericFakeChatModel(messages=iter([f"answer {index}"]))
            graph = StateGraph(MessagesState)
            graph.add_node("solo", lambda state: {"messages": [model.invoke(state["messages"])]})
            graph.add_edge(START, "solo")
            return graph.compile(name=f"run-{index}").invoke({"messages": [HumanMessage("hi")]})["messages"][-1].content

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(run, range(8)))
    assert answers == [f"answer {i}" for i in range(8)]
    for call in llm_spans(captured_spans.get_finished_spans()):
        index = attribute(call, semconv.ROLLOUT_ID).removeprefix("ro-")
        assert attribute(call, semconv.OUTPUT_MESSAGES)[0]["content"] == f"answer {index}"
