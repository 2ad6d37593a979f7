"""The SDK's tracing switches: what agl records when the user turns the SDK's tracing off, or
replaces its processors (to stop the upload to OpenAI) with their own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner, function_tool, set_trace_processors, set_tracing_disabled
from agents.testing import ScriptedModel, assistant_message, function_call
from agents.tracing import TracingProcessor, get_trace_provider

from agl.core.tracing import semconv


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def handing_off() -> Agent[Any]:
    """``a`` calls ``add``, then hands off to ``b``, which answers: three model calls."""
    b = Agent(name="b", model=ScriptedModel([[assistant_message("3")]]))
    steps = [
        [function_call("add", {"a": 1, "b": 2}, call_id="c-1")],
        [function_call("transfer_to_b", {}, call_id="h-1")],
    ]
    return Agent(name="a", tools=[add], handoffs=[b], model=ScriptedModel(steps))


def names_and_agents(captured_spans: Any) -> list[tuple[str, str | None]]:
    spans = sorted(captured_spans.get_finished_spans(), key=lambda span: span.start_time or 0)
    return [(span.name, span.attributes.get(semconv.AGENT_NAME)) for span in spans]


@pytest.fixture
def sdk_processors() -> Iterator[None]:
    """Whatever a test does to the SDK's processors and its global switch is undone after it."""
    multi = get_trace_provider()._multi_processor
    before = multi._processors
    yield
    set_tracing_disabled(False)
    multi._processors = before


@pytest.mark.parametrize("switch", ["run config", "global"])
async def test_with_the_sdks_tracing_off_only_model_calls_are_recorded_each_under_its_agent(
    captured_spans, instrument, sdk_processors, switch
) -> None:
    """The SDK then makes no spans, so there are no agent, tool or handoff spans to map; the model
    calls keep their spans, with the agent that made each (after the handoff too)."""
    instrument()
    if switch == "global":
        set_tracing_disabled(True)
    run_config = RunConfig(tracing_disabled=True) if switch == "run config" else None
    assert (await Runner.run(handing_off(), "1 + 2?", run_config=run_config)).final_output == "3"

    assert names_and_agents(captured_spans) == [
        ("chat ScriptedModel", "a"),
        ("chat ScriptedModel", "a"),
        ("chat ScriptedModel", "b"),
    ]


async def test_replacing_the_sdks_processors_keeps_agls_spans_and_feeds_the_users(
    captured_spans, instrument, sdk_processors
) -> None:
    """``set_trace_processors([mine])`` drops the SDK's exporter (and agl's processor with it):
    agl still records the whole run, and the user's processor gets every SDK span."""

    class Mine(TracingProcessor):
        def __init__(self) -> None:
            self.ended: list[str] = []

        def on_trace_start(self, trace: Any) -> None: ...

        def on_trace_end(self, trace: Any) -> None:
            self.ended.append("trace")

        def on_span_start(self, span: Any) -> None: ...

        def on_span_end(self, span: Any) -> None:
            self.ended.append(span.span_data.type)

        def shutdown(self) -> None: ...

        def force_flush(self) -> None: ...

    instrument()
    mine = Mine()
    set_trace_processors([mine])
    assert (await Runner.run(handing_off(), "1 + 2?")).final_output == "3"

    assert names_and_agents(captured_spans) == [
        ("invoke_workflow Agent workflow", None),
        ("invoke_agent a", "a"),
        ("chat ScriptedModel", "a"),
        ("execute_tool add", "a"),
        ("chat ScriptedModel", "a"),
        ("handoff a -> b", "a"),
        ("invoke_agent b", "b"),
        ("chat ScriptedModel", "b"),
    ]
    assert mine.ended.count("trace") == 1
    assert {"agent", "function", "handoff", "turn"} <= set(mine.ended)
