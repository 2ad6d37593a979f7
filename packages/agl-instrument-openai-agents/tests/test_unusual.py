"""Unusual but legitimate runs: items the chat format has no form for, streams that end without
their reply, and SDK spans left open in a generator that another task closes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents import Agent, ModelBehaviorError, Runner, WebSearchTool, custom_span, function_tool, trace
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseFunctionWebSearch,
    ResponseIncompleteEvent,
)

from agl.core.adapters import spans_to_triplets
from agl.core.tracing import semconv
from agl.core.types import Span

SEARCH = {
    "id": "ws-1",
    "action": {"type": "search", "query": "weather"},
    "status": "completed",
    "type": "web_search_call",
}


@function_tool
def forecast(city: str) -> str:
    """Tomorrow's weather."""
    return f"sunny in {city}"


def llm_spans(captured_spans: Any) -> list[Any]:
    spans = [span for span in captured_spans.get_finished_spans() if span.attributes.get(semconv.LLM_CALL)]
    return sorted(spans, key=lambda span: span.start_time or 0)


def messages(span: Any, key: str) -> Any:
    return json.loads(span.attributes[key])


async def test_a_hosted_tool_call_keeps_the_rest_of_the_conversation(captured_spans, instrument) -> None:
    """The SDK's chat converter refuses a whole conversation holding a hosted tool's call; the
    rest is still recorded, the call kept as the item it is."""
    instrument()
    search = ResponseFunctionWebSearch.model_validate(SEARCH)
    model = ScriptedModel(
        [[search, function_call("forecast", {"city": "Paris"}, call_id="c-1")], [search, assistant_message("Sunny.")]]
    )
    agent = Agent(name="weather", instructions="Search.", tools=[forecast, WebSearchTool()], model=model)
    assert (await Runner.run(agent, "Weather in Paris?")).final_output == "Sunny."

    first, second = llm_spans(captured_spans)
    asked = {"id": "c-1", "type": "function", "function": {"name": "forecast", "arguments": '{"city":"Paris"}'}}
    first_reply = [SEARCH, {"role": "assistant", "content": None, "tool_calls": [asked]}]
    assert messages(first, semconv.OUTPUT_MESSAGES) == first_reply
    assert messages(second, semconv.INPUT_MESSAGES) == [
        {"role": "system", "content": "Search."},
        {"role": "user", "content": "Weather in Paris?"},
        *first_reply,
        {"role": "tool", "tool_call_id": "c-1", "content": "sunny in Paris"},
    ]
    assert messages(second, semconv.OUTPUT_MESSAGES) == [SEARCH, {"role": "assistant", "content": "Sunny."}]
    assert [tool["function"]["name"] for tool in messages(second, semconv.TOOL_DEFINITIONS)[:1]] == ["forecast"]


def response(status: str, **fields: Any) -> Response:
    given: dict[str, Any] = {"output": [], **fields}
    return Response(
        id="resp-1",
        created_at=0,
        model="scripted",
        object="response",
        parallel_tool_calls=False,
        tool_choice="auto",
        tools=[],
        status=status,
        **given,
    )


STARTED = ResponseCreatedEvent(response=response("in_progress"), sequence_number=0, type="response.created")
ENDINGS: dict[str, tuple[list[Any], str]] = {
    "failed": (
        [ResponseFailedEvent(response=response("failed"), sequence_number=1, type="response.failed")],
        "failed",
    ),
    "incomplete": (
        [
            ResponseIncompleteEvent(
                response=response("incomplete", incomplete_details={"reason": "max_output_tokens"}),
                sequence_number=1,
                type="response.incomplete",
            )
        ],
        "max_output_tokens",
    ),
    "an error event": (
        [ResponseErrorEvent(code="overloaded", message="try later", param=None, sequence_number=1, type="error")],
        "try later",
    ),
    "no final event": ([], "without response.completed"),
}


@pytest.mark.parametrize("ending", ENDINGS.values(), ids=ENDINGS.keys())
async def test_a_stream_that_ends_without_its_reply_is_a_failed_call(captured_spans, instrument, ending) -> None:
    """The SDK raises on these endings instead of taking the reply: the call's span says it failed,
    so it is no training data."""
    instrument()
    events, why = ending
    streamed = Runner.run_streamed(Agent(name="a", model=ScriptedModel([ModelStep.stream([STARTED, *events])])), "hi")
    with pytest.raises(ModelBehaviorError):
        async for _ in streamed.stream_events():
            pass

    (call,) = llm_spans(captured_spans)
    assert call.status.status_code.name == "ERROR" and why in str(call.status.description)
    stored = Span.from_otel(call, rollout_id="ro", attempt_id="at", sequence_id=1)
    assert spans_to_triplets([stored]) == []


async def test_a_completed_stream_is_a_successful_call(captured_spans, instrument) -> None:
    instrument()
    completed = ResponseCompletedEvent(
        response=response("completed", output=[assistant_message("hi")]), sequence_number=1, type="response.completed"
    )
    streamed = Runner.run_streamed(Agent(name="a", model=ScriptedModel([ModelStep.stream([STARTED, completed])])), "x")
    async for _ in streamed.stream_events():
        pass
    assert streamed.final_output == "hi"
    (call,) = llm_spans(captured_spans)
    assert call.status.status_code.name == "UNSET"
    assert messages(call, semconv.OUTPUT_MESSAGES) == [{"role": "assistant", "content": "hi"}]
    assert list(call.attributes[semconv.FINISH_REASONS]) == ["stop"]


async def test_sdk_spans_closed_from_another_task_end_quietly(captured_spans, instrument, caplog) -> None:
    """An async generator holding the SDK's ``with trace(...)`` is closed by another task than the
    one that ran it (as the event loop does with an abandoned one): the SDK finishes its spans and
    skips the reset it cannot do there; agl must not log errors on the user's behalf."""
    instrument()

    async def steps() -> AsyncIterator[int]:
        with trace("pipeline"), custom_span("step"):
            yield 1
            yield 2

    generator = steps()

    async def first() -> int:
        return await anext(generator)

    assert await asyncio.create_task(first()) == 1
    with caplog.at_level(logging.DEBUG):
        await generator.aclose()  # from this task, not the one the spans were opened in

    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
    assert sorted(span.name for span in captured_spans.get_finished_spans()) == ["invoke_workflow pipeline", "step"]
