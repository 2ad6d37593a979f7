"""pytest plugin of agl-core (registered through ``pytest11``): shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agl.core.testing.clock import ManualClock
from agl.core.testing.tracing import captured_spans as _captured_spans


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def captured_spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Spans of this test, stamped by agl's processor (outside a rollout: ``ro-process``)."""
    monkeypatch.delenv("AGL_ROLLOUT_ID", raising=False)
    monkeypatch.delenv("AGL_ATTEMPT_ID", raising=False)
    with _captured_spans() as exporter:
        yield exporter
