"""``store``: one store per backend (memory, SQLite, and the HTTP client of a server over SQLite),
for tests that hold every backend to the same answer; ``backing``: a SQLite store for a server
under test to serve. A test file that defines its own fixture of either name uses that one instead.
``traced_sqlite_store``: each test's own SQLite store, receiving what the runner traces through one
`setup_tracing` for the whole test module (tracing is process-wide), under a fresh global provider
given back afterwards.

This folder goes on ``sys.path`` so that the tests' shared helper modules (``adapter_spans``) are
importable by name.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agl.core import open_store
from agl.core.server import ServerSettings, create_app
from agl.core.store import InMemoryLightningStore, SqliteLightningStore
from agl.core.store.base import LightningStore
from agl.core.store.http import HttpLightningStore
from agl.core.testing.server import ServingThread
from agl.core.testing.tracing import fresh_global_tracer_provider
from agl.core.tracing.configure import flush_spans, setup_tracing

TESTS = str(Path(__file__).parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


@pytest.fixture(params=["memory", "sqlite", "http"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LightningStore]:
    opened = InMemoryLightningStore() if request.param == "memory" else SqliteLightningStore(tmp_path / "store.db")
    if request.param == "http":
        with ServingThread(create_app(ServerSettings(), opened)) as server:
            client = HttpLightningStore(server.url)
            yield client
            await client.close()
    else:
        yield opened
    await opened.close()


@pytest.fixture
def backing(tmp_path: Path) -> Iterator[SqliteLightningStore]:
    store = SqliteLightningStore(tmp_path / "served.db")
    yield store
    asyncio.run(store.close())


class Forwarder:
    """The store the module's exporter was made for: hands each batch to the current test's store."""

    def __init__(self) -> None:
        self.target: LightningStore | None = None

    async def add_observed_spans(self, spans: Any, **options: Any) -> Any:
        assert self.target is not None, "spans arrived between tests"
        return await self.target.add_observed_spans(spans, **options)


@pytest.fixture(scope="module")
def forwarder() -> Iterator[Forwarder]:
    forwarder = Forwarder()
    with fresh_global_tracer_provider():
        provider = setup_tracing(store=forwarder)
        yield forwarder
        provider.shutdown()


@pytest.fixture
async def traced_sqlite_store(tmp_path: Path, forwarder: Forwarder) -> AsyncIterator[LightningStore]:
    opened = open_store(f"sqlite:///{tmp_path / 'store.db'}", watchdog_interval=None)
    forwarder.target = opened
    yield opened
    assert flush_spans()
    forwarder.target = None
    await opened.close()
