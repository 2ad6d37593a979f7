"""A chain (``a | b``) gives one span tree however it is run (invoke, stream, batch, sync or async),
and a LangGraph node retried under a ``RetryPolicy`` gives a span per attempt."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler, CallbackManager
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel, ParrotFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.types import RetryPolicy
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from agl.core.tracing import semconv

PROMPT = ChatPromptTemplate.from_messages([("user", "Say {word}.")])


def tree(spans: Sequence[ReadableSpan]) -> list[tuple[str, str | None]]:
    """(name, parent's name) for each span, in start order (agl's sequence ids)."""
    names = {span.context.span_id: span.name for span in spans}
    ordered = sorted(spans, key=lambda span: (span.attributes or {})[semconv.SEQUENCE_ID])
    return [(span.name, names.get(span.parent.span_id) if span.parent else None) for span in ordered]


def parrot_chain() -> Any:
    """``prompt | model``, the model repeating its prompt (so each input's reply is known in any order)."""
    return PROMPT | ParrotFakeChatModel()


def chat_name(spans: Sequence[ReadableSpan]) -> str:
    return next(span.name for span in spans if (span.attributes or {}).get(semconv.LLM_CALL))


async def run_chain(how: str, chain: Any, word: str, config: dict[str, Any]) -> Any:
    given = {"word": word}
    if how == "invoke":
        return chain.invoke(given, config)
    if how == "ainvoke":
        return await chain.ainvoke(given, config)
    if how == "stream":
        return list(chain.stream(given, config))
    if how == "astream":
        return [chunk async for chunk in chain.astream(given, config)]
    if how == "batch":
        return chain.batch([given], config)
    return await chain.abatch([given], config)


@pytest.mark.parametrize("how", ["invoke", "ainvoke", "stream", "astream", "batch", "abatch"])
async def test_a_chain_gives_the_same_tree_however_it_is_run(captured_spans, instrument, how) -> None:
    instrument()
    result = await run_chain(how, parrot_chain(), "hi", {"run_name": "greeter"})
    assert result  # the program's own result is untouched

    spans = captured_spans.get_finished_spans()
    assert tree(spans) == [("chain greeter", None), (chat_name(spans), "chain greeter")]
    (chain,) = [span for span in spans if span.name == "chain greeter"]
    assert chain.attributes[semconv.OPERATION_NAME] == "chain"


@pytest.mark.parametrize("how", ["batch", "abatch"])
async def test_each_input_of_a_batch_gets_its_chain_span_over_its_own_steps(captured_spans, instrument, how) -> None:
    instrument()
    chain = parrot_chain()
    inputs = [{"word": word} for word in ("one", "two", "three")]
    configs = [{"run_name": f"greet {word}"} for word in ("one", "two", "three")]
    outputs = chain.batch(inputs, configs) if how == "batch" else await chain.abatch(inputs, configs)
    assert [output.content for output in outputs] == ["Say one.", "Say two.", "Say three."]

    spans = captured_spans.get_finished_spans()
    names = {span.context.span_id: span.name for span in spans}
    calls = [span for span in spans if (span.attributes or {}).get(semconv.LLM_CALL)]
    parents = {
        json.loads(span.attributes[semconv.INPUT_MESSAGES])[0]["content"]: names[span.parent.span_id] for span in calls
    }
    assert parents == {"Say one.": "chain greet one", "Say two.": "chain greet two", "Say three.": "chain greet three"}
    chains = [span for span in spans if span.name.startswith("chain ")]
    assert len(chains) == 3 and all(span.parent is None for span in chains)


def test_a_batch_input_that_fails_fails_only_its_own_span(captured_spans, instrument) -> None:
    def refuse(word: str) -> str:
        if word == "no":
            raise ValueError("refused")
        return word

    instrument()
    chain = RunnableLambda(refuse) | RunnableLambda(str.upper)
    outputs = chain.batch(["yes", "no"], [{"run_name": "yes"}, {"run_name": "no"}], return_exceptions=True)
    assert outputs[0] == "YES" and isinstance(outputs[1], ValueError)
    with pytest.raises(ValueError, match="refused"):
        chain.batch(["no"], {"run_name": "raised"})

    status = {span.name: span.status.status_code for span in captured_spans.get_finished_spans()}
    assert status == {"chain yes": StatusCode.UNSET, "chain no": StatusCode.ERROR, "chain raised": StatusCode.ERROR}


def test_a_chain_stream_closed_midway_ends_its_span_and_a_failing_one_records_the_error(
    captured_spans, instrument
) -> None:
    instrument()
    chain = PROMPT | GenericFakeChatModel(messages=iter(["a b c d"]))
    stream = chain.stream({"word": "hi"}, {"run_name": "greeter"})
    assert next(stream).content == "a"
    stream.close()
    spans = captured_spans.get_finished_spans()
    assert tree(spans) == [("chain greeter", None), (chat_name(spans), "chain greeter")]

    def broken(chunks: Any) -> Any:
        yield from chunks
        raise LookupError("cut off")

    captured_spans.clear()
    failing = PROMPT | ParrotFakeChatModel() | RunnableLambda(broken)
    with pytest.raises(LookupError, match="cut off"):
        list(failing.stream({"word": "hi"}, {"run_name": "failing"}))
    (chain,) = [span for span in captured_spans.get_finished_spans() if span.name == "chain failing"]
    assert chain.status.status_code is StatusCode.ERROR and chain.events[0].name == "exception"


async def test_a_chain_astream_closed_midway_ends_its_span(captured_spans, instrument) -> None:
    """The chain's span ends with ``aclose``; LangChain's own generators inside (the model's stream)
    are left to the event loop to close, as without agl."""
    instrument()
    chain = PROMPT | GenericFakeChatModel(messages=iter(["a b c d"]))
    stream = chain.astream({"word": "hi"}, {"run_name": "greeter"})
    assert (await anext(stream)).content == "a"
    await stream.aclose()
    (chain_span,) = [span for span in captured_spans.get_finished_spans() if span.name == "chain greeter"]
    assert chain_span.status.status_code is StatusCode.UNSET


# --- LangGraph retries ----------------------------------------------------------------------

NO_WAIT = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False, retry_on=ValueError)


def flaky_writer_graph(failures: int, *, asynchronous: bool = False) -> Any:
    """``writer`` asks its model for a draft, and rejects the first ``failures`` drafts by raising."""
    model = GenericFakeChatModel(messages=iter([AIMessage(f"draft {n}") for n in range(1, 5)]))
    drafts: list[str] = []

    def judge(reply: Any) -> dict[str, Any]:
        drafts.append(reply.content)
        if len(drafts) <= failures:
            raise ValueError(f"{reply.content} rejected")
        return {"messages": [reply]}

    def writer(state: MessagesState) -> dict[str, Any]:
        return judge(model.invoke([HumanMessage("Write.")]))

    async def awriter(state: MessagesState) -> dict[str, Any]:
        return judge(await model.ainvoke([HumanMessage("Write.")]))

    graph = StateGraph(MessagesState)
    graph.add_node("writer", awriter if asynchronous else writer, retry_policy=NO_WAIT)
    graph.add_edge(START, "writer")
    return graph.compile(name="essay")


def attempts_and_their_calls(spans: Sequence[ReadableSpan]) -> list[tuple[int, StatusCode, list[str]]]:
    """Each agent span's attempt number and status, with the replies of the model calls under it."""
    calls = [span for span in spans if (span.attributes or {}).get(semconv.LLM_CALL)]
    agents = sorted((span for span in spans if span.name == "invoke_agent writer"), key=lambda s: s.start_time)
    return [
        (
            agent.attributes["langgraph.node.attempt"],
            agent.status.status_code,
            [
                json.loads(call.attributes[semconv.OUTPUT_MESSAGES])
                for call in calls
                if call.parent is not None and call.parent.span_id == agent.context.span_id
            ],
        )
        for agent in agents
    ]


def reply(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize("how", ["invoke", "ainvoke", "astream"])
async def test_each_attempt_of_a_retried_node_is_its_own_agent_span(captured_spans, instrument, how) -> None:
    instrument()
    graph = flaky_writer_graph(failures=1, asynchronous=how != "invoke")
    given = {"messages": [HumanMessage("An essay, please.")]}
    if how == "invoke":
        result = graph.invoke(given)
    elif how == "ainvoke":
        result = await graph.ainvoke(given)
    else:
        result = [chunk async for chunk in graph.astream(given, stream_mode="values")][-1]
    assert result["messages"][-1].content == "draft 2"

    spans = captured_spans.get_finished_spans()
    assert attempts_and_their_calls(spans) == [
        (1, StatusCode.ERROR, [reply("draft 1")]),
        (2, StatusCode.UNSET, [reply("draft 2")]),
    ]
    workflow = next(span for span in spans if span.name == "invoke_workflow essay")
    agents = [span for span in spans if span.name == "invoke_agent writer"]
    assert all(agent.parent.span_id == workflow.context.span_id for agent in agents)
    calls = [span for span in spans if (span.attributes or {}).get(semconv.LLM_CALL)]
    assert {call.attributes[semconv.AGENT_NAME] for call in calls} == {"writer"}


def test_a_node_whose_every_attempt_fails_fails_every_span(captured_spans, instrument) -> None:
    instrument()
    with pytest.raises(ValueError, match="draft 3 rejected"):
        flaky_writer_graph(failures=3).invoke({"messages": [HumanMessage("An essay, please.")]})
    assert attempts_and_their_calls(captured_spans.get_finished_spans()) == [
        (1, StatusCode.ERROR, [reply("draft 1")]),
        (2, StatusCode.ERROR, [reply("draft 2")]),
        (3, StatusCode.ERROR, [reply("draft 3")]),
    ]


def test_a_batch_of_a_batch_pairs_each_input_with_its_own_spans(captured_spans, instrument) -> None:
    """A chain nested in a batched chain (a configured one is a step, not flattened) is batched too."""
    instrument()
    outer = RunnableLambda(lambda given: given) | parrot_chain().with_config(run_name="inner")
    outer.batch([{"word": "one"}, {"word": "two"}], [{"run_name": "outer one"}, {"run_name": "outer two"}])

    spans = captured_spans.get_finished_spans()
    by_id = {span.context.span_id: span for span in spans}
    calls = [span for span in spans if (span.attributes or {}).get(semconv.LLM_CALL)]
    lineage = {}
    for call in calls:
        inner = by_id[call.parent.span_id]
        lineage[json.loads(call.attributes[semconv.INPUT_MESSAGES])[0]["content"]] = (
            inner.name,
            by_id[inner.parent.span_id].name,
        )
    assert lineage == {"Say one.": ("chain inner", "chain outer one"), "Say two.": ("chain inner", "chain outer two")}


def test_a_batch_with_the_wrong_number_of_configs_gets_langchains_error_and_no_warning(
    captured_spans, instrument, caplog
) -> None:
    instrument()
    with pytest.raises(ValueError, match="same length as inputs"):
        parrot_chain().batch([{"word": "one"}], [{}, {}])
    assert not [record for record in caplog.records if record.name == "agl.instrument.langchain"]
    assert not captured_spans.get_finished_spans()


@tool
def shout(word: str) -> str:
    """Shout a word."""
    return word.upper()


def say_and_shout(word: str) -> str:
    """A step that calls a model, a tool and a chain of its own, each once."""
    said = ParrotFakeChatModel().invoke(f"Say {word}.").content
    chained = parrot_chain().with_config(run_name="echo").invoke({"word": word}).content
    return f"{said} {shout.invoke({'word': word})} {chained}"


@pytest.mark.parametrize("how", ["batch", "abatch"])
async def test_work_nested_inside_a_batched_step_is_under_its_own_inputs_span(captured_spans, instrument, how) -> None:
    """A lambda step's own model and tool calls, and a chain it runs, sit under the span of the input
    the lambda ran for (not under the batch's caller); the chain's steps stay under the chain."""
    chain = RunnableLambda(say_and_shout) | RunnableLambda(str.strip)
    inputs, configs = ["one", "two"], [{"run_name": "greet one"}, {"run_name": "greet two"}]
    instrument()
    outputs = chain.batch(inputs, configs) if how == "batch" else await chain.abatch(inputs, configs)
    assert outputs == ["Say one. ONE Say one.", "Say two. TWO Say two."]

    spans = captured_spans.get_finished_spans()
    by_id = {span.context.span_id: span for span in spans}
    chat = chat_name(spans)
    each_input = [
        ("chain greet {}", None),
        (chat, "chain greet {}"),
        ("execute_tool shout", "chain greet {}"),
        ("chain echo", "chain greet {}"),
        (chat, "chain echo"),
    ]
    assert sorted(tree(spans), key=str) == sorted(
        ((name.format(word), parent and parent.format(word)) for word in inputs for name, parent in each_input), key=str
    )
    for span in spans:  # each under its own input's span: the word it was given is that input's
        root = span
        while root.parent is not None:
            root = by_id[root.parent.span_id]
        given = span.attributes.get(semconv.TOOL_CALL_ARGUMENTS) or span.attributes.get(semconv.INPUT_MESSAGES)
        assert given is None or root.name.split()[-1] in given


class ChatStarts(BaseCallbackHandler):
    def __init__(self) -> None:
        self.started = 0

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.started += 1


@pytest.mark.parametrize("shared", ["handlers", "manager"])
def test_a_batch_given_its_callbacks_finds_nested_work_and_leaves_the_callbacks_working(
    captured_spans, instrument, shared
) -> None:
    """The batch's one config for every input, its callbacks a list or a manager (shared by the inputs)."""
    starts = ChatStarts()
    callbacks: Any = [starts] if shared == "handlers" else CallbackManager([starts], inheritable_handlers=[starts])
    chain = RunnableLambda(lambda word: ParrotFakeChatModel().invoke(f"Say {word}.").content) | RunnableLambda(str)
    instrument()
    assert chain.batch(["one", "two"], {"callbacks": callbacks, "run_name": "greet"}) == ["Say one.", "Say two."]
    assert starts.started == 2

    spans = captured_spans.get_finished_spans()
    assert sorted(tree(spans), key=str) == sorted(
        [("chain greet", None), (chat_name(spans), "chain greet")] * 2, key=str
    )
