"""Fixtures of the trainer's tests: a fresh tracing set-up per test, a memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry import trace

from agl.core import open_store
from agl.core.store.base import LightningStore
from agl.core.testing.tracing import fresh_global_tracer_provider


@pytest.fixture
def tracing() -> Iterator[None]:
    """`Trainer.fit` calls `setup_tracing(store=...)`, which sets the process's global provider
    once; each test gets an unset one, and the provider it made is shut down after it."""
    with fresh_global_tracer_provider():
        yield
        provider = trace.get_tracer_provider()
        getattr(provider, "shutdown", lambda: None)()


@pytest.fixture
async def store(tracing: None) -> AsyncIterator[LightningStore]:
    opened = open_store("memory://", watchdog_interval=None)
    yield opened
    await opened.close()
