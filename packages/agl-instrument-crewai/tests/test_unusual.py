"""Unusual but legitimate ways to run crews, agents and models: each still gives one span per crew
run, agent turn and tool run, holding its result, and each model call records the reply the model gave."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from crewai import LLM, Agent, Crew, Task

from agl.core.testing.chat_server import Reply, ToolCall, chat_server_app
from agl.core.testing.server import ServingThread
from agl.core.tracing import semconv


def one_agent(kit: Any, answer: str) -> Agent:
    llm = kit.LLM(model="scripted-model", script=[kit.final(answer)])
    return Agent(role="Writer", goal="Write", backstory="Clear.", llm=llm)


def drained(crew: Crew) -> Any:
    stream = crew.kickoff()
    for _ in stream:
        pass
    return stream.result


async def adrained(crew: Crew) -> Any:
    stream = await crew.akickoff()
    async for _ in stream:
        pass
    return stream.result


@pytest.mark.parametrize("run", [drained, lambda crew: asyncio.run(adrained(crew))], ids=["kickoff", "akickoff"])
def test_a_streaming_crew_is_one_crew_span_with_its_output(
    captured_spans, instrument, kit, run: Callable[[Crew], Any]
) -> None:
    instrument()
    agent = one_agent(kit, "Done.")
    task = Task(description="Write a line.", expected_output="A line", agent=agent)
    assert run(Crew(agents=[agent], tasks=[task], name="streamer", stream=True)).raw == "Done."

    spans = kit.ordered(captured_spans.get_finished_spans())
    assert kit.tree(spans) == [
        ("invoke_workflow streamer", None),
        ("task Write a line.", "invoke_workflow streamer"),
        ("invoke_agent Writer", "task Write a line."),
        ("chat scripted-model", "invoke_agent Writer"),
    ]
    assert spans[0].attributes["crewai.crew.output"] == "Done."


async def kickoff_in_a_loop(agent: Agent) -> Any:
    return await agent.kickoff("Write a line.")  # inside an event loop, kickoff returns a coroutine


@pytest.mark.parametrize(
    "run",
    [
        lambda agent: agent.kickoff_async("Write a line."),
        lambda agent: agent.akickoff("Write a line."),
        kickoff_in_a_loop,
    ],
    ids=["kickoff_async", "akickoff", "kickoff in a running loop"],
)
def test_an_agent_run_from_async_code_is_one_agent_span_over_its_calls(
    captured_spans, instrument, kit, run: Callable[[Agent], Any]
) -> None:
    instrument()
    assert asyncio.run(run(one_agent(kit, "Done."))).raw == "Done."

    spans = kit.ordered(captured_spans.get_finished_spans())
    assert kit.tree(spans) == [("invoke_agent Writer", None), ("chat scripted-model", "invoke_agent Writer")]
    agent_span, call = spans
    assert agent_span.attributes["crewai.agent.output"] == "Done."
    assert call.context.trace_id == agent_span.context.trace_id
    assert call.attributes[semconv.AGENT_NAME] == "Writer"


ADD_SCHEMA = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
    },
}


def test_a_tool_the_provider_runs_inside_the_call_is_the_recorded_reply(captured_spans, instrument, kit) -> None:
    """Given ``available_functions`` (as CrewAI's reasoning step gives them), the provider runs the
    model's tool call itself and returns the tool's result: the model still replied with a tool call."""
    instrument()
    app = chat_server_app([Reply(tool_calls=[ToolCall("add", {"a": 17, "b": 25})])])
    with ServingThread(app) as server:
        llm = LLM(model="openai/agl-toy", base_url=f"{server.url}/v1", api_key="test", max_retries=0)
        result = llm.call("What is 17 + 25?", tools=[ADD_SCHEMA], available_functions={"add": lambda a, b: a + b})
    assert result == "42"  # the tool's result, as CrewAI returns it

    call, tool_span = kit.ordered(captured_spans.get_finished_spans())
    assert kit.tree([call, tool_span]) == [("chat agl-toy", None), ("execute_tool add", "chat agl-toy")]
    (reply,) = json.loads(call.attributes[semconv.OUTPUT_MESSAGES])
    assert reply["content"] is None
    (tool_call,) = reply["tool_calls"]
    assert tool_call["function"]["name"] == "add"
    assert json.loads(tool_call["function"]["arguments"]) == {"a": 17, "b": 25}
    assert json.loads(tool_span.attributes[semconv.TOOL_CALL_ARGUMENTS]) == {"a": 17, "b": 25}
    assert tool_span.attributes[semconv.TOOL_CALL_RESULT] == "42"
