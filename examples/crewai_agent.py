"""A CrewAI crew with no agl import: run it under ``opentelemetry-instrument`` and agl records
the crew, its task, agent, tool call and model calls (``agl-instrument-crewai``).

    opentelemetry-instrument python examples/crewai_agent.py

The model is a scripted ``BaseLLM`` so the example runs offline; swap in ``crewai.LLM(...)`` for a
real one. CrewAI's own telemetry is turned off below.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_DISABLE_TRACKING", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")

from crewai import Agent, Crew, Task
from crewai.llms.base_llm import BaseLLM
from crewai.tools import tool


class ScriptedLLM(BaseLLM):
    """Answers in CrewAI's text format: first a tool call, then the final answer."""

    script: list[str]

    def call(self, messages: Any, *args: Any, **kwargs: Any) -> str:
        return self.script.pop(0)

    def supports_function_calling(self) -> bool:
        return False


@tool("add")
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def main() -> None:
    llm = ScriptedLLM(
        model="scripted-model",
        script=[
            'Thought: I should add them\nAction: add\nAction Input: {"a": 17, "b": 25}',
            "Thought: I now know the final answer\nFinal Answer: 17 + 25 = 42.",
        ],
    )
    agent = Agent(role="Calculator", goal="Add numbers", backstory="You add.", llm=llm, tools=[add])
    task = Task(description="What is 17 + 25?", expected_output="The sum", agent=agent)
    print(Crew(agents=[agent], tasks=[task], name="adder").kickoff().raw)


if __name__ == "__main__":
    main()
