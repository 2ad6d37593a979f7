"""AutoGen AgentChat with agl's instrumentor, offline on AutoGen's replay model: the exact span
tree of a tool-using agent, a two-agent team and per-agent training data."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.teams import RoundRobinGroupChat
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from agl.core.adapters import spans_to_triplets
from agl.core.tracing import emit_reward, rollout_context, semconv

from .conftest import replay, tool_call

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"description": "a", "title": "A", "type": "integer"},
                    "b": {"description": "b", "title": "B", "type": "integer"},
                },
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
    }
]


def add(a: int, b: int) -> int:
    """Add two numbers."""
    with trace.get_tracer("user-code").start_as_current_span("check"):  # a span of the tool's own
        emit_reward(1.0 if a + b == 42 else 0.0)
    return a + b


def tree(spans: list[ReadableSpan]) -> list[tuple[str, str | None]]:
    """(name, parent's name) of each span, in start order."""
    names = {span.context.span_id: span.name for span in spans}
    return [(span.name, names.get(span.parent.span_id) if span.parent else None) for span in spans]


def attribute(span: ReadableSpan, key: str) -> Any:
    value = (span.attributes or {})[key]
    return (
        json.loads(value)
        if key in (semconv.INPUT_MESSAGES, semconv.OUTPUT_MESSAGES, semconv.TOOL_DEFINITIONS)
        else value
    )


async def test_a_tool_using_agent_gives_the_exact_span_tree(traced, instrument) -> None:
    instrument()
    client = replay(tool_call("add", '{"a": 17, "b": 25}', "call-1"), "17 + 25 = 42.")
    agent = AssistantAgent(
        "calculator", model_client=client, tools=[add], reflect_on_tool_use=True, system_message="You add."
    )
    with rollout_context("ro-test", "at-test"):
        result = await agent.run(task="What is 17 + 25?")
    assert result.messages[-1].content == "17 + 25 = 42."

    spans = traced.ours()
    assert tree(spans) == [
        ("invoke_agent calculator", None),  # AutoGen's own span for run(), labelled by agl
        ("chat ReplayChatCompletionClient", "invoke_agent calculator"),
        ("execute_tool add", "invoke_agent calculator"),
        ("check", "execute_tool add"),  # opened in AutoGen's thread pool: the context crossed over
        ("agl.reward", "check"),
        ("chat ReplayChatCompletionClient", "invoke_agent calculator"),  # the reflection call
    ]
    agent_span, first, tool, _, reward, reflection = spans
    assert attribute(agent_span, semconv.AGENT_NAME) == attribute(agent_span, semconv.GEN_AI_AGENT_NAME) == "calculator"
    assert attribute(agent_span, semconv.OPERATION_NAME) == "invoke_agent"
    for call in (first, reflection):
        assert attribute(call, semconv.LLM_CALL) is True and attribute(call, semconv.AGENT_NAME) == "calculator"
    asked = [
        {"role": "system", "content": "You add."},
        {"role": "user", "content": "What is 17 + 25?", "name": "user"},
    ]
    calls = [{"id": "call-1", "type": "function", "function": {"name": "add", "arguments": '{"a": 17, "b": 25}'}}]
    assert attribute(first, semconv.INPUT_MESSAGES) == asked
    assert attribute(first, semconv.TOOL_DEFINITIONS) == TOOLS
    assert attribute(first, semconv.OUTPUT_MESSAGES) == [{"role": "assistant", "content": None, "tool_calls": calls}]
    assert attribute(first, semconv.FINISH_REASONS) == ("tool_calls",)  # OpenAI's word for it
    assert (attribute(first, semconv.USAGE_INPUT_TOKENS), attribute(first, semconv.USAGE_OUTPUT_TOKENS)) == (10, 5)
    assert attribute(reflection, semconv.INPUT_MESSAGES) == [
        *asked,
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call-1", "content": "42"},
    ]
    assert attribute(reflection, semconv.OUTPUT_MESSAGES) == [{"role": "assistant", "content": "17 + 25 = 42."}]
    assert {
        k: attribute(tool, k)
        for k in (semconv.OPERATION_NAME, semconv.TOOL_NAME, semconv.TOOL_CALL_ID, semconv.TOOL_CALL_RESULT)
    } == {
        semconv.OPERATION_NAME: "execute_tool",
        semconv.TOOL_NAME: "add",
        semconv.TOOL_CALL_ID: "call-1",
        semconv.TOOL_CALL_RESULT: "42",
    }
    assert json.loads(attribute(tool, semconv.TOOL_CALL_ARGUMENTS)) == {"a": 17, "b": 25}
    assert attribute(reward, semconv.REWARD) == 1.0

    (first_triplet, last_triplet) = spans_to_triplets(traced.stored(), merge=False)
    assert (first_triplet.reward, last_triplet.reward) == (None, 1.0)


async def test_a_failing_tool_and_a_failing_model_are_recorded_and_reach_the_caller(traced, instrument) -> None:
    instrument()

    def broken(x: int) -> int:
        """Always fails."""
        raise RuntimeError("tool broke")

    client = replay(tool_call("broken", '{"x": 1}', "call-9"))  # then no replies left: the model call raises
    agent = AssistantAgent("fragile", model_client=client, tools=[broken], reflect_on_tool_use=True)
    with rollout_context("ro-test", "at-test"):
        try:
            await agent.run(task="go")
        except ValueError as error:
            assert "No more mock responses" in str(error)
        else:
            raise AssertionError("the replay model should have run out of replies")
    spans = traced.ours()
    assert [name for name, _ in tree(spans)] == [
        "invoke_agent fragile",
        "chat ReplayChatCompletionClient",
        "execute_tool broken",
        "chat ReplayChatCompletionClient",
    ]
    tool, failed_call = spans[2], spans[3]
    assert tool.status.status_code is StatusCode.ERROR and "tool broke" in (tool.status.description or "")
    assert failed_call.status.status_code is StatusCode.ERROR
    assert attribute(failed_call, semconv.INPUT_MESSAGES)[-1]["content"] == "tool broke"  # what AutoGen tells the model


async def test_a_team_labels_each_agents_calls_and_one_agent_can_be_picked(traced, instrument) -> None:
    instrument()
    writer = AssistantAgent("writer", model_client=replay("Draft one.", "Draft two."), system_message="Write.")
    critic = AssistantAgent("critic", model_client=replay("Too short."), system_message="Criticise.")
    team = RoundRobinGroupChat([writer, critic], termination_condition=MaxMessageTermination(4), name="review")
    with rollout_context("ro-test", "at-test"):
        result = await team.run(task="Write a haiku.")
        emit_reward(0.5)
    assert [m.content for m in result.messages] == ["Write a haiku.", "Draft one.", "Too short.", "Draft two."]

    spans = traced.ours()
    by_id = {span.context.span_id: span for span in spans}

    def ancestors(span: ReadableSpan) -> list[str]:
        names = []
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            names.append(span.name)
        return names

    (workflow,) = [span for span in spans if span.name.startswith("invoke_workflow")]
    assert workflow.name == "invoke_workflow review" and workflow.parent is None
    calls = [span for span in spans if (span.attributes or {}).get(semconv.LLM_CALL)]
    assert [attribute(call, semconv.AGENT_NAME) for call in calls] == ["writer", "critic", "writer"]
    for call in calls:
        agent = attribute(call, semconv.AGENT_NAME)
        assert ancestors(call)[0] == f"invoke_agent {agent}" and "invoke_workflow review" in ancestors(call)
    agent_spans = [span for span in spans if span.name.startswith("invoke_agent")]
    assert [span.name for span in agent_spans] == ["invoke_agent writer", "invoke_agent critic", "invoke_agent writer"]
    assert all(attribute(span, semconv.AGENT_NAME) == span.name.split()[-1] for span in agent_spans)

    triplets = spans_to_triplets(traced.stored(), agent_match="^writer$", merge=False)
    assert [t.metadata["agent_name"] for t in triplets] == ["writer", "writer"]
    assert [t.response for t in triplets] == [
        [{"role": "assistant", "content": "Draft one."}],
        [{"role": "assistant", "content": "Draft two."}],
    ]
    assert triplets[-1].reward == 0.5
    second_prompt = triplets[1].prompt
    assert second_prompt[0] == {"role": "system", "content": "Write."}
    assert {"role": "user", "content": "Too short.", "name": "critic"} in second_prompt


def test_a_finished_agent_is_freed_at_once_not_left_to_the_garbage_collector(traced, instrument) -> None:
    instrument()

    async def run_one() -> weakref.ref[AssistantAgent]:
        client = replay(tool_call("add", '{"a": 17, "b": 25}', "call-1"), "42")
        agent = AssistantAgent("calculator", model_client=client, tools=[add], reflect_on_tool_use=True)
        with rollout_context("ro-test", "at-test"):
            await agent.run(task="What is 17 + 25?")
        return weakref.ref(agent)

    gc.disable()  # reference counting only: an agent held in a reference cycle would outlive its loop
    try:
        freed = asyncio.run(run_one())  # its own loop, closed on return, as a program's would be
        assert freed() is None, "the finished agent is held in a reference cycle"
    finally:
        gc.enable()
    assert [span.name for span in traced.ours()].count("chat ReplayChatCompletionClient") == 2
