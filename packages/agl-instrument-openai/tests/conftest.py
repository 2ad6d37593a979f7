"""Fixtures: spans kept in memory, the instrumentor switched on for one test, and the scripted
chat server of agl-core on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agl.core.testing.chat_server import ChatLog, Script, chat_log, chat_server_app
from agl.core.testing.server import ServingThread
from agl.core.tracing.context import ActiveRollout
from agl.core.tracing.processor import RolloutSpanProcessor
from agl.instrument.openai import OpenAIInstrumentor


@dataclass
class Traced:
    provider: TracerProvider
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def traced() -> Iterator[Traced]:
    """A tracer provider as agl sets one up (rollout identity stamped on every span), exporting to memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(RolloutSpanProcessor(ActiveRollout("ro-test", "at-test")))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Traced(provider, exporter)
    provider.shutdown()


Instrument = Callable[..., OpenAIInstrumentor]


@pytest.fixture
def instrument(traced: Traced) -> Iterator[Instrument]:
    """``instrument(**options)`` instruments openai into ``traced``; undone after the test."""
    instrumentor = OpenAIInstrumentor()

    def start(**options: Any) -> OpenAIInstrumentor:
        instrumentor.instrument(tracer_provider=traced.provider, **options)
        return instrumentor

    yield start
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


@dataclass
class Served:
    url: str
    log: ChatLog
    client: openai.OpenAI


Serve = Callable[[Script], Served]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(script)``: a scripted chat server on 127.0.0.1 and an openai client for it (no retries)."""
    with ExitStack() as stack:

        def start(script: Script) -> Served:
            app = chat_server_app(script)
            server = stack.enter_context(ServingThread(app))
            client = stack.enter_context(openai.OpenAI(base_url=f"{server.url}/v1", api_key="test", max_retries=0))
            return Served(f"{server.url}/v1", chat_log(app), client)

        yield start
