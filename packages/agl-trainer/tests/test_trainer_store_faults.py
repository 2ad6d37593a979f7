"""The store server dying under a fit: the fit ends with its own outcome and every fit-end hook runs."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from agl.core import open_store
from agl.core.agent import rollout
from agl.core.server.app import create_app
from agl.core.server.settings import ServerSettings
from agl.core.store.http import HttpLightningStore
from agl.core.testing.server import ServingThread
from agl.trainer import Algorithm, AlgorithmContext, Trainer, hookimpl


@rollout
def one(task: Any) -> float:
    return 1.0


class StopsTheStoreServer(Algorithm):
    """Logs a step, then the store server goes away (a crash, a lost machine) before the fit ends."""

    def __init__(self, server: ServingThread, fail: bool) -> None:
        self.server, self.fail = server, fail

    async def run(self, context: AlgorithmContext) -> str:
        context.log_step(1, {"train/reward_mean": 0.5})
        self.server.stop()
        if self.fail:
            raise RuntimeError("the algorithm failed")
        return "trained"


class FitEnds:
    def __init__(self) -> None:
        self.results: list[Any] = []

    @hookimpl
    def agl_fit_end(self, result: Any) -> None:
        self.results.append(result)


@pytest.mark.parametrize("fail", [False, True], ids=["succeeded", "failed"])
async def test_a_store_gone_at_the_end_of_a_fit_keeps_its_outcome_and_ends_it(
    fail: bool, tracing: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Marking the training run finished was the last store call, unguarded: its `StoreUnavailable`
    replaced the fit's own outcome (a finished training raised; a failed one hid its error) and
    skipped ``agl_fit_end``, so metrics.jsonl's chart and the progress display were never finished."""
    backing = open_store("memory://", watchdog_interval=None)
    server = ServingThread(create_app(ServerSettings(port=0), backing)).start()
    store = HttpLightningStore(server.url, retry_seconds=0.2)
    ends = FitEnds()
    trainer = Trainer(StopsTheStoreServer(server, fail), store=store, record_steps=True, plugins=[ends])
    try:
        with caplog.at_level(logging.WARNING, logger="agl.trainer"):
            if fail:
                with pytest.raises(RuntimeError, match="the algorithm failed"):
                    await trainer.fit_async(one, [{"x": 1}])
            else:
                assert await trainer.fit_async(one, [{"x": 1}]) == "trained"
    finally:
        await store.close()
        await backing.close()
    assert len(ends.results) == 1
    assert isinstance(ends.results[0], RuntimeError) if fail else ends.results == ["trained"]
    assert any("could not mark the training run" in record.getMessage() for record in caplog.records)
