"""CrewAI crews run offline on a scripted `BaseLLM`: the exact span tree, what each span holds,
and the triplets cut from it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from crewai import Agent, Crew, Task
from crewai.tools import tool
from opentelemetry.trace import StatusCode

from agl.core.adapters import spans_to_triplets
from agl.core.tracing import semconv
from agl.core.tracing.context import rollout_context
from agl.core.tracing.emitters import emit_reward
from agl.core.types import Span


@tool("add")
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def one_tool_crew(kit: Any, *replies: str) -> tuple[Crew, Any]:
    llm = kit.LLM(model="scripted-model", script=list(replies))
    agent = Agent(role="Calculator", goal="Add numbers", backstory="You add.", llm=llm, tools=[add])
    task = Task(description="What is 17 + 25?", expected_output="The sum", agent=agent)
    return Crew(agents=[agent], tasks=[task], name="adder"), llm


def messages(span: Any, key: str) -> Any:
    return json.loads(span.attributes[key])


def test_a_one_tool_crew_gives_the_exact_span_tree(captured_spans, instrument, kit) -> None:
    instrument()
    crew, llm = one_tool_crew(kit, kit.tool_call("add", '{"a": 17, "b": 25}'), kit.final("42"))
    with rollout_context("ro-crew", "at-crew"):
        output = crew.kickoff()
        emit_reward(1.0)
    assert output.raw == "42"  # the crew's own result, untouched

    spans = kit.ordered(captured_spans.get_finished_spans())
    assert kit.tree(spans) == [
        ("invoke_workflow adder", None),
        ("task What is 17 + 25?", "invoke_workflow adder"),
        ("invoke_agent Calculator", "task What is 17 + 25?"),
        ("chat scripted-model", "invoke_agent Calculator"),
        ("execute_tool add", "invoke_agent Calculator"),
        ("chat scripted-model", "invoke_agent Calculator"),
        ("agl.reward", None),
    ]
    crew_span, task_span, agent_span, first, tool_span, second, reward = spans
    assert all(span.attributes[semconv.ROLLOUT_ID] == "ro-crew" for span in spans)
    assert crew_span.attributes[semconv.OPERATION_NAME] == "invoke_workflow"
    assert crew_span.attributes["crewai.crew.output"] == "42"
    assert task_span.attributes["crewai.task.description"] == "What is 17 + 25?"
    assert task_span.attributes["crewai.task.agent"] == "Calculator"
    assert task_span.attributes["crewai.task.output"] == "42"
    assert agent_span.attributes[semconv.OPERATION_NAME] == "invoke_agent"
    assert agent_span.attributes[semconv.AGENT_NAME] == agent_span.attributes[semconv.GEN_AI_AGENT_NAME] == "Calculator"

    # Each model call: the messages the model saw (as CrewAI passed them), its reply, its agent.
    for span, seen, reply in zip(
        (first, second), llm.seen, (kit.tool_call("add", '{"a": 17, "b": 25}'), "42"), strict=True
    ):
        assert span.attributes[semconv.LLM_CALL] is True
        assert span.attributes[semconv.AGENT_NAME] == "Calculator"
        assert span.attributes[semconv.REQUEST_MODEL] == "scripted-model"
        assert semconv.PROVIDER_NAME not in span.attributes  # a custom model never said which provider it is
        assert messages(span, semconv.INPUT_MESSAGES) == seen
        (answer,) = messages(span, semconv.OUTPUT_MESSAGES)
        assert answer["role"] == "assistant" and reply in answer["content"]
    assert messages(first, semconv.INPUT_MESSAGES)[0]["content"].startswith("You are Calculator.")
    assert len(llm.seen[1]) > len(llm.seen[0])  # the second call saw the tool's observation
    assert "Observation: 42" in json.dumps(messages(second, semconv.INPUT_MESSAGES))

    assert tool_span.attributes[semconv.OPERATION_NAME] == "execute_tool"
    assert tool_span.attributes[semconv.TOOL_NAME] == "add"
    assert json.loads(tool_span.attributes[semconv.TOOL_CALL_ARGUMENTS]) == {"a": 17, "b": 25}
    assert tool_span.attributes[semconv.TOOL_CALL_RESULT] == "42"
    assert reward.attributes[semconv.REWARD] == 1.0

    stored = [Span.from_otel(s, rollout_id="ro-crew", attempt_id="at-crew", sequence_id=i) for i, s in enumerate(spans)]
    triplets = spans_to_triplets(stored)
    assert [t.prompt for t in triplets] == llm.seen and [t.reward for t in triplets] == [None, 1.0]


def test_agent_match_keeps_only_one_agents_calls(captured_spans, instrument, kit) -> None:
    instrument()
    research_llm = kit.LLM(model="research-model", script=[kit.tool_call("add", '{"a": 1, "b": 2}'), kit.final("3")])
    writer_llm = kit.LLM(model="writer-model", script=[kit.final("One plus two is three.")])
    researcher = Agent(role="Researcher", goal="Find facts", backstory="Curious.", llm=research_llm, tools=[add])
    writer = Agent(role="Writer", goal="Write", backstory="Clear.", llm=writer_llm)
    crew = Crew(
        agents=[researcher, writer],
        tasks=[
            Task(description="Compute 1 + 2.", expected_output="A number", agent=researcher),
            Task(description="Write a sentence about it.", expected_output="A sentence", agent=writer),
        ],
    )
    with rollout_context("ro-two", "at-two"):
        assert crew.kickoff().raw == "One plus two is three."
        emit_reward(0.5)

    spans = kit.ordered(captured_spans.get_finished_spans())
    assert [name for name, _ in kit.tree(spans)] == [
        "invoke_workflow crew",
        "task Compute 1 + 2.",
        "invoke_agent Researcher",
        "chat research-model",
        "execute_tool add",
        "chat research-model",
        "task Write a sentence about it.",
        "invoke_agent Writer",
        "chat writer-model",
        "agl.reward",
    ]
    calls = [span for span in spans if span.attributes.get(semconv.LLM_CALL)]
    assert [span.attributes[semconv.AGENT_NAME] for span in calls] == ["Researcher", "Researcher", "Writer"]
    stored = [Span.from_otel(s, rollout_id="ro-two", attempt_id="at-two", sequence_id=i) for i, s in enumerate(spans)]
    assert len(spans_to_triplets(stored)) == 3
    (only,) = spans_to_triplets(stored, agent_match="^Writer$")
    assert only.prompt == writer_llm.seen[0] and only.prompt[0]["content"].startswith("You are Writer.")
    assert only.response == [{"role": "assistant", "content": kit.final("One plus two is three.")}]
    assert only.reward == 0.5
    assert spans_to_triplets(stored, agent_match="^Research$") == []


def test_async_kickoff_and_a_failing_model_are_recorded(captured_spans, instrument, kit) -> None:
    instrument()
    crew, _ = one_tool_crew(kit)  # an empty script: the model raises at the first call
    with pytest.raises(Exception, match="no more replies"):
        asyncio.run(crew.akickoff())
    spans = kit.ordered(captured_spans.get_finished_spans())
    names = [name for name, _ in kit.tree(spans)]
    assert names[:4] == [
        "invoke_workflow adder",
        "task What is 17 + 25?",
        "invoke_agent Calculator",
        "chat scripted-model",
    ]
    assert kit.tree(spans)[3][1] == "invoke_agent Calculator"
    failed = spans[3]
    assert failed.status.status_code is StatusCode.ERROR and "no more replies" in failed.status.description
    assert semconv.INPUT_MESSAGES in failed.attributes and semconv.OUTPUT_MESSAGES not in failed.attributes
    assert spans[0].status.status_code is StatusCode.ERROR


def test_a_model_called_directly_and_a_tool_run_directly_are_traced(captured_spans, instrument, kit) -> None:
    instrument()
    llm = kit.LLM(model="direct", script=["hi"], temperature=0.25, stop=["\nEnd"])
    assert llm.call("hello") == "hi"
    assert add.run(a=2, b=3) == 5
    call, tool_span = kit.ordered(captured_spans.get_finished_spans())
    assert (call.name, tool_span.name) == ("chat direct", "execute_tool add")
    assert messages(call, semconv.INPUT_MESSAGES) == [{"role": "user", "content": "hello"}]
    assert call.attributes["gen_ai.request.temperature"] == 0.25
    assert list(call.attributes["gen_ai.request.stop_sequences"]) == ["\nEnd"]
    assert semconv.AGENT_NAME not in call.attributes
    assert json.loads(tool_span.attributes[semconv.TOOL_CALL_ARGUMENTS]) == {"a": 2, "b": 3}
    assert tool_span.attributes[semconv.TOOL_CALL_RESULT] == "5"
