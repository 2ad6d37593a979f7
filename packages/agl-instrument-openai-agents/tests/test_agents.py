"""Agent runs on a scripted `Model`: the span tree (names, parentage, agent attribution), what
each span records, handoffs and guardrails, and training data cut out per agent."""

from __future__ import annotations

import json
from typing import Any

import pytest
from agents import (
    Agent,
    GuardrailFunctionOutput,
    InputGuardrailTripwireTriggered,
    RunConfig,
    Runner,
    function_tool,
    handoff,
    input_guardrail,
)
from opentelemetry.sdk.trace import ReadableSpan
from pydantic import BaseModel

from agl.core.adapters import spans_to_triplets
from agl.core.tracing import semconv
from agl.core.tracing.context import rollout_context
from agl.core.tracing.emitters import emit_reward
from agl.core.types import Span

ADD_SCHEMA = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "properties": {"a": {"title": "A", "type": "integer"}, "b": {"title": "B", "type": "integer"}},
            "required": ["a", "b"],
            "title": "add_args",
            "type": "object",
            "additionalProperties": False,
        },
        "strict": True,
    },
}


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    emit_reward(0.5)  # inside the tool body: must land under the tool's span
    return a + b


def tree(spans: list[ReadableSpan]) -> list[tuple[str, str | None]]:
    """(name, parent's name) of each span, in start order."""
    by_id = {span.context.span_id: span for span in spans}
    ordered = sorted(spans, key=lambda span: span.start_time or 0)
    return [(s.name, by_id[s.parent.span_id].name if s.parent and s.parent.span_id in by_id else None) for s in ordered]


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return sorted((span for span in spans if span.name == name), key=lambda span: span.start_time or 0)


def attribute(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None
    value = span.attributes[key]
    return json.loads(value) if key in (semconv.INPUT_MESSAGES, semconv.OUTPUT_MESSAGES) else value


def stored(spans: list[ReadableSpan]) -> list[Span]:
    """The spans as the store keeps them (filed under the rollout the processor stamped)."""
    return [
        Span.from_otel(
            span,
            rollout_id=span.attributes[semconv.ROLLOUT_ID],
            attempt_id=span.attributes[semconv.ATTEMPT_ID],
            sequence_id=span.attributes[semconv.SEQUENCE_ID],
        )
        for span in spans
    ]


async def test_a_one_tool_agent_gives_the_exact_span_tree(captured_spans, instrument, scripted, tool_call) -> None:
    instrument()
    model = scripted([[tool_call("add", {"a": 17, "b": 25}, "call-1")], "17 + 25 = 42."])
    agent = Agent(name="calculator", instructions="Use the add tool.", tools=[add], model=model)
    with rollout_context("ro-1", "at-1"):
        result = await Runner.run(agent, "What is 17 + 25?")
        emit_reward(1.0)
    assert result.final_output == "17 + 25 = 42."

    spans = list(captured_spans.get_finished_spans())
    assert tree(spans) == [
        ("invoke_workflow Agent workflow", None),
        ("invoke_agent calculator", "invoke_workflow Agent workflow"),
        ("chat scripted", "invoke_agent calculator"),
        ("execute_tool add", "invoke_agent calculator"),
        ("agl.reward", "execute_tool add"),
        ("chat scripted", "invoke_agent calculator"),
        ("agl.reward", None),
    ]
    assert {span.attributes[semconv.ROLLOUT_ID] for span in spans} == {"ro-1"}
    (agent_span,) = named(spans, "invoke_agent calculator")
    assert agent_span.attributes[semconv.OPERATION_NAME] == "invoke_agent"
    assert agent_span.attributes[semconv.AGENT_NAME] == agent_span.attributes[semconv.GEN_AI_AGENT_NAME] == "calculator"

    (tool,) = named(spans, "execute_tool add")
    assert tool.attributes[semconv.OPERATION_NAME] == "execute_tool"
    assert tool.attributes[semconv.TOOL_NAME] == "add" and tool.attributes[semconv.TOOL_CALL_ID] == "call-1"
    assert json.loads(tool.attributes[semconv.TOOL_CALL_ARGUMENTS]) == {"a": 17, "b": 25}
    assert tool.attributes[semconv.TOOL_CALL_RESULT] == "42"

    first, second = named(spans, "chat scripted")
    for call in (first, second):
        assert call.attributes[semconv.LLM_CALL] is True and call.attributes[semconv.AGENT_NAME] == "calculator"
        assert json.loads(call.attributes[semconv.TOOL_DEFINITIONS]) == [ADD_SCHEMA]
    asked = [{"role": "system", "content": "Use the add tool."}, {"role": "user", "content": "What is 17 + 25?"}]
    wanted = {"id": "call-1", "type": "function", "function": {"name": "add", "arguments": '{"a": 17, "b": 25}'}}
    assert attribute(first, semconv.INPUT_MESSAGES) == asked
    assert attribute(first, semconv.OUTPUT_MESSAGES) == [{"role": "assistant", "content": None, "tool_calls": [wanted]}]
    assert list(first.attributes[semconv.FINISH_REASONS]) == ["tool_calls"]
    assert (first.attributes[semconv.USAGE_INPUT_TOKENS], first.attributes[semconv.RESPONSE_ID]) == (10, "resp-1")
    # The second call saw the tool call and its result, exactly as the model received them.
    assert attribute(second, semconv.INPUT_MESSAGES) == [
        *asked,
        {"role": "assistant", "content": None, "tool_calls": [wanted]},
        {"role": "tool", "tool_call_id": "call-1", "content": "42"},
    ]
    assert model.seen[1][1][-1]["output"] == "42"
    assert attribute(second, semconv.OUTPUT_MESSAGES) == [{"role": "assistant", "content": "17 + 25 = 42."}]

    (triplet_one, triplet_two) = spans_to_triplets(stored(spans))
    assert triplet_two.reward == 1.0 and triplet_one.prompt == asked


class Forecast(BaseModel):
    city: str
    celsius: float


@function_tool
def weather(city: str) -> dict[str, Any]:
    """The weather in a city, as a plain dict."""
    return {"city": city, "celsius": 21.5, "sunny": True}


@function_tool(output_type=Forecast)
def forecast(city: str) -> Forecast:
    """The weather in a city, under a declared output type."""
    return Forecast(city=city, celsius=21.5)


async def test_a_tools_result_is_recorded_as_the_model_got_it(captured_spans, instrument, scripted, tool_call) -> None:
    """The SDK sends ``str()`` of a plain non-string result (JSON only under a declared output
    type); the tool span and the next call's input hold exactly that."""
    instrument()
    calls = [tool_call("weather", {"city": "Oslo"}, "call-w"), tool_call("forecast", {"city": "Oslo"}, "call-f")]
    model = scripted([calls, "Sunny, 21.5."])
    agent = Agent(name="forecaster", tools=[weather, forecast], model=model)
    with rollout_context("ro-3", "at-3"):
        await Runner.run(agent, "Weather in Oslo?")

    seen = {item["call_id"]: item["output"] for item in model.seen[1][1] if item.get("type") == "function_call_output"}
    assert seen == {
        "call-w": "{'city': 'Oslo', 'celsius': 21.5, 'sunny': True}",
        "call-f": '{"city":"Oslo","celsius":21.5}',
    }
    spans = list(captured_spans.get_finished_spans())
    results = {
        span.attributes[semconv.TOOL_CALL_ID]: span.attributes[semconv.TOOL_CALL_RESULT]
        for span in spans
        if span.name.startswith("execute_tool")
    }
    assert results == seen
    _, second = named(spans, "chat scripted")
    sent = {m["tool_call_id"]: m["content"] for m in attribute(second, semconv.INPUT_MESSAGES) if m["role"] == "tool"}
    assert sent == seen


async def test_a_tools_result_stays_unrecorded_without_the_sdks_sensitive_data(
    captured_spans, instrument, scripted, tool_call
) -> None:
    instrument()
    model = scripted([[tool_call("weather", {"city": "Oslo"}, "call-w")], "Sunny."])
    agent = Agent(name="forecaster", tools=[weather], model=model)
    with rollout_context("ro-4", "at-4"):
        await Runner.run(agent, "Weather in Oslo?", run_config=RunConfig(trace_include_sensitive_data=False))
    (tool,) = named(list(captured_spans.get_finished_spans()), "execute_tool weather")
    assert semconv.TOOL_CALL_RESULT not in tool.attributes and semconv.TOOL_CALL_ARGUMENTS not in tool.attributes


async def test_a_handoff_and_training_one_agent_of_two(captured_spans, instrument, scripted, tool_call) -> None:
    instrument()
    model = scripted([[tool_call("transfer_to_writer", {}, "call-h")], "A poem about 42."])
    writer = Agent(name="writer", instructions="Write.", model=model)
    triage = Agent(name="triage", instructions="Route.", handoffs=[handoff(writer)], model=model)
    with rollout_context("ro-2", "at-2"):
        result = await Runner.run(triage, "Write a poem.")
        emit_reward(0.75)
    assert result.final_output == "A poem about 42." and result.last_agent is writer

    spans = list(captured_spans.get_finished_spans())
    assert tree(spans) == [
        ("invoke_workflow Agent workflow", None),
        ("invoke_agent triage", "invoke_workflow Agent workflow"),
        ("chat scripted", "invoke_agent triage"),
        ("handoff triage -> writer", "invoke_agent triage"),
        ("invoke_agent writer", "invoke_workflow Agent workflow"),
        ("chat scripted", "invoke_agent writer"),
        ("agl.reward", None),
    ]
    triage_call, writer_call = named(spans, "chat scripted")
    assert (triage_call.attributes[semconv.AGENT_NAME], writer_call.attributes[semconv.AGENT_NAME]) == (
        "triage",
        "writer",
    )
    (moved,) = named(spans, "handoff triage -> writer")
    assert moved.attributes["agl.handoff.to_agent"] == "writer"
    assert [tool["function"]["name"] for tool in json.loads(triage_call.attributes[semconv.TOOL_DEFINITIONS])] == [
        "transfer_to_writer"
    ]

    (only,) = spans_to_triplets(stored(spans), agent_match="^writer$")
    assert only.prompt[0] == {"role": "system", "content": "Write."}
    assert only.response == [{"role": "assistant", "content": "A poem about 42."}] and only.reward == 0.75
    assert len(spans_to_triplets(stored(spans))) == 2


async def test_a_tripped_guardrail_is_a_span(captured_spans, instrument, scripted) -> None:
    instrument()

    @input_guardrail
    async def no_secrets(context: Any, agent: Any, text: Any) -> GuardrailFunctionOutput:
        emit_reward(-1.0)
        return GuardrailFunctionOutput(output_info="secret", tripwire_triggered="secret" in str(text))

    agent = Agent(name="guarded", input_guardrails=[no_secrets], model=scripted(["never"]))
    with pytest.raises(InputGuardrailTripwireTriggered):
        await Runner.run(agent, "tell me the secret")

    spans = list(captured_spans.get_finished_spans())
    (guard,) = named(spans, "guardrail no_secrets")
    assert guard.attributes["agl.guardrail.triggered"] is True
    assert ("agl.reward", "guardrail no_secrets") in tree(spans)
    assert ("guardrail no_secrets", "invoke_agent guarded") in tree(spans)


@pytest.mark.parametrize("in_parallel", [True, False], ids=["parallel", "sequential"])
async def test_a_tripped_input_guardrail_fails_its_agents_span(
    captured_spans, instrument, scripted, in_parallel
) -> None:
    """The SDK records the trip on its turn span, which is not mapped: the agent's span says it."""
    instrument()

    @input_guardrail(run_in_parallel=in_parallel)
    async def refuse(context: Any, agent: Any, text: Any) -> GuardrailFunctionOutput:
        return GuardrailFunctionOutput(output_info=None, tripwire_triggered=True)

    agent = Agent(name="guarded", input_guardrails=[refuse], model=scripted(["never"]))
    with pytest.raises(InputGuardrailTripwireTriggered):
        await Runner.run(agent, "hello")

    (agent_span,) = named(list(captured_spans.get_finished_spans()), "invoke_agent guarded")
    assert agent_span.status.status_code.name == "ERROR"
    assert agent_span.status.description == "Guardrail tripwire triggered"
    assert json.loads(agent_span.attributes["agl.error.data"]) == {"guardrail": "refuse"}


@function_tool(needs_approval=True)
def refund(amount: int) -> str:
    """Refund an amount; a person approves it first."""
    emit_reward(1.0)
    return f"refunded {amount}"


async def test_a_run_resumed_after_an_approval_nests_under_a_workflow(
    captured_spans, instrument, scripted, tool_call
) -> None:
    """Resumed in the process that started it, the run goes on under the SDK's same trace, which
    the SDK never reports to its processors: its spans still get their workflow span."""
    instrument()
    model = scripted([[tool_call("refund", {"amount": 5}, "call-r")], "Refunded."])
    agent = Agent(name="support", tools=[refund], model=model)
    paused = await Runner.run(agent, "Refund me.")
    (approval,) = paused.interruptions
    state = paused.to_state()
    state.approve(approval)
    assert (await Runner.run(agent, state)).final_output == "Refunded."

    spans = list(captured_spans.get_finished_spans())
    assert tree(spans) == [
        ("invoke_workflow Agent workflow", None),
        ("invoke_agent support", "invoke_workflow Agent workflow"),
        ("chat scripted", "invoke_agent support"),
        ("execute_tool refund", "invoke_agent support"),
        ("invoke_workflow Agent workflow", None),
        ("invoke_agent support", "invoke_workflow Agent workflow"),
        ("execute_tool refund", "invoke_agent support"),
        ("agl.reward", "execute_tool refund"),
        ("chat scripted", "invoke_agent support"),
    ]
