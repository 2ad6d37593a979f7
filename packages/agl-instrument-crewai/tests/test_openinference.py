"""Beside OpenInference's CrewAI instrumentor (entry point ``crewai``): both trace, and there is
still exactly one canonical LLM span (``agl.llm.call``) per model call."""

from __future__ import annotations

from collections import Counter

from crewai import Agent, Crew, Task
from crewai.tools import tool
from openinference.instrumentation.crewai import CrewAIInstrumentor as OpenInferenceCrewAI
from opentelemetry import trace

from agl.core.tracing import semconv


@tool("add")
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def test_one_canonical_llm_span_per_call_beside_openinference(captured_spans, instrument, kit) -> None:
    instrument()
    other = OpenInferenceCrewAI()
    other.instrument(tracer_provider=trace.get_tracer_provider())
    try:
        llm = kit.LLM(model="scripted-model", script=[kit.tool_call("add", '{"a": 1, "b": 2}'), kit.final("3")])
        agent = Agent(role="Calculator", goal="Add", backstory="You add.", llm=llm, tools=[add])
        task = Task(description="What is 1 + 2?", expected_output="The sum", agent=agent)
        assert Crew(agents=[agent], tasks=[task], name="adder").kickoff().raw == "3"
    finally:
        other.uninstrument()

    spans = kit.ordered(captured_spans.get_finished_spans())
    scopes = Counter(span.instrumentation_scope.name for span in spans)
    assert scopes["agl.instrument.crewai"] == 6 and len(scopes) == 2  # OpenInference's spans are there too
    calls = [span for span in spans if span.attributes.get(semconv.LLM_CALL)]
    assert len(calls) == len(llm.seen) == 2
    assert all(
        span.name == "chat scripted-model" and span.attributes[semconv.AGENT_NAME] == "Calculator" for span in calls
    )
    assert Counter(name for name, _ in kit.tree(spans) if name.startswith(("invoke_", "execute_tool"))) == {
        "invoke_workflow adder": 1,
        "invoke_agent Calculator": 1,
        "execute_tool add": 1,
    }
