"""The watchdog wakes on demand, and a large SQLite write is checkpointed before the next begins.

Why it matters: SQLite starts its write-ahead log over only when a write begins after a checkpoint
that copied all of it; under a stream of span batches the log otherwise grows until the backstop
checkpoint runs inside a request (`SqliteLightningStore._checkpoint_soon`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from agl.core.store import SqliteLightningStore, lifecycle
from agl.core.store.sqlite import CHECKPOINT_NOW_ROWS
from agl.core.store.watchdog import Watchdog
from agl.core.testing.conformance import make_span
from agl.core.types import Span

NEVER = 3600.0  # a period no test outlives: only `wake` can make these watchdogs tick


def test_wake_ticks_at_once_and_stop_ends_the_thread() -> None:
    ticked = threading.Event()
    watchdog = Watchdog(ticked.set, NEVER, "test-watchdog")
    watchdog.start()
    watchdog.wake()
    assert ticked.wait(10)
    watchdog.stop()
    assert not any(thread.name == "test-watchdog" for thread in threading.enumerate())


class ObservedStore(SqliteLightningStore):
    """The real store; each watchdog tick (the checkpoint included) is signalled when it ends."""

    ticked: threading.Event

    def _watchdog_tick(self) -> None:
        super()._watchdog_tick()
        self.ticked.set()


def test_a_large_batch_is_checkpointed_so_the_next_starts_the_log_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lifecycle, "WATCHDOG_PERIOD", NEVER)
    ObservedStore.ticked = threading.Event()
    store = ObservedStore(tmp_path / "store.db")
    wal = tmp_path / "store.db-wal"

    async def scenario() -> None:
        claimed = await store.start_rollout({"task": 1})
        rollout_id, attempt_id = claimed.rollout_id, claimed.attempt.attempt_id
        payload = "x" * 4000

        def batch(first: int) -> list[Span]:
            return [make_span(rollout_id, attempt_id, first + i, text=payload) for i in range(CHECKPOINT_NOW_ROWS)]

        await store.add_many_spans(batch(1))
        assert ObservedStore.ticked.wait(10), "a large write did not wake the checkpoint"
        one_batch = wal.stat().st_size
        await store.add_many_spans(batch(1 + CHECKPOINT_NOW_ROWS))
        # Started over: the second batch overwrote the first one's frames instead of following them.
        assert wal.stat().st_size < 1.5 * one_batch
        assert len(await store.query_spans(rollout_id)) == 2 * CHECKPOINT_NOW_ROWS
        await store.close()

    asyncio.run(scenario())


async def test_the_checkpoint_finds_the_store_after_the_process_changes_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default store path is relative (``.agl/store.db``) and the checkpoint's connection is
    opened at the first tick: an agent that changed folder before then made it open (or fail to
    open, at every tick) a store in the new folder, and the real log was never checkpointed."""
    (tmp_path / "project").mkdir()
    (tmp_path / "workspace").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    store = SqliteLightningStore("store.db", watchdog_interval=None)  # ticks are run by hand below
    await store.enqueue_rollout("x")
    file = tmp_path / "project" / "store.db"
    before = file.stat().st_size
    monkeypatch.chdir(tmp_path / "workspace")
    store._watchdog_tick()  # what the watchdog thread does every 0.1 s
    assert list((tmp_path / "workspace").iterdir()) == []
    assert file.stat().st_size > before  # the log's pages were copied into the store's file
    await store.close()


def test_a_failure_at_every_tick_is_logged_once_not_ten_times_a_second(caplog: pytest.LogCaptureFixture) -> None:
    """A full disk fails the checkpoint at every tick: a traceback each time flooded the log (on
    that same full disk). A different failure is still logged at once."""
    full = sqlite3.OperationalError("database or disk is full")
    outcomes = [full, full, full, sqlite3.OperationalError("database is locked")]
    done = threading.Event()

    def tick() -> None:
        if not outcomes:
            done.set()
            return
        watchdog.wake()  # the next tick follows at once
        raise outcomes.pop(0)

    watchdog = Watchdog(tick, NEVER, "test-watchdog")
    watchdog.start()
    watchdog.wake()
    assert done.wait(10)
    watchdog.stop()
    logged = [r.exc_info[1] for r in caplog.records if r.name == "agl.core.store.watchdog" and r.exc_info]
    assert [str(error) for error in logged] == ["database or disk is full", "database is locked"]
