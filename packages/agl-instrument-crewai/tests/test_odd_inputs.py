"""Unusual but legitimate model replies and tool results, recorded as the model gave them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from crewai import Agent, Crew, Task
from crewai.llms.base_llm import BaseLLM
from crewai.tools import tool

from agl.core.tracing import semconv


@tool("add")
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


class ToolUseBlock:
    """Anthropic's tool call as its CrewAI provider returns it: a flat name and ``input``."""

    type = "tool_use"

    def __init__(self, call_id: str, name: str, arguments: dict[str, Any]) -> None:
        self.id, self.name, self.input = call_id, name, arguments


class NativeToolsLLM(BaseLLM):
    """A model with native function calling: replies from a script, tool calls as a provider's list."""

    script: list[Any]

    def call(self, messages: Any, tools: Any = None, *args: Any, **kwargs: Any) -> Any:
        return self.script.pop(0)

    def supports_function_calling(self) -> bool:
        return True


SHAPES = {  # the tool call list each of CrewAI's providers returns when it leaves the call to the executor
    "responses api": [{"id": "call-1", "name": "add", "arguments": '{"a": 17, "b": 25}'}],
    "bedrock": [{"toolUseId": "call-1", "name": "add", "input": {"a": 17, "b": 25}}],
    "anthropic": [ToolUseBlock("call-1", "add", {"a": 17, "b": 25})],
}


@pytest.mark.parametrize("shape", SHAPES)
def test_native_tool_calls_of_every_provider_shape_are_recorded_as_tool_calls(
    captured_spans, instrument, kit, shape: str
) -> None:
    instrument()
    llm = NativeToolsLLM(model="native-model", script=[SHAPES[shape], "42"])
    agent = Agent(role="Calculator", goal="Add numbers", backstory="You add.", llm=llm, tools=[add])
    task = Task(description="What is 17 + 25?", expected_output="The sum", agent=agent)
    assert Crew(agents=[agent], tasks=[task]).kickoff().raw == "42"

    spans = kit.ordered(captured_spans.get_finished_spans())
    first = next(span for span in spans if span.name == "chat native-model")
    (reply,) = json.loads(first.attributes[semconv.OUTPUT_MESSAGES])
    assert reply["content"] is None
    (call,) = reply["tool_calls"]
    assert (call["id"], call["function"]["name"]) == ("call-1", "add")
    assert json.loads(call["function"]["arguments"]) == {"a": 17, "b": 25}
    assert [span.name for span in spans].count("execute_tool add") == 1
