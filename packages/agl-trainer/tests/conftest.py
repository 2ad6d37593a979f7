"""Fixtures of the trainer's tests: a fresh tracing set-up per test, a memory store, a SQLite one.

This folder goes on ``sys.path`` so that agents of the tests are importable by name
(``agents_for_runner_tests:double``), here and, through the ``PYTHONPATH`` runner modes give
their children, in child processes and Ray actors.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from opentelemetry import trace

from agl.core import open_store
from agl.core.store.base import LightningStore
from agl.core.testing.tracing import fresh_global_tracer_provider

TESTS = str(Path(__file__).parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


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


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[LightningStore]:
    """A durable store without tracing set up (the proxy's tests: the proxy writes spans itself)."""
    opened = open_store(f"sqlite:///{tmp_path / 'store.db'}", watchdog_interval=None)
    yield opened
    await opened.close()
