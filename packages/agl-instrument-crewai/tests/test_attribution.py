"""Which agent each tool run and model call belongs to: a tool run sits under the span of the
agent that ran it (a coworker's under the coworker's, a tool the provider runs inside a model call
under that call), and an agent's failed try that CrewAI retried is a span apart from the retry."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from crewai import Agent, Crew, PlanningConfig, Task
from crewai.llms.base_llm import BaseLLM
from crewai.tools import tool
from opentelemetry.trace import StatusCode

from agl.core.adapters import spans_to_triplets
from agl.core.tracing import semconv
from agl.core.tracing.context import rollout_context
from agl.core.types import Span

RUNS = pytest.mark.parametrize(
    "run", [lambda crew: crew.kickoff(), lambda crew: asyncio.run(crew.akickoff())], ids=["kickoff", "akickoff"]
)


@tool("add")
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@tool("async add")
async def async_add(a: int, b: int) -> int:
    """Add two numbers, asynchronously."""
    return a + b


class ScriptLLM(BaseLLM):
    """Replies from a script: an exception in it is raised instead; a native tool call marked
    ``run`` is run by the provider inside the call, given ``available_functions``."""

    script: list[Any]
    native: bool = False

    def call(
        self, messages: Any, tools: Any = None, callbacks: Any = None, available_functions: Any = None, **_: Any
    ) -> Any:
        reply = self.script.pop(0)
        if isinstance(reply, Exception):
            raise reply
        if available_functions and isinstance(reply, dict):
            return self._handle_tool_execution(
                function_name=reply["name"], function_args=reply["arguments"], available_functions=available_functions
            )
        return reply

    def supports_function_calling(self) -> bool:
        return self.native


def attributed(kit: Any, spans: list[Any]) -> list[tuple[str, str | None, str | None]]:
    """(name, parent's name, agent) of each span."""
    return [(name, parent, agent_of(span, spans)) for (name, parent), span in zip(kit.tree(spans), spans, strict=True)]


def agent_of(span: Any, spans: list[Any]) -> str | None:
    """The span's agent as the adapters find it: its own name, else its nearest named ancestor's."""
    by_id = {each.context.span_id: each for each in spans}
    while span is not None:
        if name := span.attributes.get(semconv.AGENT_NAME):
            return name
        span = by_id.get(span.parent.span_id) if span.parent else None
    return None


@RUNS
def test_a_coworkers_tool_runs_and_calls_are_the_coworkers(captured_spans, instrument, kit, run: Callable) -> None:
    instrument()
    delegation = {"task": "Add 1 and 2", "context": "Two numbers.", "coworker": "Calculator"}
    lead = Agent(
        role="Lead",
        goal="Lead",
        backstory="Leads.",
        llm=kit.LLM(
            model="lead", script=[kit.tool_call("Delegate work to coworker", json.dumps(delegation)), kit.final("3")]
        ),
        allow_delegation=True,
    )
    calculator = Agent(
        role="Calculator",
        goal="Add",
        backstory="Adds.",
        llm=kit.LLM(model="calc", script=[kit.tool_call("async add", '{"a": 1, "b": 2}'), kit.final("3")]),
        tools=[async_add],
    )
    crew = Crew(
        agents=[lead, calculator], tasks=[Task(description="Get 1 + 2.", expected_output="A number", agent=lead)]
    )
    with rollout_context("ro-delegate", "at-delegate"):
        assert run(crew).raw == "3"

    spans = kit.ordered(captured_spans.get_finished_spans())
    assert attributed(kit, spans) == [
        ("invoke_workflow crew", None, None),
        ("task Get 1 + 2.", "invoke_workflow crew", None),
        ("invoke_agent Lead", "task Get 1 + 2.", "Lead"),
        ("chat lead", "invoke_agent Lead", "Lead"),
        ("execute_tool Delegate work to coworker", "invoke_agent Lead", "Lead"),
        ("invoke_agent Calculator", "execute_tool Delegate work to coworker", "Calculator"),
        ("chat calc", "invoke_agent Calculator", "Calculator"),
        ("execute_tool async add", "invoke_agent Calculator", "Calculator"),
        ("chat calc", "invoke_agent Calculator", "Calculator"),
        ("chat lead", "invoke_agent Lead", "Lead"),
    ]
    stored = [
        Span.from_otel(s, rollout_id="ro-delegate", attempt_id="at-delegate", sequence_id=i)
        for i, s in enumerate(spans)
    ]
    assert len(spans_to_triplets(stored, agent_match="^Calculator$")) == 2


def test_a_tool_the_provider_runs_in_an_agents_planning_call_is_that_agents(captured_spans, instrument, kit) -> None:
    instrument()
    plan = {"name": "create_reasoning_plan", "arguments": {"plan": "Add them.", "ready": True}}
    llm = ScriptLLM(model="native", native=True, script=[plan, "3"])
    agent = Agent(
        role="Calculator", goal="Add", backstory="Adds.", llm=llm, tools=[add], planning_config=PlanningConfig()
    )
    crew = Crew(agents=[agent], tasks=[Task(description="Get 1 + 2.", expected_output="A number", agent=agent)])
    assert crew.kickoff().raw == "3"

    spans = kit.ordered(captured_spans.get_finished_spans())
    assert attributed(kit, spans)[2:] == [
        ("invoke_agent Calculator", "task Get 1 + 2.", "Calculator"),
        ("chat native", "invoke_agent Calculator", "Calculator"),
        ("execute_tool create_reasoning_plan", "chat native", "Calculator"),
        ("chat native", "invoke_agent Calculator", "Calculator"),
    ]


def flaky_crew(kit: Any, *script: Any) -> Crew:
    llm = ScriptLLM(model="flaky", script=list(script))
    agent = Agent(role="Calculator", goal="Add", backstory="Adds.", llm=llm, tools=[add], max_retry_limit=1)
    return Crew(agents=[agent], tasks=[Task(description="Get 1 + 2.", expected_output="A number", agent=agent)])


@RUNS
def test_a_failed_try_that_crewai_retried_is_an_agent_span_in_error_beside_the_retry(
    captured_spans, instrument, kit, run: Callable
) -> None:
    instrument()
    crew = flaky_crew(kit, kit.tool_call("add", '{"a": 1, "b": 2}'), RuntimeError("model down"), kit.final("3"))
    assert run(crew).raw == "3"

    spans = kit.ordered(captured_spans.get_finished_spans())
    assert kit.tree(spans) == [
        ("invoke_workflow crew", None),
        ("task Get 1 + 2.", "invoke_workflow crew"),
        ("invoke_agent Calculator", "task Get 1 + 2."),
        ("chat flaky", "invoke_agent Calculator"),
        ("execute_tool add", "invoke_agent Calculator"),
        ("chat flaky", "invoke_agent Calculator"),
        ("invoke_agent Calculator", "task Get 1 + 2."),
        ("chat flaky", "invoke_agent Calculator"),
    ]
    failed, retry = spans[2], spans[6]
    assert [span.parent.span_id for span in spans[3:6]] == [failed.context.span_id] * 3
    assert spans[7].parent.span_id == retry.context.span_id
    assert failed.status.status_code is StatusCode.ERROR and "model down" in failed.status.description
    assert failed.attributes["crewai.agent.attempt"] == 1 and "crewai.agent.output" not in failed.attributes
    assert failed.end_time <= retry.start_time
    assert retry.status.status_code is StatusCode.UNSET
    assert retry.attributes["crewai.agent.attempt"] == 2 and retry.attributes["crewai.agent.output"] == "3"
    assert all(span.status.status_code is StatusCode.UNSET for span in spans[:2])


def test_tries_that_all_fail_are_each_a_span_in_error_ended_once(captured_spans, instrument, kit, caplog) -> None:
    instrument()
    crew = flaky_crew(kit, RuntimeError("first"), RuntimeError("second"))
    with caplog.at_level(logging.WARNING, logger="opentelemetry"), pytest.raises(RuntimeError, match="second"):
        crew.kickoff()

    spans = kit.ordered(captured_spans.get_finished_spans())
    agents = [span for span in spans if span.name == "invoke_agent Calculator"]
    assert [(span.attributes["crewai.agent.attempt"], span.status.description) for span in agents] == [
        (1, "RuntimeError: first"),
        (2, "RuntimeError: second"),
    ]
    assert {span.parent.span_id for span in agents} == {spans[1].context.span_id}
    assert spans[1].status.status_code is StatusCode.ERROR  # the task failed with the last try
    assert not [record for record in caplog.records if "ended span" in record.getMessage()]
