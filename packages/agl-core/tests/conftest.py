"""``store``: one store per backend (memory, SQLite, and the HTTP client of a server over SQLite),
for tests that hold every backend to the same answer; ``backing``: a SQLite store for a server
under test to serve. A test file that defines its own fixture of either name uses that one instead.

This folder goes on ``sys.path`` so that the tests' shared helper modules (``adapter_spans``) are
importable by name.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agl.core.server import ServerSettings, create_app
from agl.core.store import InMemoryLightningStore, SqliteLightningStore
from agl.core.store.base import LightningStore
from agl.core.store.http import HttpLightningStore
from agl.core.testing.server import ServingThread

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
