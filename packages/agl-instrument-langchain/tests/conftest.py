"""Fixtures: the instrumentor switched on for one test, recording into the test's global provider
(agl's ``captured_spans``: agl's processor, spans kept in memory)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agl.instrument.langchain import LangChainInstrumentor

Instrument = Callable[..., LangChainInstrumentor]


@pytest.fixture
def instrument(captured_spans: InMemorySpanExporter) -> Iterator[Instrument]:
    """``instrument()`` instruments LangChain into the test's global provider; undone after the test."""
    instrumentor = LangChainInstrumentor()

    def start(**options: Any) -> LangChainInstrumentor:
        instrumentor.instrument(**options)
        return instrumentor

    yield start
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
