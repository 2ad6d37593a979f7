from __future__ import annotations

from pathlib import Path

import pytest

from agl.core import StoreUrlError, open_store
from agl.core.errors import StoreUnavailable
from agl.core.store import InMemoryLightningStore, SqliteLightningStore


async def test_memory_url() -> None:
    store = open_store("memory://", watchdog_interval=None)
    assert isinstance(store, InMemoryLightningStore)
    await store.close()


async def test_sqlite_relative_and_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///data/a.db")
    assert isinstance(relative, SqliteLightningStore) and relative.path == Path("data/a.db")
    await relative.close()
    absolute = open_store(f"sqlite:///{tmp_path}/b.db?synchronous=full&busy_timeout=2")
    assert isinstance(absolute, SqliteLightningStore) and absolute.path == tmp_path / "b.db"
    assert absolute._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    await absolute.close()


async def test_default_is_sqlite_in_dot_agl_unless_agl_store_says_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AGL_STORE", raising=False)
    store = open_store()
    assert isinstance(store, SqliteLightningStore) and (tmp_path / ".agl" / "store.db").exists()
    await store.close()
    monkeypatch.setenv("AGL_STORE", "memory://")
    other = open_store()
    assert isinstance(other, InMemoryLightningStore)
    await other.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgres://db/agl", "unknown scheme 'postgres'"),
        ("store.db", "no scheme"),
        ("sqlite://", "needs a file path"),
        ("sqlite://host/x.db", "unexpected host"),
        ("sqlite:///x.db?synchronous=sometimes", "synchronous must be"),
        ("sqlite:///x.db?busy_timeout=soon", "busy_timeout must be"),
        ("sqlite:///x.db?color=blue", "unknown option 'color'"),
        ("memory://somewhere", "takes no path"),
        ("http://[::1", "Invalid IPv6"),
    ],
)
def test_bad_urls_are_clear_errors(url: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreUrlError, match=message) as caught:
        open_store(url)
    assert url in str(caught.value)


@pytest.mark.parametrize("where", ["under a file", "a folder", "not a database"])
def test_a_sqlite_path_that_cannot_be_a_store_is_one_clear_error(tmp_path: Path, where: str) -> None:
    (tmp_path / "plain.txt").write_text("not a database, not a folder\n" * 100)
    (tmp_path / "folder.db").mkdir()
    path = {
        "under a file": tmp_path / "plain.txt" / "store.db",
        "a folder": tmp_path / "folder.db",
        "not a database": tmp_path / "plain.txt",
    }[where]
    with pytest.raises(StoreUnavailable, match=f"store at {path}"):
        open_store(f"sqlite:///{path}", watchdog_interval=None)
