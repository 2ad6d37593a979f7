"""The SQLite store shared by real OS processes: claiming, crashes, and cross-process waiting."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agl.core.store import SqliteLightningStore
from agl.core.testing import ManualClock
from agl.core.types import RolloutConfig, RolloutRequest


def start_python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


DRAIN = """
    import asyncio, sys
    from agl.core.store import SqliteLightningStore

    async def main():
        store = SqliteLightningStore(sys.argv[1], watchdog_interval=None)
        while (item := await store.dequeue_rollout(worker_id=sys.argv[2])) is not None:
            await store.update_attempt(item.rollout_id, "latest", status="succeeded")
            print(item.rollout_id, flush=True)
        await store.close()

    asyncio.run(main())
"""


async def test_processes_claim_each_rollout_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteLightningStore(path, watchdog_interval=None)
    made = await store.enqueue_many_rollouts([RolloutRequest(input=i) for i in range(300)])
    workers = [start_python(DRAIN, str(path), f"w{i}") for i in range(3)]
    claimed: list[str] = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        claimed += out.splitlines()
    assert sorted(claimed) == sorted(r.rollout_id for r in made)  # every one, none twice
    stats = await store.statistics()
    assert stats.rollouts_by_status == {"succeeded": 300}
    assert {w.worker_id for w in await store.query_workers()} == {"w0", "w1", "w2"}
    await store.close()


WRITER = """
    import asyncio, sys
    from agl.core.store import SqliteLightningStore
    from agl.core.testing.conformance import make_span

    async def main():
        store = SqliteLightningStore(sys.argv[1], watchdog_interval=None)
        started = await store.start_rollout({"task": "crash"})
        rollout_id, attempt_id = started.rollout_id, started.attempt.attempt_id
        sequence_id = 0
        while True:
            sequence_id += 1
            await store.add_span(make_span(rollout_id, attempt_id, sequence_id, payload="x" * 2000))
            print(rollout_id, sequence_id, flush=True)  # acknowledged: add_span returned

    asyncio.run(main())
"""


async def test_acknowledged_writes_survive_sigkill_of_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    writer = start_python(WRITER, str(path))
    assert writer.stdout is not None
    acknowledged: list[int] = []
    rollout_id = ""
    while len(acknowledged) < 300:
        line = writer.stdout.readline()
        assert line, writer.stderr.read() if writer.stderr else "writer exited"
        rollout_id, sequence_id = line.split()
        acknowledged.append(int(sequence_id))
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL

    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = SqliteLightningStore(path, watchdog_interval=None)
    stored = {span.sequence_id for span in await store.query_spans(rollout_id)}
    assert set(acknowledged) <= stored
    # The store is usable after the crash: the dead writer's rollout can be finished.
    await store.update_rollout(rollout_id, status="failed")
    await store.close()


CLAIM_AND_DIE = """
    import asyncio, sys
    from agl.core.store import SqliteLightningStore

    async def main():
        store = SqliteLightningStore(sys.argv[1], watchdog_interval=None)
        item = await store.dequeue_rollout(worker_id="doomed")
        print(item.rollout_id, flush=True)
        sys.stdin.readline()  # hold the claim until killed

    asyncio.run(main())
"""


async def test_work_claimed_by_a_dead_worker_goes_back_to_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    clock = ManualClock(start=time.time())
    store = SqliteLightningStore(path, clock=clock, watchdog_interval=None)
    config = RolloutConfig(unresponsive_seconds=30, max_attempts=2, retry_condition=("unresponsive",))
    rollout = await store.enqueue_rollout({"task": 1}, config=config)
    doomed = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CLAIM_AND_DIE), str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert doomed.stdout is not None and doomed.stdout.readline().strip() == rollout.rollout_id
    doomed.kill()
    doomed.wait(timeout=30)

    assert await store.dequeue_rollout() is None  # still claimed by the dead worker
    clock.advance(31)
    assert await store.check_deadlines() == 1
    retry = await store.dequeue_rollout(worker_id="survivor")
    assert retry is not None and (retry.rollout_id, retry.attempt.sequence_id) == (rollout.rollout_id, 2)
    first = (await store.query_attempts(rollout.rollout_id))[0]
    assert (first.worker_id, first.status) == ("doomed", "unresponsive")
    await store.close()


FINISH = """
    import asyncio, sys
    from agl.core.store import SqliteLightningStore

    async def main():
        store = SqliteLightningStore(sys.argv[1], watchdog_interval=None)
        await store.update_rollout(sys.argv[2], status="cancelled")
        await store.close()

    asyncio.run(main())
"""


async def test_wait_for_rollouts_sees_another_process_finish_a_rollout(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteLightningStore(path, watchdog_interval=60)  # the watchdog thread notices other processes
    rollout = await store.enqueue_rollout("x")
    waiter = asyncio.create_task(store.wait_for_rollouts([rollout.rollout_id]))
    finisher = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(FINISH), str(path), rollout.rollout_id
    )
    assert await finisher.wait() == 0
    finished = await asyncio.wait_for(waiter, timeout=20)
    assert [r.status for r in finished] == ["cancelled"]
    await store.close()


async def test_a_rollout_finished_elsewhere_before_the_first_tick_wakes_the_waiter(tmp_path: Path) -> None:
    """The watchdog's first tick with a waiter took the file's change counter as its baseline, so
    a rollout another process finished between the wait's read and that tick went unnoticed and
    ``wait_for_rollouts`` without a timeout hung."""
    path = tmp_path / "store.db"
    store = SqliteLightningStore(path, watchdog_interval=None)  # ticks are run by hand below
    rollout = await store.enqueue_rollout("x")
    waiter = asyncio.create_task(store.wait_for_rollouts([rollout.rollout_id]))
    await asyncio.sleep(0)  # the waiter reads the rollout (still queuing) and waits
    finisher = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(FINISH), str(path), rollout.rollout_id
    )
    assert await finisher.wait() == 0
    store._watchdog_tick()  # what the watchdog thread does every 0.1 s
    finished = await asyncio.wait_for(waiter, timeout=20)
    assert [r.status for r in finished] == ["cancelled"]
    await store.close()


async def test_file_is_wal_and_migrations_apply_once(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    first = SqliteLightningStore(path, watchdog_interval=None)
    rollout = await first.enqueue_rollout("kept")
    await first.close()
    second = SqliteLightningStore(path, watchdog_interval=None)
    assert await second.get_rollout_by_id(rollout.rollout_id) == rollout
    await second.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT name FROM agl_migrations").fetchall() == [("0001_initial",)]
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint"):
            raw.execute("UPDATE rollouts SET status = 'exploded'")
