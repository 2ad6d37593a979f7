"""Tracing in tests: OpenTelemetry's global tracer provider may be set once per process; tests
need a fresh one each."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from agl.core.tracing.context import ActiveRollout
from agl.core.tracing.processor import RolloutSpanProcessor


@contextmanager
def fresh_global_tracer_provider() -> Iterator[None]:
    """Inside, the global provider is unset again (``set_tracer_provider``/`setup_tracing` work);
    the previous one is back afterwards."""
    saved = trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE
    trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = None, Once()
    try:
        yield
    finally:
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved


@contextmanager
def captured_spans(process_rollout: ActiveRollout | None = None) -> Iterator[InMemorySpanExporter]:
    """A global SDK provider with agl's processor, finished spans kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(RolloutSpanProcessor(process_rollout or ActiveRollout("ro-process", "at-process")))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with fresh_global_tracer_provider():
        trace.set_tracer_provider(provider)
        try:
            yield exporter
        finally:
            provider.shutdown()
