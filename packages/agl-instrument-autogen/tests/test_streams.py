"""Streams at AutoGen's edges, on its replay model and custom clients and agents: a client handing
over another client's stream, a stream that cannot be made, one closed early or failing midway, a
turn holding a span of its own across its yields, one whose clean-up fails, and an agent used as a
tool (AutoGen runs it through ``run_json_stream``, not ``run_json``)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent, BaseChatAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseChatMessage, TextMessage, ThoughtEvent
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_agentchat.tools import AgentTool
from autogen_core import CancellationToken
from autogen_core.models import UserMessage
from autogen_ext.models.replay import ReplayChatCompletionClient
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode

from agl.core.tracing import rollout_context, semconv

from .conftest import MODEL_INFO, replay, tool_call


def llm_calls(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return [span for span in spans if (span.attributes or {}).get(semconv.LLM_CALL)]


def parent_name(span: ReadableSpan, spans: list[ReadableSpan]) -> str | None:
    names = {candidate.context.span_id: candidate.name for candidate in spans}
    return names.get(span.parent.span_id) if span.parent else None


def output(span: ReadableSpan) -> list[dict[str, Any]]:
    return json.loads((span.attributes or {})[semconv.OUTPUT_MESSAGES])


class Router(ReplayChatCompletionClient):
    """A client that hands each request to another one, returning that client's stream as it is."""

    def __init__(self, inner: ReplayChatCompletionClient) -> None:
        super().__init__([], model_info=MODEL_INFO)
        self.inner = inner

    def create_stream(self, messages: Sequence[Any], **kwargs: Any) -> AsyncGenerator[Any, None]:  # type: ignore[override]
        return self.inner.create_stream(messages, **kwargs)


class Strict(ReplayChatCompletionClient):
    """A client that refuses a request before it streams anything."""

    def create_stream(self, messages: Sequence[Any], **kwargs: Any) -> AsyncGenerator[Any, None]:  # type: ignore[override]
        raise ValueError("this model takes no system message")


class Dropping(ReplayChatCompletionClient):
    """A client whose connection drops after the first chunk."""

    async def create_stream(self, messages: Sequence[Any], **kwargs: Any) -> AsyncGenerator[Any, None]:  # type: ignore[override]
        yield "The answer "
        raise ConnectionError("connection dropped")


async def test_a_client_handing_over_another_clients_stream_makes_one_llm_span(traced, instrument) -> None:
    instrument()
    agent = AssistantAgent("routed", model_client=Router(replay("Hello there.")), model_client_stream=True)
    with rollout_context("ro-test", "at-test"):
        result = await agent.run(task="hi")
    assert result.messages[-1].content == "Hello there."
    spans = traced.ours()
    (call,) = llm_calls(spans)  # the inner client's create_stream joins the router's span
    assert call.name == "chat Router" and parent_name(call, spans) == "invoke_agent routed"
    assert output(call) == [{"role": "assistant", "content": "Hello there."}]


async def test_a_stream_that_cannot_be_made_ends_its_span_with_the_error(traced, instrument) -> None:
    instrument()
    agent = AssistantAgent("strict", model_client=Strict(["never"], model_info=MODEL_INFO), model_client_stream=True)
    with rollout_context("ro-test", "at-test"), pytest.raises(ValueError, match="no system message"):
        await agent.run(task="hi")
    (call,) = llm_calls(traced.ours())
    assert call.status.status_code is StatusCode.ERROR and "no system message" in (call.status.description or "")
    assert json.loads((call.attributes or {})[semconv.INPUT_MESSAGES])[-1]["content"] == "hi"


async def test_a_stream_closed_early_or_failing_midway_keeps_the_text_it_streamed(traced, instrument) -> None:
    instrument()
    question = [UserMessage(content="Say three words.", source="user")]
    with rollout_context("ro-test", "at-test"):
        stream = replay("one two three").create_stream(question)
        first = await anext(stream)
        await stream.aclose()
        with pytest.raises(ConnectionError):
            async for _ in Dropping([], model_info=MODEL_INFO).create_stream(question):
                pass
    closed, failed = llm_calls(traced.ours())
    assert closed.status.status_code is StatusCode.UNSET
    assert output(closed) == [{"role": "assistant", "content": first}]
    assert failed.status.status_code is StatusCode.ERROR
    assert output(failed) == [{"role": "assistant", "content": "The answer "}]


class OpenSpans(SpanProcessor):
    """Every span started, and those not ended yet: what an exporter never sees."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.open: dict[int, str] = {}

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.started.append(span.name)
        self.open[span.context.span_id] = span.name

    def on_end(self, span: ReadableSpan) -> None:
        self.open.pop(span.context.span_id, None)


def watch_spans() -> OpenSpans:
    watcher = OpenSpans()
    trace.get_tracer_provider().add_span_processor(watcher)  # type: ignore[attr-defined]
    return watcher


async def test_a_model_stream_never_stepped_is_no_call_and_leaves_no_span_open(traced, instrument) -> None:
    instrument()
    watcher = watch_spans()
    question = [UserMessage(content="Say three words.", source="user")]
    client = replay("one two three")
    with rollout_context("ro-test", "at-test"):
        dropped = client.create_stream(question)
        del dropped  # made and dropped: no request was sent
        closed = client.create_stream(question)
        await closed.aclose()  # closed before its first step: none either
        assert watcher.started == [] and watcher.open == {}
        chunks = [chunk async for chunk in client.create_stream(question)]
    assert chunks[-1].content == "one two three"
    (call,) = llm_calls(traced.ours())
    assert watcher.started == [call.name] and watcher.open == {}
    assert output(call) == [{"role": "assistant", "content": "one two three"}]


async def test_an_agent_turn_or_team_run_never_stepped_leaves_no_span_open(traced, instrument) -> None:
    instrument()
    agent = AssistantAgent("idle", model_client=replay("Hi."))
    team = RoundRobinGroupChat([agent], max_turns=1)
    watcher = watch_spans()  # after AutoGen's own create_agent spans
    with rollout_context("ro-test", "at-test"):
        turn = agent.on_messages_stream([TextMessage(content="Hello.", source="user")], CancellationToken())
        await turn.aclose()
        run = team.run_stream(task="Hello.")
        del run
    assert watcher.started == [] and watcher.open == {}


class Planner(BaseChatAgent):
    """A custom agent whose streamed turn holds a span of its own open across its yields, and may
    fail while it cleans up."""

    def __init__(self, client: ReplayChatCompletionClient, *, cleanup_fails: bool = False) -> None:
        super().__init__("planner", "Plans.")
        self.client = client
        self.cleanup_fails = cleanup_fails

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        pass

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        async for message in self.on_messages_stream(messages, cancellation_token):
            if isinstance(message, Response):
                return message
        raise AssertionError("no response")

    async def on_messages_stream(
        self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
    ) -> AsyncGenerator[Any, None]:
        try:
            with trace.get_tracer("user-code").start_as_current_span("plan"):
                yield ThoughtEvent(content="Let me think.", source=self.name)
                reply = await self.client.create([UserMessage(content="Plan it.", source="user")])
                yield Response(chat_message=TextMessage(content=str(reply.content), source=self.name))
        finally:
            if self.cleanup_fails:
                raise RuntimeError("clean-up failed")


async def test_a_span_a_streamed_turn_holds_open_across_its_yields_stays_current_in_it(traced, instrument) -> None:
    instrument()
    with rollout_context("ro-test", "at-test"):
        async for _ in Planner(replay("Step one.")).run_stream(task="Plan a trip."):
            pass
    spans = traced.ours()
    (call,) = llm_calls(spans)
    assert parent_name(call, spans) == "plan"  # made current by the turn before its first yield
    (plan,) = [span for span in spans if span.name == "plan"]
    assert parent_name(plan, spans) == "invoke_agent planner"


async def test_a_turn_whose_clean_up_fails_when_closed_early_still_ends_its_span(traced, instrument) -> None:
    instrument()
    planner = Planner(replay("Step one."), cleanup_fails=True)
    with rollout_context("ro-test", "at-test"):
        turn = planner.on_messages_stream([TextMessage(content="Plan.", source="user")], CancellationToken())
        async for _ in turn:
            break  # the caller stops after the first event
        with pytest.raises(RuntimeError, match="clean-up failed"):
            await turn.aclose()
    (agent,) = [span for span in traced.ours() if span.name == "invoke_agent planner"]
    assert agent.end_time is not None and agent.status.status_code is StatusCode.ERROR


async def test_an_agent_used_as_a_tool_gets_an_execute_tool_span_with_arguments_and_result(traced, instrument) -> None:
    instrument()
    helper = AssistantAgent("helper", model_client=replay("Paris."), description="Answers questions.")
    boss = AssistantAgent(
        "boss",
        model_client=replay(tool_call("helper", '{"task": "Capital of France?"}', "call-7"), "It is Paris."),
        tools=[AgentTool(helper)],
        reflect_on_tool_use=True,
    )
    with rollout_context("ro-test", "at-test"):
        result = await boss.run(task="Ask the helper.")
    assert result.messages[-1].content == "It is Paris."
    spans = traced.ours()
    (tool,) = [span for span in spans if span.name == "execute_tool helper"]
    attributes = tool.attributes or {}
    assert tool.instrumentation_scope.name == "agl.instrument.autogen"  # agl's span, not AutoGen's bare one
    assert parent_name(tool, spans) == "invoke_agent boss"
    assert json.loads(attributes[semconv.TOOL_CALL_ARGUMENTS]) == {"task": "Capital of France?"}
    assert (attributes[semconv.TOOL_CALL_ID], attributes[semconv.TOOL_CALL_RESULT]) == ("call-7", "helper: Paris.")
    (inner,) = [span for span in llm_calls(spans) if (span.attributes or {}).get(semconv.AGENT_NAME) == "helper"]
    assert parent_name(inner, spans) == "invoke_agent helper"
    assert [parent_name(span, spans) for span in spans if span.name == "invoke_agent helper"] == ["execute_tool helper"]
