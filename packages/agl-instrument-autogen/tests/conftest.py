"""Fixtures: spans of the global tracer provider kept in memory (AutoGen's own spans go there too),
the instrumentors switched on for one test, AutoGen's replay model, and the scripted chat server
of agl-core on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from autogen_core import FunctionCall
from autogen_core.models import CreateResult, ModelInfo, RequestUsage
from autogen_ext.models.replay import ReplayChatCompletionClient
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agl.core.testing.chat_server import ChatLog, Script, chat_log, chat_server_app
from agl.core.testing.server import ServingThread
from agl.core.tracing import semconv
from agl.core.types import Span
from agl.instrument.autogen import AutoGenInstrumentor
from agl.instrument.openai import OpenAIInstrumentor

MODEL_INFO = ModelInfo(
    vision=False, function_calling=True, json_output=False, family="unknown", structured_output=False
)


def replay(*replies: str | CreateResult) -> ReplayChatCompletionClient:
    """AutoGen's fake model: answers ``replies`` in order."""
    return ReplayChatCompletionClient(list(replies), model_info=MODEL_INFO)


def tool_call(name: str, arguments: str, call_id: str) -> CreateResult:
    """A model reply that calls one tool."""
    call = FunctionCall(id=call_id, name=name, arguments=arguments)
    return CreateResult(finish_reason="function_calls", content=[call], usage=RequestUsage(10, 5), cached=False)


@dataclass
class Traced:
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        """Finished spans in start order (agl's sequence ids)."""
        return sorted(self.exporter.get_finished_spans(), key=lambda s: (s.attributes or {})[semconv.SEQUENCE_ID])

    def ours(self, rollout_id: str = "ro-test") -> list[ReadableSpan]:
        """The spans of one rollout, in start order."""
        return [s for s in self.spans() if (s.attributes or {})[semconv.ROLLOUT_ID] == rollout_id]

    def stored(self, rollout_id: str = "ro-test") -> list[Span]:
        """The rollout's spans as the store keeps them (what the adapters read)."""
        return [
            Span.from_otel(
                s, rollout_id=rollout_id, attempt_id="at-test", sequence_id=(s.attributes or {})[semconv.SEQUENCE_ID]
            )
            for s in self.ours(rollout_id)
        ]


@pytest.fixture
def traced(captured_spans: InMemorySpanExporter) -> Traced:
    return Traced(captured_spans)


@pytest.fixture
def instrument(traced: Traced) -> Iterator[Callable[..., Any]]:
    """``instrument()`` turns on agl's AutoGen instrumentor (``openai=True``: agl's openai one
    too) on the global provider; undone after the test."""
    started: list[Any] = []

    def start(*, openai: bool = False) -> AutoGenInstrumentor:
        instrumentor = AutoGenInstrumentor()
        instrumentor.instrument()
        started.append(instrumentor)
        if openai:
            started.append(OpenAIInstrumentor())
            started[-1].instrument(capture_token_ids=True)
        return instrumentor

    yield start
    for instrumentor in reversed(started):
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


@dataclass
class Served:
    url: str
    log: ChatLog


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """``serve(script)``: the scripted chat server (exact token ids) on 127.0.0.1; with
    ``azure_deployment=`` it also answers at Azure OpenAI's path for that deployment."""
    with ExitStack() as stack:

        def start(script: Script, *, azure_deployment: str | None = None) -> Served:
            app = chat_server_app(script)
            if azure_deployment is not None:
                _answer_as_azure_deployment(app, azure_deployment)
            server = stack.enter_context(ServingThread(app))
            return Served(f"{server.url}/v1", chat_log(app))

        yield start


def _answer_as_azure_deployment(app: FastAPI, deployment: str) -> None:
    """Azure OpenAI's chat completions path (under ``{azure_endpoint}/openai``), same handler."""
    (route,) = [route for route in app.routes if getattr(route, "path", None) == "/v1/chat/completions"]
    path = f"/openai/deployments/{deployment}/chat/completions"
    app.add_api_route(path, route.endpoint, methods=["POST"], response_model=None)
