"""The openai instrumentor against the real client: the scripted chat server over real HTTP on
127.0.0.1, and an httpx2 mock transport where a server would be more work (the responses API,
broken answers)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest
import wrapt
from openai.resources.chat.completions import AsyncCompletions, Completions
from openai.resources.responses import AsyncResponses, Responses
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from agl.core.testing import ranks
from agl.core.testing.chat_server import IM_END, Reply, ToolCall, chat_prompt_token_ids, encode, token_logprob
from agl.core.tracing import llm_call, open_llm_span, semconv
from agl.instrument.openai import CAPTURE_TOKEN_IDS_ENV, _wrappers

MODEL = "agl-toy"
ASK = [{"role": "user", "content": "What is 2 + 3?"}]
TOOLS: list[Any] = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
PATCHED = [
    (cls, method)
    for cls in (Completions, AsyncCompletions, Responses, AsyncResponses)
    for method in ("create", "parse")
]
TOKEN_ATTRIBUTES = (semconv.PROMPT_TOKEN_IDS, semconv.RESPONSE_TOKEN_IDS, semconv.RESPONSE_LOGPROBS)


def the_span(spans: list[ReadableSpan]) -> ReadableSpan:
    (span,) = spans
    assert span.name == f"chat {MODEL}" and span.attributes is not None
    assert span.attributes[semconv.LLM_CALL] is True and span.kind is SpanKind.CLIENT
    return span


def attribute(span: ReadableSpan, key: str) -> Any:
    """An attribute as Python values: JSON documents decoded, sequences as lists."""
    assert span.attributes is not None
    value = span.attributes[key]
    return (
        json.loads(value)
        if key in (semconv.INPUT_MESSAGES, semconv.OUTPUT_MESSAGES, semconv.TOOL_DEFINITIONS)
        else (list(value) if isinstance(value, tuple) else value)
    )


def mock_client(handler: Callable[[httpx2.Request], httpx2.Response]) -> openai.OpenAI:
    transport = httpx2.MockTransport(handler)
    return openai.OpenAI(
        base_url="http://model.test/v1", api_key="test", max_retries=0, http_client=httpx2.Client(transport=transport)
    )


# --- chat completions over the scripted server ----------------------------------------------


def test_a_chat_call_records_messages_parameters_usage_and_exact_token_ids(traced, instrument, serve) -> None:
    instrument(capture_token_ids=True)
    served = serve(["Hello, wörld!"])
    completion = served.client.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0.5, max_completion_tokens=64, seed=7, stop="\n"
    )
    assert completion.choices[0].message.content == "Hello, wörld!"  # the caller gets the real response
    (request,), (sent,) = served.log.requests, served.log.replies
    assert request["return_token_ids"] is True and request["logprobs"] is True
    span = the_span(traced.spans())
    assert attribute(span, semconv.INPUT_MESSAGES) == request["messages"] == ASK
    assert attribute(span, semconv.OUTPUT_MESSAGES) == [{"role": "assistant", "content": "Hello, wörld!"}]
    assert attribute(span, semconv.PROMPT_TOKEN_IDS) == sent.prompt_token_ids == chat_prompt_token_ids(ASK)
    assert attribute(span, semconv.RESPONSE_TOKEN_IDS) == sent.token_ids == [*encode("Hello, wörld!"), IM_END]
    assert attribute(span, semconv.RESPONSE_LOGPROBS) == [token_logprob(t) for t in sent.token_ids]
    assert {key: attribute(span, key) for key in span.attributes or {} if key.startswith("gen_ai.request.")} == {
        "gen_ai.request.model": MODEL,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.seed": 7,
        "gen_ai.request.stop_sequences": ["\n"],
    }
    assert attribute(span, semconv.RESPONSE_ID) == completion.id and attribute(span, semconv.RESPONSE_MODEL) == MODEL
    assert attribute(span, semconv.FINISH_REASONS) == ["stop"]
    assert attribute(span, semconv.USAGE_INPUT_TOKENS) == len(sent.prompt_token_ids)
    assert attribute(span, semconv.USAGE_OUTPUT_TOKENS) == len(sent.token_ids)
    assert attribute(span, semconv.PROVIDER_NAME) == "openai" and attribute(span, semconv.ROLLOUT_ID) == "ro-test"
    assert span.status.status_code is StatusCode.UNSET


def test_without_token_ids_from_the_server_none_are_recorded(traced, instrument, serve) -> None:
    instrument()
    served = serve(["plain"])
    served.client.chat.completions.create(model=MODEL, messages=ASK)
    assert "return_token_ids" not in served.log.requests[0] and "logprobs" not in served.log.requests[0]
    span = the_span(traced.spans())
    assert not set(TOKEN_ATTRIBUTES) & set(span.attributes or {})
    assert attribute(span, semconv.OUTPUT_MESSAGES) == [{"role": "assistant", "content": "plain"}]


def test_the_capture_setting_keeps_what_the_caller_chose(traced, instrument, serve, monkeypatch) -> None:
    monkeypatch.setenv(CAPTURE_TOKEN_IDS_ENV, "1")
    instrument()
    served = serve(["ok"])
    served.client.chat.completions.create(model=MODEL, messages=ASK, logprobs=False, extra_body={"top_k": 3})
    request = served.log.requests[0]
    assert (request["return_token_ids"], request["top_k"], request["logprobs"]) == (True, 3, False)
    span = the_span(traced.spans())
    assert attribute(span, "gen_ai.request.top_k") == 3
    assert attribute(span, semconv.RESPONSE_TOKEN_IDS) == served.log.replies[0].token_ids
    assert semconv.RESPONSE_LOGPROBS not in (span.attributes or {})  # the caller said no logprobs


def test_token_ids_are_not_asked_of_services_that_refuse_the_field(traced, instrument) -> None:
    """OpenAI's API and Azure's answer vLLM's ``return_token_ids`` with a 400: an agent that also
    calls one of them (a judge, say) must keep working with the capture on."""
    instrument(capture_token_ids=True)
    sent: list[dict[str, Any]] = []

    def record(request: httpx2.Request) -> httpx2.Response:
        sent.append(json.loads(request.content))
        return httpx2.Response(200, json=chat_completion("Hi."))

    azure = {"azure_endpoint": "https://agl.openai.azure.com", "api_version": "2024-10-21"}
    with httpx2.Client(transport=httpx2.MockTransport(record)) as http:
        openai_api = openai.OpenAI(base_url="https://api.openai.com/v1", api_key="k", http_client=http)
        for client in (openai_api, openai.AzureOpenAI(**azure, api_key="k", http_client=http)):
            client.chat.completions.create(model=MODEL, messages=ASK)  # type: ignore[arg-type]
    assert sent == [{"model": MODEL, "messages": ASK}] * 2


def test_streams_are_put_together_from_content_tool_call_deltas_and_token_ids(traced, instrument, serve) -> None:
    instrument(capture_token_ids=True)
    calls = [ToolCall("add", {"a": 2, "b": 3}, id="call-a"), ToolCall("add", {"a": 10, "b": 20}, id="call-b")]
    served = serve([Reply("Adding.", calls), "Plain stream."])
    stream = served.client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, stream=True)
    assert isinstance(stream, openai.Stream)  # still what the caller expects
    assert not traced.spans()  # open until the stream is consumed
    chunks = list(stream)
    with served.client.chat.completions.stream(model=MODEL, messages=ASK) as helper:  # the helper calls create
        final = helper.get_final_completion()
    assert final.choices[0].message.content == "Plain stream." and len(chunks) > 10
    tool_span, helper_span = traced.spans()
    assert attribute(tool_span, semconv.OUTPUT_MESSAGES) == [
        {
            "role": "assistant",
            "content": "Adding.",
            "tool_calls": [
                {"id": "call-a", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}},
                {"id": "call-b", "type": "function", "function": {"name": "add", "arguments": '{"a": 10, "b": 20}'}},
            ],
        }
    ]
    assert attribute(tool_span, semconv.TOOL_DEFINITIONS) == TOOLS
    assert attribute(tool_span, semconv.FINISH_REASONS) == ["tool_calls"]
    for span, sent in zip((tool_span, helper_span), served.log.replies, strict=True):
        assert attribute(span, semconv.PROMPT_TOKEN_IDS) == sent.prompt_token_ids
        assert attribute(span, semconv.RESPONSE_TOKEN_IDS) == sent.token_ids
        assert attribute(span, semconv.RESPONSE_LOGPROBS) == sent.logprobs
    assert attribute(helper_span, semconv.OUTPUT_MESSAGES) == [{"role": "assistant", "content": "Plain stream."}]


def test_a_stream_closed_early_or_dropped_still_ends_its_span(traced, instrument, serve) -> None:
    instrument()
    served = serve(["abcdef", "ghijkl"])
    stream = served.client.chat.completions.create(model=MODEL, messages=ASK, stream=True)
    next(stream), next(stream)  # the role chunk, then "a"
    stream.close()
    dropped = served.client.chat.completions.create(model=MODEL, messages=ASK, stream=True)
    next(dropped)
    del dropped
    gc.collect()
    closed, collected = traced.spans()
    assert attribute(closed, semconv.OUTPUT_MESSAGES) == [{"role": "assistant", "content": "a"}]
    assert attribute(collected, semconv.OUTPUT_MESSAGES) == [
        {"role": "assistant", "content": None}
    ]  # only the role came
    assert collected.end_time is not None


def test_a_stream_left_early_ends_its_span_when_its_context_manager_exits(traced, instrument, serve) -> None:
    """openai's ``.stream()`` helper and ``with_streaming_response`` close the HTTP response, not
    the stream: the span still ends there, not when the objects are collected much later."""
    instrument()
    served = serve(["abcdef", "ghijkl", "mnopqr"])
    with served.client.chat.completions.stream(model=MODEL, messages=ASK) as helper:
        for event in helper:
            if event.type == "content.delta" and event.delta:
                break
    assert [attribute(span, semconv.OUTPUT_MESSAGES) for span in traced.spans()] == [
        [{"role": "assistant", "content": "a"}]
    ]
    create = served.client.chat.completions.with_streaming_response.create
    with create(model=MODEL, messages=ASK, stream=True) as response:
        lines = list(response.iter_lines())  # read, never parsed
    with create(model=MODEL, messages=ASK, stream=True) as parsed_response:
        stream = parsed_response.parse()
        next(stream), next(stream)
    read, parsed = traced.spans()[1:]
    assert semconv.OUTPUT_MESSAGES not in (read.attributes or {}) and lines
    assert attribute(parsed, semconv.OUTPUT_MESSAGES) == [{"role": "assistant", "content": "m"}]
    assert (helper, response, stream) and all(span.end_time for span in traced.spans())  # all still referenced


async def test_an_async_stream_left_early_ends_its_span_when_its_context_manager_exits(
    traced, instrument, serve
) -> None:
    instrument()
    served = serve(["abcdef", "ghijkl"])
    async with openai.AsyncOpenAI(base_url=served.url, api_key="test", max_retries=0) as client:
        async with client.chat.completions.stream(model=MODEL, messages=ASK) as helper:
            async for event in helper:
                if event.type == "content.delta" and event.delta:
                    break
        create = client.chat.completions.with_streaming_response.create
        async with create(model=MODEL, messages=ASK, stream=True) as response:
            stream = await response.parse()
            await stream.__anext__(), await stream.__anext__()
        spans = traced.spans()
    assert (helper, response, stream) and len(spans) == 2  # both ended while still referenced
    assert [attribute(span, semconv.OUTPUT_MESSAGES) for span in spans] == [
        [{"role": "assistant", "content": "a"}],
        [{"role": "assistant", "content": "g"}],
    ]


async def test_async_calls_and_streams(traced, instrument, serve) -> None:
    instrument(capture_token_ids=True)
    served = serve(["whole", Reply(tool_calls=[ToolCall("add", {"a": 1, "b": 2})])])
    async with openai.AsyncOpenAI(base_url=served.url, api_key="test", max_retries=0) as client:
        whole = await client.chat.completions.create(model=MODEL, messages=ASK)
        stream = await client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, stream=True)
        assert isinstance(stream, openai.AsyncStream)
        async with stream:
            chunks = [chunk async for chunk in stream]
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert whole.choices[0].message.content == "whole" and [
        d.function.name for d in deltas if d.function and d.function.name
    ] == ["add"]
    whole_span, stream_span = traced.spans()
    assert attribute(whole_span, semconv.RESPONSE_TOKEN_IDS) == served.log.replies[0].token_ids
    assert attribute(stream_span, semconv.RESPONSE_TOKEN_IDS) == served.log.replies[1].token_ids
    (message,) = attribute(stream_span, semconv.OUTPUT_MESSAGES)
    assert message["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 1, "b": 2}'}


def test_a_tool_round_trip_records_what_was_sent_each_time(traced, instrument, serve) -> None:
    instrument(capture_token_ids=True)
    served = serve([Reply(tool_calls=[ToolCall("add", {"a": 2, "b": 3})]), "5"])
    with traced.provider.get_tracer("agent").start_as_current_span("agent"):
        first = served.client.chat.completions.create(model=MODEL, messages=iter(ASK), tools=TOOLS)  # one-shot
        call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
        tool_result = {"role": "tool", "tool_call_id": call.id, "content": "5"}
        served.client.chat.completions.create(
            model=MODEL, messages=[*ASK, first.choices[0].message, tool_result], tools=TOOLS
        )
    *spans, agent = traced.spans()
    assert [span.parent.span_id for span in spans if span.parent] == [agent.context.span_id] * 2
    assert ranks(attribute(span, semconv.SEQUENCE_ID) for span in (agent, *spans)) == [1, 2, 3]  # numbered at start
    assert [attribute(span, semconv.INPUT_MESSAGES) for span in spans] == [r["messages"] for r in served.log.requests]
    assert served.log.requests[0]["messages"] == ASK  # recording did not consume the iterable
    assert attribute(spans[1], semconv.INPUT_MESSAGES)[1]["tool_calls"][0]["id"] == call.id
    continued = attribute(spans[0], semconv.PROMPT_TOKEN_IDS) + attribute(spans[0], semconv.RESPONSE_TOKEN_IDS)
    assert attribute(spans[1], semconv.PROMPT_TOKEN_IDS)[: len(continued)] == continued


def test_content_parts_given_as_a_generator_are_recorded_and_still_sent(traced, instrument, serve) -> None:
    """The client takes any iterable of parts; recording must neither consume nor stringify it."""
    instrument()
    served = serve(["seen"])
    parts = [{"type": "text", "text": "What is "}, {"type": "text", "text": "2 + 3?"}]
    served.client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": (part for part in parts)}])
    sent = [{"role": "user", "content": parts}]
    assert served.log.requests[0]["messages"] == sent
    assert attribute(the_span(traced.spans()), semconv.INPUT_MESSAGES) == sent


def test_an_outer_llm_span_is_joined_and_enriched_not_duplicated(traced, instrument, serve) -> None:
    instrument(capture_token_ids=True)
    served = serve(["joined"])
    framework_view = [{"role": "user", "content": "as the framework saw it"}]
    with llm_call(MODEL, provider="framework", tracer=traced.provider.get_tracer("framework")) as outer:
        outer.record_request(framework_view)
        served.client.chat.completions.create(model=MODEL, messages=ASK)
    span = the_span(traced.spans())
    assert span.context.span_id == outer.span.get_span_context().span_id
    assert attribute(span, semconv.PROVIDER_NAME) == "framework"  # the outer layer's own account stands
    assert attribute(span, semconv.INPUT_MESSAGES) == framework_view
    assert attribute(span, semconv.RESPONSE_TOKEN_IDS) == served.log.replies[0].token_ids  # only the wire knows
    assert attribute(span, semconv.OUTPUT_MESSAGES) == [{"role": "assistant", "content": "joined"}]


def test_raw_responses_are_recorded_when_parsed(traced, instrument, serve) -> None:
    """``with_raw_response`` is how LiteLLM calls openai: parse() is where the answer appears."""
    instrument(capture_token_ids=True)
    served = serve(["raw", "raw stream"])
    raw = served.client.chat.completions.with_raw_response.create(model=MODEL, messages=ASK)
    assert raw.headers["content-type"].startswith("application/json")
    assert raw.parse().choices[0].message.content == "raw" and raw.parse() is raw.parse()
    raw_stream = served.client.chat.completions.with_raw_response.create(model=MODEL, messages=ASK, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in raw_stream.parse() if c.choices) == "raw stream"
    for span, sent in zip(traced.spans(), served.log.replies, strict=True):
        assert attribute(span, semconv.RESPONSE_TOKEN_IDS) == sent.token_ids
        assert attribute(span, semconv.OUTPUT_MESSAGES) == [{"role": "assistant", "content": sent.content}]


async def test_async_streaming_responses_are_recorded_when_parsed(traced, instrument, serve) -> None:
    instrument(capture_token_ids=True)
    served = serve(["streamed raw"])
    client = openai.AsyncOpenAI(base_url=served.url, api_key="test", max_retries=0)
    async with client, client.chat.completions.with_streaming_response.create(model=MODEL, messages=ASK) as response:
        parsed = await response.parse()
        assert await response.parse() is parsed
    assert parsed.choices[0].message.content == "streamed raw"
    span = the_span(traced.spans())
    assert attribute(span, semconv.RESPONSE_TOKEN_IDS) == served.log.replies[0].token_ids


def test_parse_is_recorded_like_create(traced, instrument, serve) -> None:
    class Sum(BaseModel):
        total: int

    instrument(capture_token_ids=True)
    served = serve(['{"total": 5}', Reply(tool_calls=[ToolCall("add", {"total": 5})])])
    parsed = served.client.chat.completions.parse(model=MODEL, messages=ASK, response_format=Sum)
    tool = served.client.chat.completions.parse(
        model=MODEL, messages=ASK, tools=[openai.pydantic_function_tool(Sum, name="add")]
    )
    assert parsed.choices[0].message.parsed == Sum(total=5)
    assert tool.choices[0].message.tool_calls[0].function.parsed_arguments == Sum(total=5)  # type: ignore[index]
    text_span, tool_span = traced.spans()
    assert attribute(text_span, semconv.OUTPUT_MESSAGES) == [{"role": "assistant", "content": '{"total": 5}'}]
    call = {"id": "call-2", "type": "function", "function": {"name": "add", "arguments": '{"total": 5}'}}
    assert attribute(tool_span, semconv.OUTPUT_MESSAGES) == [
        {"role": "assistant", "content": None, "tool_calls": [call]}
    ]
    for span, sent in zip((text_span, tool_span), served.log.replies, strict=True):
        assert attribute(span, semconv.RESPONSE_TOKEN_IDS) == sent.token_ids


def test_the_span_is_current_while_the_request_runs(traced, instrument) -> None:
    """So that a layer below (an HTTP instrumentor, a proxy client) nests under it or joins it."""
    instrument()
    seen: list[Any] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(open_llm_span())
        return httpx2.Response(200, json={"id": "c-1", "model": MODEL, "choices": []})

    with mock_client(handler) as client:
        client.chat.completions.create(model=MODEL, messages=ASK)
    span = the_span(traced.spans())
    assert [joined.get_span_context().span_id for joined in seen] == [span.context.span_id]


def test_the_request_carries_the_spans_trace_context_and_the_callers_headers_win(traced, instrument) -> None:
    """A server that traces (agl's LLM proxy) files its span under the call's; a caller's own
    ``traceparent`` is sent as the caller set it."""
    instrument()
    sent: list[httpx2.Headers] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(request.headers)
        return httpx2.Response(200, json={"id": "c-1", "model": MODEL, "choices": []})

    mine = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with mock_client(handler) as client:
        client.chat.completions.create(model=MODEL, messages=ASK)
        client.chat.completions.create(model=MODEL, messages=ASK, extra_headers={"traceparent": mine, "x-mine": "1"})
    first = traced.spans()[0].context
    assert sent[0]["traceparent"] == f"00-{first.trace_id:032x}-{first.span_id:016x}-{first.trace_flags:02x}"
    assert (sent[1]["traceparent"], sent[1]["x-mine"]) == (mine, "1")


def test_a_broken_propagator_sends_the_call_without_the_header_and_still_records_it(
    traced, instrument, monkeypatch
) -> None:
    instrument()
    sent: list[httpx2.Headers] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(request.headers)
        return httpx2.Response(200, json={"id": "c-1", "model": MODEL, "choices": []})

    monkeypatch.setattr(_wrappers.propagate, "inject", lambda *a, **k: 1 / 0)
    with mock_client(handler) as client:
        assert client.chat.completions.create(model=MODEL, messages=ASK).id == "c-1"
    assert "traceparent" not in sent[0]
    assert attribute(the_span(traced.spans()), semconv.INPUT_MESSAGES) == ASK  # ended and exported


# --- the responses API over a mock transport --------------------------------------------------

RESPONSE = {
    "id": "resp-1",
    "object": "response",
    "created_at": 0,
    "model": MODEL,
    "status": "completed",
    "output": [
        {
            "type": "message",
            "id": "m-1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Let me add.", "annotations": []}],
        },
        {
            "type": "function_call",
            "id": "f-1",
            "call_id": "call-1",
            "name": "add",
            "arguments": '{"a": 2}',
            "status": "completed",
        },
    ],
    "usage": {"input_tokens": 12, "output_tokens": 7, "total_tokens": 19},
}
RESPONSE_MESSAGE = {
    "role": "assistant",
    "content": "Let me add.",
    "tool_calls": [{"id": "call-1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}],
}


def responses_handler(request: httpx2.Request) -> httpx2.Response:
    assert request.url.path == "/v1/responses"
    if not json.loads(request.content).get("stream"):
        return httpx2.Response(200, json=RESPONSE)
    events = [
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": {**RESPONSE, "status": "in_progress", "output": []},
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": 1,
            "item_id": "m-1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Let me",
            "logprobs": [],
        },
        {"type": "response.completed", "sequence_number": 2, "response": RESPONSE},
    ]
    body = "".join(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n" for event in events)
    return httpx2.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize("stream", [False, True])
def test_the_responses_api_is_recorded_in_the_chat_shape(traced, instrument, stream: bool) -> None:
    instrument()
    with mock_client(responses_handler) as client:
        result = client.responses.create(
            model=MODEL,
            instructions="Be brief.",
            input="What is 2 + 3?",
            tools=[{"type": "function", "name": "add", "parameters": {}}],
            temperature=0.2,
            max_output_tokens=50,
            stream=stream,
        )
        if stream:
            assert [event.type for event in result][-1] == "response.completed"  # type: ignore[union-attr]
    span = the_span(traced.spans())
    assert attribute(span, semconv.INPUT_MESSAGES) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 3?"},
    ]
    assert attribute(span, semconv.OUTPUT_MESSAGES) == [RESPONSE_MESSAGE]
    assert (
        attribute(span, semconv.FINISH_REASONS) == ["tool_calls"] and attribute(span, semconv.RESPONSE_ID) == "resp-1"
    )
    assert (attribute(span, semconv.USAGE_INPUT_TOKENS), attribute(span, semconv.USAGE_OUTPUT_TOKENS)) == (12, 7)
    assert (attribute(span, "gen_ai.request.temperature"), attribute(span, "gen_ai.request.max_tokens")) == (0.2, 50)


FAILED_RESPONSE = {
    **RESPONSE,
    "status": "failed",
    "output": [],
    "error": {"code": "server_error", "message": "overloaded"},
}


def failing_responses_handler(request: httpx2.Request) -> httpx2.Response:
    """A reply the API reports failed: a failed response, or in a stream a ``response.failed`` or an
    ``error`` event (chosen by the request's ``metadata.end``); the client returns these, it does not raise."""
    sent = json.loads(request.content)
    if not sent.get("stream"):
        return httpx2.Response(200, json=FAILED_RESPONSE)
    delta = {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "m-1", "output_index": 0}
    events = [{**delta, "content_index": 0, "delta": "Let me", "logprobs": []}]
    if sent["metadata"]["end"] == "failed":
        events.append({"type": "response.failed", "sequence_number": 2, "response": FAILED_RESPONSE})
    else:
        events.append(
            {"type": "error", "sequence_number": 2, "code": "server_error", "message": "overloaded", "param": None}
        )
    body = "".join(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n" for event in events)
    return httpx2.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize(
    ("stream", "end", "why"),
    [
        (False, "failed", "response.failed: overloaded"),
        (True, "failed", "response.failed: overloaded"),
        (True, "error", "error: overloaded"),
    ],
)
def test_a_reply_the_responses_api_reports_failed_is_a_failed_call(traced, instrument, stream, end, why) -> None:
    instrument()
    with mock_client(failing_responses_handler) as client:
        result = client.responses.create(model=MODEL, input="What is 2 + 3?", stream=stream, metadata={"end": end})
        if stream:
            list(result)  # type: ignore[call-overload]
    span = the_span(traced.spans())
    assert (span.status.status_code, span.status.description) == (StatusCode.ERROR, why)
    assert attribute(span, semconv.ERROR_TYPE) == "server_error"  # the API's error code, as the conventions ask


def test_a_failed_reply_without_an_error_code_is_typed_by_what_said_it_failed(traced, instrument) -> None:
    def uncoded(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={**FAILED_RESPONSE, "error": {"code": None, "message": "overloaded"}})

    instrument()
    with mock_client(uncoded) as client:
        client.responses.create(model=MODEL, input="What is 2 + 3?")
    assert attribute(the_span(traced.spans()), semconv.ERROR_TYPE) == "response.failed"


@pytest.mark.parametrize("conversation", ["conv_1", {"id": "conv_1"}])
def test_a_responses_call_in_a_stored_conversation_records_its_id(traced, instrument, conversation) -> None:
    # The server prepends the conversation's items to the input: without the id a trace cannot
    # tell that the recorded messages are not the whole prompt.
    instrument()
    with mock_client(responses_handler) as client:
        client.responses.create(model=MODEL, input="What is 2 + 3?", conversation=conversation)
        client.responses.create(model=MODEL, input="What is 2 + 3?")
    in_conversation, alone = traced.spans()
    assert attribute(in_conversation, semconv.CONVERSATION_ID) == "conv_1"
    assert semconv.CONVERSATION_ID not in (alone.attributes or {})


DETAILED_USAGE = {
    "prompt_tokens": 20,
    "completion_tokens": 9,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 16},
    "completion_tokens_details": {"reasoning_tokens": 5},
}


def detailed_usage_handler(request: httpx2.Request) -> httpx2.Response:
    """A chat completion, or a Responses reply, whose usage details cached and reasoning tokens."""
    sent = json.loads(request.content)
    if request.url.path == "/v1/responses":
        usage = {
            "input_tokens": 20,
            "output_tokens": 9,
            "total_tokens": 29,
            "input_tokens_details": {"cached_tokens": 16},
            "output_tokens_details": {"reasoning_tokens": 5},
        }
        done = {**RESPONSE, "usage": usage}
        if not sent.get("stream"):
            return httpx2.Response(200, json=done)
        event = {"type": "response.completed", "sequence_number": 0, "response": done}
        body = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
        return httpx2.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})
    message = {"role": "assistant", "content": "5"}
    if not sent.get("stream"):
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        completion = {"id": "c-1", "object": "chat.completion", "created": 0, "model": MODEL, "choices": [choice]}
        return httpx2.Response(200, json={**completion, "usage": DETAILED_USAGE})
    chunk = {"id": "c-1", "object": "chat.completion.chunk", "created": 0, "model": MODEL}
    chunks = [
        {**chunk, "choices": [{"index": 0, "delta": message, "finish_reason": "stop"}]},
        {**chunk, "choices": [], "usage": DETAILED_USAGE},  # stream_options={"include_usage": True}
    ]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return httpx2.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("api", ["chat", "responses"])
def test_cached_and_reasoning_token_counts_are_recorded(traced, instrument, api: str, stream: bool) -> None:
    instrument()
    with mock_client(detailed_usage_handler) as client:
        if api == "chat":
            result: Any = client.chat.completions.create(model=MODEL, messages=ASK, stream=stream)  # type: ignore[arg-type]
        else:
            result = client.responses.create(model=MODEL, input="What is 2 + 3?", stream=stream)
        if stream:
            list(result)
    span = the_span(traced.spans())
    assert (attribute(span, semconv.USAGE_INPUT_TOKENS), attribute(span, semconv.USAGE_OUTPUT_TOKENS)) == (20, 9)
    assert attribute(span, semconv.USAGE_CACHE_READ_INPUT_TOKENS) == 16  # of the 20
    assert attribute(span, semconv.USAGE_REASONING_OUTPUT_TOKENS) == 5  # of the 9


class StartAttributes(SpanProcessor):
    """What each span carried when it started: what a sampler could decide on."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.seen.append(dict(span.attributes or {}))


def test_the_server_address_and_port_come_from_the_clients_base_url(traced, instrument, serve) -> None:
    started = StartAttributes()
    traced.provider.add_span_processor(started)
    instrument()
    served = serve(["one", "two"])
    served.client.chat.completions.create(model=MODEL, messages=ASK)
    with mock_client(responses_handler) as client:
        client.responses.create(model=MODEL, input="Hi")  # http://model.test/v1: the scheme's port
        client.base_url = "https://other.test:8443/v1"  # type: ignore[assignment]  # moved: recorded anew
        client.responses.create(model=MODEL, input="Hi")
    served.client.chat.completions.create(model=MODEL, messages=ASK)
    host, port = served.url.removeprefix("http://").removesuffix("/v1").rsplit(":", 1)
    assert [(attribute(s, "server.address"), attribute(s, "server.port")) for s in traced.spans()] == [
        (host, int(port)),
        ("model.test", 80),
        ("other.test", 8443),
        (host, int(port)),
    ]
    # the conventions want both at the span's start, as samplers decide on them
    assert [(seen["server.address"], seen["server.port"]) for seen in started.seen][1] == ("model.test", 80)


async def test_the_async_responses_api(traced, instrument) -> None:
    instrument()
    transport = httpx2.MockTransport(responses_handler)
    async with openai.AsyncOpenAI(
        base_url="http://model.test/v1", api_key="test", http_client=httpx2.AsyncClient(transport=transport)
    ) as client:
        items = [{"role": "user", "content": "What is 2 + 3?"}]
        await client.responses.create(model=MODEL, input=items)  # type: ignore[arg-type]
    span = the_span(traced.spans())
    assert attribute(span, semconv.INPUT_MESSAGES) == items
    assert attribute(span, semconv.OUTPUT_MESSAGES) == [RESPONSE_MESSAGE]


# --- the responses API's input in the chat shape ---------------------------------------------

CALL_ADD = {"type": "function_call", "id": "fc-1", "call_id": "call-1", "name": "add", "arguments": '{"a": 2}'}
CALL_MUL = {"type": "function_call", "id": "fc-2", "call_id": "call-2", "name": "mul", "arguments": '{"b": 3}'}
CHAT_ADD = {"id": "call-1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}
CHAT_MUL = {"id": "call-2", "type": "function", "function": {"name": "mul", "arguments": '{"b": 3}'}}
SAID = {
    "type": "message",
    "id": "m-0",
    "role": "assistant",
    "status": "completed",
    "content": [{"type": "output_text", "text": "Let me ", "annotations": []}, {"type": "output_text", "text": "add."}],
}
THOUGHT = {"type": "reasoning", "id": "r-1", "summary": [{"type": "summary_text", "text": "A sum."}]}
IMAGE = "data:image/png;base64,iVBORw0KGgo="
WEB_SEARCH = {
    "type": "web_search_call",
    "id": "ws-1",
    "status": "completed",
    "action": {"type": "search", "query": "x"},
}

INPUT_CASES = {
    "roles and string content": (
        [{"role": "developer", "content": "Be exact."}, {"type": "message", "role": "user", "content": "2 + 3?"}],
        [{"role": "developer", "content": "Be exact."}, {"role": "user", "content": "2 + 3?"}],
    ),
    "content parts in their chat form": (
        [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": IMAGE, "detail": "low"},
                    {"type": "input_image", "file_id": "file-1", "detail": "auto"},  # no chat form: as given
                    {"type": "input_file", "file_id": "file-2", "filename": "a.pdf"},
                    {"type": "input_file", "file_url": "https://files.test/a.pdf"},  # no chat form: as given
                ],
            }
        ],
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}},
                    {"type": "input_image", "file_id": "file-1", "detail": "auto"},
                    {"type": "file", "file": {"file_id": "file-2", "filename": "a.pdf"}},
                    {"type": "input_file", "file_url": "https://files.test/a.pdf"},
                ],
            }
        ],
    ),
    "function calls join the assistant message before them": (
        [SAID, CALL_ADD, CALL_MUL],
        [{"role": "assistant", "content": "Let me add.", "tool_calls": [CHAT_ADD, CHAT_MUL]}],
    ),
    "function calls alone make one assistant message": (
        [{"role": "user", "content": "2 + 3?"}, CALL_ADD, CALL_MUL],
        [
            {"role": "user", "content": "2 + 3?"},
            {"role": "assistant", "content": None, "tool_calls": [CHAT_ADD, CHAT_MUL]},
        ],
    ),
    "function call outputs as tool messages": (
        [
            CALL_ADD,
            {"type": "function_call_output", "call_id": "call-1", "output": "5"},
            {"type": "function_call_output", "call_id": "call-2", "output": [{"type": "input_text", "text": "6"}]},
            {
                "type": "function_call_output",
                "call_id": "call-3",
                "output": [{"type": "input_image", "image_url": IMAGE}],
            },
        ],
        [
            {"role": "assistant", "content": None, "tool_calls": [CHAT_ADD]},
            {"role": "tool", "tool_call_id": "call-1", "content": "5"},
            {"role": "tool", "tool_call_id": "call-2", "content": "6"},
            {
                "role": "tool",
                "tool_call_id": "call-3",
                "content": json.dumps([{"type": "input_image", "image_url": IMAGE}], separators=(",", ":")),
            },
        ],
    ),
    "reasoning on the next assistant message, or dropped": (
        [
            THOUGHT,
            CALL_ADD,
            {"type": "function_call_output", "call_id": "call-1", "output": "5"},
            {"type": "reasoning", "id": "r-2", "summary": [], "content": [{"type": "reasoning_text", "text": "Done."}]},
            SAID,
            {"type": "reasoning", "id": "r-3", "summary": [{"type": "summary_text", "text": "Unanswered."}]},
            {"role": "user", "content": "Thanks."},
        ],
        [
            {"role": "assistant", "content": None, "tool_calls": [CHAT_ADD], "reasoning_content": "A sum."},
            {"role": "tool", "tool_call_id": "call-1", "content": "5"},
            {"role": "assistant", "content": "Let me add.", "reasoning_content": "Done."},
            {"role": "user", "content": "Thanks."},
        ],
    ),
    "custom and namespaced tool calls keep what tells them apart": (
        [
            {"type": "function_call", "call_id": "call-4", "name": "get", "arguments": "{}", "namespace": "crm"},
            {"type": "custom_tool_call", "call_id": "call-5", "name": "sql", "input": "SELECT 1"},
            {"type": "custom_tool_call_output", "call_id": "call-5", "output": "1"},
        ],
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call-4",
                        "type": "function",
                        "function": {"name": "get", "arguments": "{}", "namespace": "crm"},
                    },
                    {"id": "call-5", "type": "custom", "custom": {"name": "sql", "input": "SELECT 1"}},
                ],
            },
            {"role": "tool", "tool_call_id": "call-5", "content": "1"},
        ],
    ),
    "items with no chat form kept as given, in their place": (
        [{"type": "item_reference", "id": "msg-9"}, THOUGHT, WEB_SEARCH, SAID],
        [
            {"type": "item_reference", "id": "msg-9"},
            WEB_SEARCH,
            {"role": "assistant", "content": "Let me add.", "reasoning_content": "A sum."},
        ],
    ),
}


class RecordingResponses:
    """Answers ``POST /v1/responses`` with `RESPONSE`; keeps each request body."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(json.loads(request.content))
        return responses_handler(request)


@pytest.mark.parametrize(("items", "expected"), INPUT_CASES.values(), ids=INPUT_CASES.keys())
def test_responses_input_items_are_recorded_in_the_chat_shape(traced, instrument, items, expected) -> None:
    instrument()
    api = RecordingResponses()
    with mock_client(api) as client:
        client.responses.create(model=MODEL, input=items)
    assert attribute(the_span(traced.spans()), semconv.INPUT_MESSAGES) == expected
    assert api.requests[0]["input"] == items  # sent as given


def test_responses_tools_are_recorded_in_the_chat_form(traced, instrument) -> None:
    instrument()
    web_search = {"type": "web_search"}
    with mock_client(responses_handler) as client:
        client.responses.create(
            model=MODEL,
            input="What is 2 + 3?",
            tools=[
                {"type": "function", "name": "add", "description": "Add.", "parameters": {}, "strict": True},
                {"type": "custom", "name": "sql", "description": "Run SQL."},
                web_search,
            ],
        )
    assert attribute(the_span(traced.spans()), semconv.TOOL_DEFINITIONS) == [
        {"type": "function", "function": {"name": "add", "description": "Add.", "parameters": {}, "strict": True}},
        {"type": "custom", "custom": {"name": "sql", "description": "Run SQL."}},
        web_search,
    ]


def test_a_reply_given_back_as_input_is_recorded_as_its_output_was(traced, instrument) -> None:
    """The SDK's output items (pydantic models), passed back as the next call's input, as agents do."""
    instrument()
    with mock_client(responses_handler) as client:
        first = client.responses.create(model=MODEL, input="What is 2 + 3?")
        result = {"type": "function_call_output", "call_id": "call-1", "output": "5"}
        client.responses.create(
            model=MODEL, input=[{"role": "user", "content": "What is 2 + 3?"}, *first.output, result]
        )
    asked, answered = traced.spans()
    assert attribute(answered, semconv.INPUT_MESSAGES) == [
        {"role": "user", "content": "What is 2 + 3?"},
        *attribute(asked, semconv.OUTPUT_MESSAGES),
        {"role": "tool", "tool_call_id": "call-1", "content": "5"},
    ]


def test_the_same_conversation_records_the_same_input_through_chat_and_responses(traced, instrument, serve) -> None:
    instrument()
    served = serve(["5"])
    parameters = {"type": "object", "properties": {"a": {"type": "integer"}}}
    function = {"name": "add", "description": "Add.", "parameters": parameters, "strict": False}
    served.client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Answer in digits."},
            {"role": "user", "content": [{"type": "text", "text": "What is 2 + 3?"}]},
            {"role": "assistant", "content": "Let me add.", "tool_calls": [CHAT_ADD], "reasoning_content": "A sum."},
            {"role": "tool", "tool_call_id": "call-1", "content": "5"},
        ],
        tools=[{"type": "function", "function": function}],
    )
    with mock_client(responses_handler) as client:
        client.responses.create(
            model=MODEL,
            instructions="Be brief.",
            input=[
                {"role": "developer", "content": "Answer in digits."},
                {"role": "user", "content": [{"type": "input_text", "text": "What is 2 + 3?"}]},
                THOUGHT,
                SAID,
                CALL_ADD,
                {"type": "function_call_output", "call_id": "call-1", "output": "5"},
            ],
            tools=[{"type": "function", **function}],
        )
    chat, responses = traced.spans()
    for key in (semconv.INPUT_MESSAGES, semconv.TOOL_DEFINITIONS):
        assert attribute(responses, key) == attribute(chat, key)


def unnumbered_tool_calls(request: httpx2.Request) -> httpx2.Response:
    """A stream whose tool-call deltas carry no index, as some OpenAI-compatible servers send them:
    the first call in two deltas (its arguments continued without an id), the second whole."""
    deltas = [
        {"id": "call-1", "type": "function", "function": {"name": "add", "arguments": '{"a": '}},
        {"function": {"arguments": "1}"}},
        {"id": "call-2", "type": "function", "function": {"name": "sub", "arguments": '{"b": 2}'}},
    ]
    chunks = [{"id": "s", "model": MODEL, "choices": [{"index": 0, "delta": {"tool_calls": [d]}}]} for d in deltas]
    chunks.append({"id": "s", "model": MODEL, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
    return httpx2.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})


def test_tool_call_deltas_without_an_index_are_told_apart(traced, instrument) -> None:
    instrument()
    with mock_client(unnumbered_tool_calls) as client:
        list(client.chat.completions.create(model=MODEL, messages=ASK, stream=True))
    (reply,) = attribute(the_span(traced.spans()), semconv.OUTPUT_MESSAGES)
    assert [(call["id"], call["function"]) for call in reply["tool_calls"]] == [
        ("call-1", {"name": "add", "arguments": '{"a": 1}'}),
        ("call-2", {"name": "sub", "arguments": '{"b": 2}'}),
    ]


def refusing_chat(request: httpx2.Request) -> httpx2.Response:
    """A chat reply that refuses: ``refusal`` instead of content, whole or in two stream deltas."""
    if not json.loads(request.content).get("stream"):
        message = {"role": "assistant", "content": None, "refusal": "I can't help."}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return httpx2.Response(200, json={"id": "c", "object": "chat.completion", "model": MODEL, "choices": [choice]})
    deltas = [({"role": "assistant", "refusal": "I can't"}, None), ({"refusal": " help."}, "stop")]
    chunks = [
        {"id": "c", "model": MODEL, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        for delta, finish in deltas
    ]
    body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
    return httpx2.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize("stream", [False, True])
def test_a_refusal_is_recorded_whole_or_streamed(traced, instrument, stream: bool) -> None:
    instrument()
    with mock_client(refusing_chat) as client:
        result = client.chat.completions.create(model=MODEL, messages=ASK, stream=stream)
        if stream:
            list(result)  # type: ignore[call-overload]
    assert attribute(the_span(traced.spans()), semconv.OUTPUT_MESSAGES) == [
        {"role": "assistant", "content": None, "refusal": "I can't help."}
    ]


REASONED_REFUSAL = {
    **RESPONSE,
    "output": [
        {"type": "reasoning", "id": "rs-1", "summary": [{"type": "summary_text", "text": "Not safe."}]},
        {
            "type": "message",
            "id": "m-1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "refusal", "refusal": "I can't help."}],
        },
    ],
}


def test_the_responses_api_records_reasoning_and_refusals(traced, instrument) -> None:
    instrument()
    with mock_client(lambda request: httpx2.Response(200, json=REASONED_REFUSAL)) as client:
        client.responses.create(model=MODEL, input="How do I pick a lock?")
    assert attribute(the_span(traced.spans()), semconv.OUTPUT_MESSAGES) == [
        {"role": "assistant", "content": None, "refusal": "I can't help.", "reasoning_content": "Not safe."}
    ]


def long_responses_stream(request: httpx2.Request) -> httpx2.Response:
    """A stream whose text message and tool call are done before a second message starts."""
    delta = {"type": "response.output_text.delta", "content_index": 0, "logprobs": []}
    events = [
        {"type": "response.created", "response": {**RESPONSE, "status": "in_progress", "output": []}},
        {**delta, "item_id": "m-1", "output_index": 0, "delta": "Let me"},
        *(
            {"type": "response.output_item.done", "output_index": i, "item": item}
            for i, item in enumerate(RESPONSE["output"])
        ),
        {**delta, "item_id": "m-2", "output_index": 2, "delta": " Then"},
        {"type": "response.completed", "response": RESPONSE},
    ]
    body = "".join(
        f"event: {event['type']}\ndata: {json.dumps({**event, 'sequence_number': n})}\n\n"
        for n, event in enumerate(events)
    )
    return httpx2.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})


def test_a_responses_stream_closed_early_keeps_the_items_done_so_far(traced, instrument) -> None:
    instrument()
    with mock_client(long_responses_stream) as client:
        stream = client.responses.create(model=MODEL, input="What is 2 + 3?", stream=True)
        for event in stream:
            if getattr(event, "item_id", None) == "m-2":
                break
        stream.close()
    (reply,) = attribute(the_span(traced.spans()), semconv.OUTPUT_MESSAGES)
    assert reply == {**RESPONSE_MESSAGE, "content": "Let me add. Then"}


CUT_SHORT = {**RESPONSE, "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}


def cut_short_handler(request: httpx2.Request) -> httpx2.Response:
    """A reply cut short by ``max_output_tokens`` after a whole tool call: a response, or a stream's
    ``response.incomplete`` event."""
    if not json.loads(request.content).get("stream"):
        return httpx2.Response(200, json=CUT_SHORT)
    event = {"type": "response.incomplete", "sequence_number": 0, "response": CUT_SHORT}
    body = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
    return httpx2.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize("stream", [False, True])
def test_a_response_cut_short_after_a_tool_call_says_why(traced, instrument, stream: bool) -> None:
    instrument()
    with mock_client(cut_short_handler) as client:
        result = client.responses.create(model=MODEL, input="What is 2 + 3?", max_output_tokens=7, stream=stream)
        if stream:
            list(result)  # type: ignore[call-overload]
    span = the_span(traced.spans())
    assert attribute(span, semconv.FINISH_REASONS) == ["max_output_tokens"]
    assert attribute(span, semconv.OUTPUT_MESSAGES) == [RESPONSE_MESSAGE]


def azure_handler(request: httpx2.Request) -> httpx2.Response:
    """Azure's routes: the deployment in the path, the API version in the query."""
    assert request.url.params["api-version"] == "2024-10-21"
    if request.url.path == f"/openai/deployments/{MODEL}/chat/completions":
        return httpx2.Response(200, json=chat_completion("Hi."))
    assert request.url.path == "/openai/responses"
    return httpx2.Response(200, json=RESPONSE)


def chat_completion(text: str) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    return {"id": "c", "object": "chat.completion", "model": MODEL, "choices": [choice]}


async def test_azure_clients_are_recorded_as_azure_openai(traced, instrument) -> None:
    instrument()
    azure = {"azure_endpoint": "https://agl.openai.azure.com", "api_version": "2024-10-21", "api_key": "test"}
    transport = httpx2.MockTransport(azure_handler)
    with openai.AzureOpenAI(**azure, http_client=httpx2.Client(transport=transport)) as client:
        client.chat.completions.create(model=MODEL, messages=ASK)  # type: ignore[arg-type]
        client.chat.completions.with_raw_response.create(model=MODEL, messages=ASK).parse()  # type: ignore[arg-type]
    async with openai.AsyncAzureOpenAI(**azure, http_client=httpx2.AsyncClient(transport=transport)) as aclient:
        await aclient.responses.create(model=MODEL, input="Hi")
    spans = traced.spans()
    assert [attribute(span, semconv.PROVIDER_NAME) for span in spans] == ["azure.ai.openai"] * 3


# --- never in the caller's way ----------------------------------------------------------------


def test_the_callers_errors_pass_through_unchanged_and_are_recorded(traced, instrument, serve) -> None:
    instrument()
    served = serve(["never sent"])
    with pytest.raises(openai.BadRequestError) as refused:
        served.client.chat.completions.create(model=MODEL, messages=[])
    mistake = ValueError("a broken message generator")

    def broken_messages() -> Any:
        yield ASK[0]
        raise mistake

    with pytest.raises(ValueError) as raised:
        served.client.chat.completions.create(model=MODEL, messages=broken_messages())
    assert raised.value is mistake and refused.value.status_code == 400
    span = the_span(traced.spans())  # the generator failed before any call began
    assert span.status.status_code is StatusCode.ERROR and "BadRequestError" in (span.status.description or "")
    assert attribute(span, semconv.ERROR_TYPE) == "openai.BadRequestError"  # fully qualified, as exception.type
    assert (
        span.events[0].name == "exception" and span.events[0].attributes["exception.type"] == "openai.BadRequestError"
    )  # type: ignore[index]


def test_recording_failures_never_reach_the_caller(traced, instrument, monkeypatch) -> None:
    instrument(capture_token_ids=True)

    def broken(request: httpx2.Request) -> httpx2.Response:
        if json.loads(request.content).get("stream"):
            body = 'data: {"id": "s", "choices": [{"index": 0, "delta": 5}]}\n\ndata: [DONE]\n\n'
            return httpx2.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})
        return httpx2.Response(
            200, json={"id": "odd", "model": MODEL, "choices": "not a list", "prompt_token_ids": "x"}
        )

    with mock_client(broken) as client:
        odd = client.chat.completions.create(model=MODEL, messages=ASK)
        chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, stream=True))
        monkeypatch.setattr(_wrappers, "start_llm_call", lambda *a, **k: 1 / 0)
        unrecorded = client.chat.completions.create(model=MODEL, messages=ASK)
    assert odd.id == unrecorded.id == "odd" and len(chunks) == 1
    whole, streamed = traced.spans()  # no span for the last call: its span could not even start
    for span in (whole, streamed):
        assert span.status.status_code is StatusCode.UNSET and attribute(span, semconv.INPUT_MESSAGES) == ASK
        assert semconv.PROMPT_TOKEN_IDS not in (span.attributes or {})


# --- patching ----------------------------------------------------------------------------------


def test_uninstrument_restores_every_original_and_instrument_twice_is_a_no_op(traced, instrument, serve) -> None:
    originals = {(cls, method): cls.__dict__[method] for cls, method in PATCHED}
    instrumentor = instrument()
    wrappers = {key: key[0].__dict__[key[1]] for key in PATCHED}
    assert all(isinstance(w, wrapt.FunctionWrapper) and w.__wrapped__ is originals[k] for k, w in wrappers.items())
    instrument()
    assert all(key[0].__dict__[key[1]] is wrappers[key] for key in PATCHED)  # not wrapped twice
    served = serve(["one", "two"])
    served.client.chat.completions.create(model=MODEL, messages=ASK)
    assert len(traced.spans()) == 1  # one span per call, not one per instrument()
    instrumentor.uninstrument()
    assert all(cls.__dict__[method] is originals[(cls, method)] for cls, method in PATCHED)
    served.client.chat.completions.create(model=MODEL, messages=ASK)
    assert len(traced.spans()) == 1


def test_a_wrapper_wrapped_by_another_library_stays_inert_after_uninstrument(traced, instrument, serve) -> None:
    original = Completions.__dict__["create"]
    instrumentor = instrument()
    ours = Completions.__dict__["create"]
    wrapt.wrap_function_wrapper(Completions, "create", lambda wrapped, instance, args, kwargs: wrapped(*args, **kwargs))
    theirs = Completions.__dict__["create"]
    try:
        instrumentor.uninstrument()
        assert Completions.__dict__["create"] is theirs and theirs.__wrapped__ is ours  # theirs is left alone
        served = serve(["inert", "active again"])
        served.client.chat.completions.create(model=MODEL, messages=ASK)
        assert traced.spans() == []  # ours passes through
        instrument()
        assert Completions.__dict__["create"] is theirs  # not wrapped a second time
        served.client.chat.completions.create(model=MODEL, messages=ASK)
        assert len(traced.spans()) == 1
    finally:
        Completions.create = original  # type: ignore[method-assign]
        _wrappers.PATCHER._applied.pop((Completions, "create"), None)


LAZY = """
import json, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from agl.instrument.openai import OpenAIInstrumentor

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
OpenAIInstrumentor().instrument(tracer_provider=provider, capture_token_ids=True)
imported = sorted(name for name in sys.modules if name.split(".")[0] == "openai")

import openai

with openai.OpenAI(base_url=sys.argv[1], api_key="test") as client:
    client.chat.completions.create(model="agl-toy", messages=[{"role": "user", "content": "hi"}])
(span,) = exporter.get_finished_spans()
print(json.dumps({"imported": imported, "name": span.name, "ids": list(span.attributes["agl.llm.response_token_ids"])}))
"""


def test_instrumenting_before_openai_is_imported_patches_it_on_import(serve) -> None:
    served = serve(["lazy"])
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGL_"))}
    done = subprocess.run(
        [sys.executable, "-c", LAZY, served.url], env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == {"imported": [], "name": f"chat {MODEL}", "ids": served.log.replies[0].token_ids}


def test_a_custom_tool_call_in_a_reply_is_recorded_as_the_models_action(traced, instrument) -> None:
    """A reply whose action is a custom tool call (free-form input) was recorded as an empty
    assistant message that stopped: the call, which a trainer must see, was lost."""
    custom = {"type": "custom_tool_call", "id": "c-1", "call_id": "call-7", "name": "sql", "input": "SELECT 1"}
    reply = {**RESPONSE, "output": [custom]}
    instrument()
    with mock_client(lambda request: httpx2.Response(200, json=reply)) as client:
        client.responses.create(model=MODEL, input="How many rows?")
    span = the_span(traced.spans())
    assert attribute(span, semconv.OUTPUT_MESSAGES) == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call-7", "type": "custom", "custom": {"name": "sql", "input": "SELECT 1"}}],
        }
    ]
    assert span.attributes[semconv.FINISH_REASONS] == ("tool_calls",)
