"""Mode ``ray`` on a local Ray cluster (the ``ray`` extra): the small job every mode runs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_runner_modes import LIMIT, NEVER, TRAIN, VAL, job_rollouts, wait_for_files

from agl.core import open_store
from agl.core.types import RolloutConfig
from agl.trainer import Trainer
from agl.trainer.runners.ray_actors import RayRunners

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


async def test_ray_actors_complete_the_same_small_job(local_cluster: None, tmp_path: Path, tracing: None) -> None:
    store = open_store(f"sqlite:///{tmp_path}/store.db")
    try:
        trainer = Trainer(
            "baseline",
            store=store,
            n_runners=2,
            agent="agents_for_runner_tests:double",
            runner_mode="ray",
            runner_options={"poll_seconds": NEVER},  # the val rollouts reach idle actors only by a wake-up
        )
        metrics = await asyncio.wait_for(trainer.fit_async(None, TRAIN, VAL), LIMIT)
        assert metrics["train/succeeded"] == 4.0 and metrics["train/reward_mean"] == pytest.approx(1.75)
        assert metrics["val/reward_mean"] == 6.0
        rollouts = await job_rollouts(store)
        assert len(rollouts) == 5 and all(r.status == "succeeded" for r in rollouts)
        workers = {(await store.get_latest_attempt(r.rollout_id)).worker_id for r in rollouts}  # type: ignore[union-attr]
        assert workers <= {w.worker_id for w in await store.query_workers()} and len(workers) >= 1
        assert any(span.name == "agent.rollout" for span in await store.query_spans(rollouts[0].rollout_id))
        assert ray.is_initialized()  # the test's session is left alone
    finally:
        await store.close()


async def test_a_dead_actor_is_replaced_and_its_rollout_retried(
    local_cluster: None, tmp_path: Path, tracing: None
) -> None:
    signals = tmp_path / "signals"
    signals.mkdir()
    store = open_store(f"sqlite:///{tmp_path}/store.db")
    try:
        trainer = Trainer(
            "baseline",
            store=store,
            agent="agents_for_runner_tests:announce_then_hang",
            runner_mode="ray",
            rollout_config=RolloutConfig(max_attempts=2, retry_condition=("failed",)),
        )
        fit = asyncio.ensure_future(trainer.fit_async(None, [{"signals": str(signals), "hang_attempts": 1}]))
        await wait_for_files(signals, 1)
        assert isinstance(trainer.runners, RayRunners)
        ray.kill(trainer.runners.actors[0])
        metrics = await asyncio.wait_for(fit, LIMIT)
        assert metrics["train/succeeded"] == 1.0
        [rollout] = await job_rollouts(store)
        first, second = await store.query_attempts(rollout.rollout_id)
        assert first.status == "failed" and "Ray runner actor" in first.metadata["error"]
        assert second.status == "succeeded" and second.worker_id != first.worker_id
        assert trainer.runners.restarts == 1
    finally:
        await store.close()
