"""The watchdog wakes on demand, and a large SQLite write is checkpointed before the next begins.

Why it matters: SQLite starts its write-ahead log over only when a write begins after a checkpoint
that copied all of it; under a stream of span batches the log otherwise grows until the backstop
checkpoint runs inside a request (`SqliteLightningStore._checkpoint_soon`).
"""

from __future__ import annotations

import asyncio
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
