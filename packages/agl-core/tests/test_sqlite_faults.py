"""The SQLite store facing a real file going wrong: a full disk, a closed store, a file that is
not ours or is from a newer agl, inspection of a copy, and URLs that name another file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import pytest

from agl.core.errors import AglError, StoreUnavailable, StoreUrlError
from agl.core.store import SqliteLightningStore, open_store
from agl.core.testing import ManualClock
from agl.core.types import RolloutConfig

FILL_THE_DISK = """
    import asyncio, os, resource, signal, sys
    from agl.core.errors import AglError
    from agl.core.store import SqliteLightningStore
    from agl.core.testing.conformance import make_span

    async def main():
        store = SqliteLightningStore(sys.argv[1], watchdog_interval=None)
        started = await store.start_rollout({"task": "fill"})
        rollout_id, attempt_id = started.rollout_id, started.attempt.attempt_id
        # The file-size limit stands in for a full disk: writes past it fail with EFBIG.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = os.path.getsize(sys.argv[1] + "-wal") + 200_000
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        size = int(sys.argv[2])
        for batch in range(1, 1000):
            spans = [make_span(rollout_id, attempt_id, batch * size + i, payload="x" * 3000) for i in range(size)]
            try:
                await store.add_many_spans(spans)
            except AglError as error:
                print(type(error).__name__, error, flush=True)
                break
            print("acknowledged", *(span.sequence_id for span in spans), flush=True)
        await store.update_rollout(rollout_id, status="failed")  # a small write still goes in
        print(rollout_id, flush=True)
        await store.close()

    asyncio.run(main())
"""


@pytest.mark.parametrize("batch_size", [5, 1000], ids=["fails-at-commit", "fails-mid-statement"])
async def test_a_full_disk_is_one_clear_error_and_loses_nothing_acknowledged(tmp_path: Path, batch_size: int) -> None:
    """Small batches overflow when the commit writes the log; one larger than SQLite's page
    cache overflows while it is inserted, and SQLite rolls the transaction back itself."""
    path = tmp_path / "store.db"
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FILL_THE_DISK), str(path), str(batch_size)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    *lines, failure, rollout_id = child.stdout.splitlines()
    assert failure.startswith(f"StoreUnavailable store at {path}: "), failure
    acknowledged = {int(sequence_id) for line in lines for sequence_id in line.split()[1:]}

    store = SqliteLightningStore(path, watchdog_interval=None)
    spans = await store.query_spans(rollout_id)
    assert {span.sequence_id for span in spans} == acknowledged  # the failed batch left nothing behind
    rollout = await store.get_rollout_by_id(rollout_id)
    assert rollout is not None and rollout.status == "failed"
    await store.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_a_closed_store_says_so_for_every_call(tmp_path: Path) -> None:
    store = SqliteLightningStore(tmp_path / "store.db", watchdog_interval=None)
    rollout = await store.enqueue_rollout("x")
    await store.close()
    await store.close()  # a second close is harmless
    for call in (
        store.query_rollouts(),
        store.query_spans(rollout.rollout_id, "latest"),
        store.query_span_json(rollout.rollout_id),
        store.query_workers(),
        store.query_resources(),
    ):
        with pytest.raises(AglError, match="is closed"):
            await call


async def test_a_store_from_a_newer_agl_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    await SqliteLightningStore(path, watchdog_interval=None).close()
    with sqlite3.connect(path) as raw:
        raw.execute("INSERT INTO agl_migrations VALUES ('9999_from_the_future', 0)")
    raw.close()
    for read_only in (False, True):
        with pytest.raises(StoreUnavailable, match=rf"{path}: written by a newer agl .*9999_from_the_future"):
            open_store(f"sqlite:///{path}", read_only=read_only)


@pytest.mark.parametrize("read_only", [True, False], ids=["inspecting", "writing"])
def test_opening_another_applications_database_changes_nothing(tmp_path: Path, read_only: bool) -> None:
    """A mistyped ``AGL_STORE`` naming another application's database must not put that file in
    WAL mode and add agl's tables to it."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE notes (text TEXT)")
    raw.close()
    before = path.read_bytes()
    with pytest.raises(StoreUnavailable, match=rf"{path}: not an agl store .*"):
        open_store(f"sqlite:///{path}", read_only=read_only)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


async def test_an_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.touch()  # made by mktemp, or by a tool that reserves the name first
    store = SqliteLightningStore(path, watchdog_interval=None)
    rollout = await store.enqueue_rollout("x")
    assert await store.get_rollout_by_id(rollout.rollout_id) == rollout
    await store.close()


def overwrite_root_pages(path: Path, tables: list[str]) -> None:
    """Damage the file as a failing disk or a torn copy would: the tables' first pages become junk."""
    with closing(sqlite3.connect(path)) as raw:
        page_size = raw.execute("PRAGMA page_size").fetchone()[0]
        roots = [raw.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (t,)).fetchone()[0] for t in tables]
    with path.open("r+b") as file:
        for root in roots:
            file.seek((root - 1) * page_size)
            file.write(b"\xff" * page_size)


@pytest.mark.parametrize("read_only", [True, False], ids=["inspecting", "writing"])
async def test_a_damaged_file_is_one_clear_error_for_every_read(tmp_path: Path, read_only: bool) -> None:
    """SQLite ends a read that meets a damaged page itself; ending it again raised a second, raw
    ``sqlite3.DatabaseError`` that hid the clear one."""
    path = tmp_path / "store.db"
    store = SqliteLightningStore(path, watchdog_interval=None)
    rollout_id = (await store.start_rollout({"task": 1})).rollout_id
    await store.close()
    overwrite_root_pages(path, ["rollouts", "attempts"])
    damaged = SqliteLightningStore(path, watchdog_interval=None, read_only=read_only)
    for call in (
        damaged.statistics(),
        damaged.get_rollout_by_id(rollout_id),
        damaged.get_latest_attempt(rollout_id),
        damaged.query_rollouts(),
        damaged.query_rollouts(limit=1),
    ):
        with pytest.raises(StoreUnavailable, match=rf"{path}: database disk image is malformed"):
            await call
    await damaged.close()


async def test_inspection_reads_and_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    writer = SqliteLightningStore(path, watchdog_interval=None)
    rollout = await writer.enqueue_rollout("x")
    await writer.close()
    reader = open_store(f"sqlite:///{path}", read_only=True)
    assert [r.rollout_id for r in await reader.query_rollouts()] == [rollout.rollout_id]
    with pytest.raises(StoreUnavailable, match=rf"{path}: attempt to write a readonly database"):
        await reader.enqueue_rollout("y")
    await reader.close()


def test_a_hash_in_a_sqlite_url_is_refused_not_cut_off(tmp_path: Path) -> None:
    with pytest.raises(StoreUrlError, match="'#'"):
        open_store(f"sqlite:///{tmp_path}/runs#1.db")
    assert list(tmp_path.iterdir()) == []  # not a store at "runs"


async def test_a_reopened_store_counts_workers_silence_from_its_opening(tmp_path: Path) -> None:
    """A store server restarted after a crash: its workers could not heartbeat while it was down,
    so its first watchdog tick must not mark their attempts unresponsive and requeue running work."""
    path = tmp_path / "restart.db"
    config = RolloutConfig(unresponsive_seconds=30, max_attempts=2, retry_condition=("unresponsive",))
    clock = ManualClock()
    before = SqliteLightningStore(path, clock=clock, watchdog_interval=None)
    await before.enqueue_rollout("task", config=config)
    claimed = await before.dequeue_rollout(worker_id="w")
    await before.close()
    clock.advance(120)  # the server was down for two minutes
    after = SqliteLightningStore(path, clock=clock, watchdog_interval=None)
    try:
        assert await after.check_deadlines() == 0
        clock.advance(31)  # silent for longer than unresponsive_seconds since the store opened
        assert await after.check_deadlines() == 1
        attempt = await after.get_latest_attempt(claimed.rollout_id)
        assert attempt.attempt_id == claimed.attempt.attempt_id and attempt.status == "unresponsive"
    finally:
        await after.close()


async def test_a_resumed_store_counts_workers_silence_from_its_resumption(tmp_path: Path) -> None:
    """A machine that slept (or a stopped server): the clock jumps between two watchdog ticks, and
    heartbeats could not arrive meanwhile, so the tick after must not requeue running work."""
    config = RolloutConfig(unresponsive_seconds=30, timeout_seconds=3600, max_attempts=2)
    clock = ManualClock()
    store = SqliteLightningStore(tmp_path / "suspended.db", clock=clock, watchdog_interval=None)
    try:
        await store.enqueue_rollout("task", config=config)
        claimed = await store.dequeue_rollout(worker_id="w")
        store._watchdog_tick()
        clock.advance(600)  # asleep for ten minutes
        store._watchdog_tick()
        assert (await store.get_latest_attempt(claimed.rollout_id)).status == "preparing"
        for _ in range(31):  # then silent for longer than unresponsive_seconds, awake, ticking
            clock.advance(1)
            store._watchdog_tick()
        assert (await store.get_latest_attempt(claimed.rollout_id)).status == "unresponsive"
    finally:
        await store.close()
