"""Both built-in backends pass the whole conformance suite."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agl.core.store import InMemoryLightningStore, SqliteLightningStore
from agl.core.testing import StoreConformance


class TestInMemoryStore(StoreConformance):
    @pytest.fixture
    def make_store(self) -> Any:
        return lambda **options: InMemoryLightningStore(**options)


class TestSqliteStore(StoreConformance):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Any:
        return lambda **options: SqliteLightningStore(tmp_path / "store.db", **options)


class TestHttpStore(StoreConformance):
    """The whole suite through a live server (real HTTP on 127.0.0.1, with a token) over SQLite."""

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Any:
        from pydantic import SecretStr

        from agl.core.server import ServerSettings, create_app
        from agl.core.store.http import HttpLightningStore
        from agl.core.testing.server import ServingThread

        running: list[tuple[ServingThread, SqliteLightningStore]] = []

        def make(**options: Any) -> HttpLightningStore:
            backing = SqliteLightningStore(tmp_path / f"server-{len(running)}.db", **options)
            settings = ServerSettings(token=SecretStr("conformance-token"))
            server = ServingThread(create_app(settings, backing)).start()
            running.append((server, backing))
            return HttpLightningStore(server.url, token="conformance-token")

        yield make
        for server, backing in running:
            server.stop()
            asyncio.run(backing.close())
