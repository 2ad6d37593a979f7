"""`SyncStore`: the store's calls without an event loop, over a SQLite file and a live store server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from agl.core import RolloutNotFound, Span, StoreUnavailable, SyncStore, open_store_sync
from agl.core.server import ServerSettings, create_app
from agl.core.store import SqliteLightningStore
from agl.core.testing.server import ServingThread

TOKEN = "sync-token"


@pytest.fixture(params=["sqlite", "http"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], SyncStore]]:
    """Opens a handle on a SQLite file, or on a live store server over one."""
    if request.param == "sqlite":
        yield lambda: open_store_sync(f"sqlite:///{tmp_path / 'store.db'}")
        return
    backing = SqliteLightningStore(tmp_path / "served.db")
    with ServingThread(create_app(ServerSettings(token=SecretStr(TOKEN)), backing)) as server:
        yield lambda: open_store_sync(server.url, token=TOKEN)
    asyncio.run(backing.close())


def test_a_rollout_from_enqueue_to_its_spans_in_plain_calls(opener: Callable[[], SyncStore]) -> None:
    with opener() as store:
        queued = store.enqueue_rollout({"question": "2+2"})
        claimed = store.dequeue_rollout(worker_id="w1")
        assert claimed.rollout_id == queued.rollout_id
        store.add_span(
            Span(
                rollout_id=claimed.rollout_id,
                attempt_id=claimed.attempt.attempt_id,
                sequence_id=1,
                trace_id="1" * 32,
                span_id="2" * 16,
                name="reward",
                attributes={"agl.reward": 1.0},
            )
        )
        store.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")
        [done] = store.wait_for_rollouts([queued.rollout_id], timeout=30)
        assert done.status == "succeeded"
        assert [span.attributes["agl.reward"] for span in store.query_spans(queued.rollout_id)] == [1.0]
        assert store.get_rollout_by_id("ro-missing") is None
        with pytest.raises(RolloutNotFound):  # the store's own typed error, as from the async call
            store.update_rollout("ro-missing", status="cancelled")


def test_threads_share_one_handle(opener: Callable[[], SyncStore]) -> None:
    with opener() as store:

        def enqueue(thread: int) -> None:
            for n in range(10):
                store.enqueue_rollout({"thread": thread, "n": n})

        threads = [threading.Thread(target=enqueue, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert store.statistics().rollouts == 80


def test_only_store_calls_and_none_after_close(tmp_path: Path) -> None:
    store = open_store_sync(f"sqlite:///{tmp_path / 'store.db'}")
    assert "enqueue_rollout" in dir(store) and store.enqueue_rollout.__doc__
    with pytest.raises(AttributeError, match="has no 'enqueue'; the store calls are add_many_spans"):
        store.enqueue  # noqa: B018
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreUnavailable, match="this SyncStore is closed; statistics was not called"):
        store.statistics()


def test_a_store_the_caller_opened_stays_open(tmp_path: Path) -> None:
    opened = SqliteLightningStore(tmp_path / "store.db")
    with SyncStore(opened) as store:
        store.enqueue_rollout({"q": 1})
    assert asyncio.run(opened.statistics()).rollouts == 1  # still open: the caller closes it
    asyncio.run(opened.close())
