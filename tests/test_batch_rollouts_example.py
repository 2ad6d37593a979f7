"""`examples/batch_rollouts.py` as a user runs it: worker processes share the default SQLite
store, and the attempts that crash or hang on purpose are retried or timed out by the store, so
every rollout still ends, as the example promises."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from agl.core import open_store

EXAMPLE = Path(__file__).parents[1] / "examples" / "batch_rollouts.py"


def test_every_rollout_ends_after_the_store_retries_the_crashes_and_times_out_the_hang(tmp_path: Path) -> None:
    # Of 12 tasks, the example makes tasks 3 and 10 crash and task 5 hang on their first attempt.
    finished = subprocess.run(
        [sys.executable, str(EXAMPLE), "--tasks", "12", "--workers", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "12/12 rollouts succeeded, 0 failed" in finished.stdout, finished.stdout

    async def histories() -> list[list[str]]:
        store = open_store(f"sqlite:///{tmp_path / '.agl' / 'store.db'}", read_only=True)
        try:
            rollouts = await store.query_rollouts()
            return [[a.status for a in await store.query_attempts(r.rollout_id)] for r in rollouts]
        finally:
            await store.close()

    found = sorted(histories_ for histories_ in asyncio.run(histories()))
    assert found.count(["succeeded"]) == 9
    assert found.count(["failed", "succeeded"]) == 2
    assert found.count(["timeout", "succeeded"]) == 1
