"""Both built-in backends pass the whole conformance suite."""

from __future__ import annotations

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
