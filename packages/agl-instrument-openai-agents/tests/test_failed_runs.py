"""A run that raises reads as failed at the top: its workflow span, not only its agent's."""

from __future__ import annotations

from typing import Any

import pytest
from agents import (
    Agent,
    GuardrailFunctionOutput,
    InputGuardrailTripwireTriggered,
    MaxTurnsExceeded,
    OutputGuardrailTripwireTriggered,
    Runner,
    function_tool,
    input_guardrail,
    output_guardrail,
    trace,
)
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@input_guardrail
async def refuse_input(context: Any, agent: Any, text: Any) -> GuardrailFunctionOutput:
    return GuardrailFunctionOutput(output_info=None, tripwire_triggered=True)


@output_guardrail
async def refuse_output(context: Any, agent: Any, output: Any) -> GuardrailFunctionOutput:
    return GuardrailFunctionOutput(output_info=None, tripwire_triggered=True)


def looping() -> Agent[Any]:
    calls = [[function_call("add", {"a": 1, "b": 2}, call_id=f"c-{n}")] for n in range(3)]
    return Agent(name="a", tools=[add], model=ScriptedModel(calls))


FAILURES: dict[str, tuple[Any, type[Exception], dict[str, Any]]] = {
    "max turns": (looping, MaxTurnsExceeded, {"max_turns": 1}),
    "input guardrail": (
        lambda: Agent(name="a", input_guardrails=[refuse_input], model=ScriptedModel([[assistant_message("x")]])),
        InputGuardrailTripwireTriggered,
        {},
    ),
    "output guardrail": (
        lambda: Agent(name="a", output_guardrails=[refuse_output], model=ScriptedModel([[assistant_message("x")]])),
        OutputGuardrailTripwireTriggered,
        {},
    ),
    "model error": (
        lambda: Agent(name="a", model=ScriptedModel([ModelStep.raise_error(RuntimeError("model down"))])),
        RuntimeError,
        {},
    ),
}


def workflows(captured_spans: Any) -> list[Any]:
    return [span for span in captured_spans.get_finished_spans() if span.name.startswith("invoke_workflow")]


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
async def test_a_failed_run_fails_its_workflow_span(captured_spans, instrument, failure) -> None:
    instrument()
    agent, raised, options = failure
    with pytest.raises(raised):
        await Runner.run(agent(), "hi", **options)

    (workflow,) = workflows(captured_spans)
    assert workflow.status.status_code.name == "ERROR"
    assert str(workflow.status.description).startswith(raised.__name__)


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
async def test_a_failed_streamed_run_fails_its_workflow_span(captured_spans, instrument, failure) -> None:
    instrument()
    agent, raised, options = failure
    streamed = Runner.run_streamed(agent(), "hi", **options)
    with pytest.raises(raised):
        async for _ in streamed.stream_events():
            pass

    (workflow,) = workflows(captured_spans)
    assert workflow.status.status_code.name == "ERROR"
    assert str(workflow.status.description).startswith(raised.__name__)


async def test_a_run_inside_an_except_block_that_succeeds_is_no_failure(captured_spans, instrument) -> None:
    """The exception the caller is handling is not the run's."""
    instrument()
    try:
        raise ValueError("the caller's own, already handled")
    except ValueError:
        result = await Runner.run(Agent(name="a", model=ScriptedModel([[assistant_message("ok")]])), "hi")
    assert result.final_output == "ok"

    (workflow,) = workflows(captured_spans)
    assert workflow.status.status_code.name == "UNSET"


async def test_a_failure_caught_inside_the_users_trace_leaves_it_unfailed(captured_spans, instrument) -> None:
    instrument()
    with trace("pipeline"), pytest.raises(MaxTurnsExceeded):  # caught inside the trace
        await Runner.run(looping(), "hi", max_turns=1)

    (workflow,) = workflows(captured_spans)
    assert workflow.status.status_code.name == "UNSET"


async def test_a_failure_leaving_the_users_trace_fails_it(captured_spans, instrument) -> None:
    instrument()
    with pytest.raises(MaxTurnsExceeded), trace("pipeline"):  # raised out of the trace
        await Runner.run(looping(), "hi", max_turns=1)

    (workflow,) = workflows(captured_spans)
    assert workflow.status.status_code.name == "ERROR"


def agent_spans(captured_spans: Any) -> list[Any]:
    return [span for span in captured_spans.get_finished_spans() if span.name.startswith("invoke_agent")]


async def test_a_streamed_run_past_max_turns_says_so_on_its_workflow_span(captured_spans, instrument) -> None:
    """The same description as the run's own exception, as for a run that is not streamed."""
    instrument()
    streamed = Runner.run_streamed(looping(), "hi", max_turns=1)
    with pytest.raises(MaxTurnsExceeded) as raised:
        async for _ in streamed.stream_events():
            pass

    (workflow,) = workflows(captured_spans)
    assert workflow.status.description == f"MaxTurnsExceeded: {raised.value}"


def gave_up(data: Any) -> str:
    return "gave up"


def declined(data: Any) -> None:
    """A handler that returns nothing leaves max turns an error."""
    return None


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "not streamed"])
async def test_max_turns_turned_into_an_output_by_an_error_handler_is_no_failure(
    captured_spans, instrument, streamed
) -> None:
    """The SDK still puts "Max turns exceeded" on the agent's span; the run itself succeeded."""
    instrument()
    options: dict[str, Any] = {"max_turns": 1, "error_handlers": {"max_turns": gave_up}}
    if streamed:
        result: Any = Runner.run_streamed(looping(), "hi", **options)
        async for _ in result.stream_events():
            pass
    else:
        result = await Runner.run(looping(), "hi", **options)
    assert result.final_output == "gave up"

    (workflow,) = workflows(captured_spans)
    assert workflow.status.status_code.name == "UNSET"
    (agent,) = agent_spans(captured_spans)
    assert agent.status.description == "Max turns exceeded"


async def test_a_streamed_run_whose_max_turns_handler_declines_fails(captured_spans, instrument) -> None:
    instrument()
    streamed = Runner.run_streamed(looping(), "hi", max_turns=1, error_handlers={"max_turns": declined})
    with pytest.raises(MaxTurnsExceeded):
        async for _ in streamed.stream_events():
            pass

    (workflow,) = workflows(captured_spans)
    assert str(workflow.status.description).startswith("MaxTurnsExceeded")


async def test_a_streamed_run_within_max_turns_is_no_failure(captured_spans, instrument) -> None:
    instrument()
    script = [[function_call("add", {"a": 1, "b": 2}, call_id="c-1")], [assistant_message("3")]]
    agent = Agent(name="a", tools=[add], model=ScriptedModel(script))
    streamed = Runner.run_streamed(agent, "hi", max_turns=2)
    async for _ in streamed.stream_events():
        pass
    assert streamed.final_output == "3"

    (workflow,) = workflows(captured_spans)
    assert workflow.status.status_code.name == "UNSET"


async def test_a_streamed_run_past_max_turns_inside_the_users_trace_fails_it_as_it_leaves(
    captured_spans, instrument
) -> None:
    """The run owns no trace there: the user's ``with`` sees the exception, as for ``Runner.run``."""
    instrument()
    with pytest.raises(MaxTurnsExceeded), trace("pipeline"):
        async for _ in Runner.run_streamed(looping(), "hi", max_turns=1).stream_events():
            pass

    (workflow,) = workflows(captured_spans)
    assert str(workflow.status.description).startswith("MaxTurnsExceeded")
