"""The SDK's default model, `OpenAIResponsesModel`, over the Responses API (an httpx2 mock
transport at the network boundary): one LLM span per call, under the agent that made it, with the
conversation as the model got it (instructions, parallel tool results, the history after a
handoff), streamed or not, with agl_openai underneath or not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from agents import Agent, OpenAIResponsesModel, Runner, function_tool
from openai import AsyncOpenAI

from agl.core.tracing import semconv
from agl.instrument.openai import OpenAIInstrumentor


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def call(name: str, arguments: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc-{call_id}",
        "call_id": call_id,
        "name": name,
        "arguments": json.dumps(arguments),
        "status": "completed",
    }


TEXT = {
    "type": "message",
    "id": "m-1",
    "role": "assistant",
    "status": "completed",
    "content": [{"type": "output_text", "text": "3 and 7.", "annotations": []}],
}
SCRIPT = [
    [call("add", {"a": 1, "b": 2}, "c-1"), call("add", {"a": 3, "b": 4}, "c-2")],  # two calls at once
    [call("transfer_to_writer", {}, "h-1")],
    [TEXT],
]


class ResponsesApi:
    """Answers ``POST /v1/responses`` from `SCRIPT`, as JSON or as an event stream; keeps each request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/responses"
        body = json.loads(request.content)
        self.requests.append(body)
        response = {
            "id": f"resp-{len(self.requests)}",
            "object": "response",
            "created_at": 0,
            "model": "agl-toy",
            "status": "completed",
            "output": SCRIPT[len(self.requests) - 1],
            "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }
        if not body.get("stream"):
            return httpx2.Response(200, json=response)
        events = [
            {"type": "response.created", "sequence_number": 0, "response": {**response, "status": "in_progress"}},
            {"type": "response.completed", "sequence_number": 1, "response": response},
        ]
        text = "".join(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n" for event in events)
        return httpx2.Response(200, content=text.encode(), headers={"content-type": "text/event-stream"})


@pytest.fixture(params=["agl_openai off", "agl_openai on"])
def wire_layer(request: pytest.FixtureRequest, captured_spans: Any) -> Iterator[bool]:
    on = request.param == "agl_openai on"
    instrumentor = OpenAIInstrumentor()
    if on:
        instrumentor.instrument()
    yield on
    if on:
        instrumentor.uninstrument()


async def run(api: ResponsesApi, streamed: bool) -> str:
    client = AsyncOpenAI(
        base_url="http://responses.test/v1",
        api_key="test",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(api)),
    )
    model = OpenAIResponsesModel(model="agl-toy", openai_client=client)
    writer = Agent(name="writer", instructions="Write it up.", model=model)
    adder = Agent(name="adder", instructions="Add.", tools=[add], handoffs=[writer], model=model)
    if streamed:
        result = Runner.run_streamed(adder, "1 + 2 and 3 + 4?")
        async for _ in result.stream_events():
            pass
    else:
        result = await Runner.run(adder, "1 + 2 and 3 + 4?")
    await client.close()
    return str(result.final_output)


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
async def test_the_default_model_gives_one_span_per_call_with_what_the_model_got(
    captured_spans, instrument, wire_layer, streamed
) -> None:
    instrument()
    api = ResponsesApi()
    assert await run(api, streamed) == "3 and 7."

    spans = list(captured_spans.get_finished_spans())
    by_id = {span.context.span_id: span for span in spans}
    calls = sorted((span for span in spans if span.attributes.get(semconv.LLM_CALL)), key=lambda s: s.start_time)
    assert len(calls) == len(api.requests) == 3
    assert [by_id[span.parent.span_id].name for span in calls] == ["invoke_agent adder"] * 2 + ["invoke_agent writer"]
    assert [span.attributes[semconv.AGENT_NAME] for span in calls] == ["adder", "adder", "writer"]
    for span, request in zip(calls, api.requests, strict=True):
        messages = json.loads(span.attributes[semconv.INPUT_MESSAGES])
        assert messages[0] == {"role": "system", "content": request["instructions"]}
    # the same chat-shaped record whichever layer wrote it (the wire layer converts the Responses items)
    tool, handoff = json.loads(calls[0].attributes[semconv.TOOL_DEFINITIONS])
    assert handoff["type"] == "function" and handoff["function"]["name"] == "transfer_to_writer"
    assert tool == {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": add.params_json_schema,
            "strict": add.strict_json_schema,
        },
    }
    assert json.loads(calls[2].attributes[semconv.INPUT_MESSAGES]) == [
        {"role": "system", "content": "Write it up."},
        {"role": "user", "content": "1 + 2 and 3 + 4?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c-1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}},
                {"id": "c-2", "type": "function", "function": {"name": "add", "arguments": '{"a": 3, "b": 4}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c-1", "content": "3"},
        {"role": "tool", "tool_call_id": "c-2", "content": "7"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "h-1", "type": "function", "function": {"name": "transfer_to_writer", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "h-1", "content": '{"assistant": "writer"}'},
    ]
    assert json.loads(calls[2].attributes[semconv.OUTPUT_MESSAGES]) == [{"role": "assistant", "content": "3 and 7."}]
