"""``baseline``: run every task once with the initial resources and report the mean reward.

Nothing is trained; it measures where an agent starts, and `Trainer.dev` uses it as a smoke test.
"""

from __future__ import annotations

from typing import Any

from agl.trainer.algorithm import Algorithm, AlgorithmContext


class Baseline(Algorithm):
    """Runs the train dataset (mode ``train``), then the val dataset (mode ``val``), once each.

    Reports one step (0) with, per mode, ``<mode>/reward_mean`` (over the rollouts that have a
    reward; absent if none has), ``<mode>/rollouts`` and ``<mode>/succeeded``. Returns the metrics.
    """

    name = "baseline"

    def __init__(self, *, timeout: float | None = None) -> None:
        self.timeout = timeout

    async def run(self, context: AlgorithmContext) -> dict[str, float]:
        metrics: dict[str, float] = {}
        datasets: list[tuple[Any, Any]] = [("train", context.train_dataset), ("val", context.val_dataset)]
        for mode, dataset in datasets:
            if not dataset:
                continue
            rollouts = await context.enqueue_and_wait(dataset, mode, context.resources_id, timeout=self.timeout)
            rewards = [reward for reward in [await context.reward(r) for r in rollouts] if reward is not None]
            metrics[f"{mode}/rollouts"] = float(len(rollouts))
            metrics[f"{mode}/succeeded"] = float(sum(r.status == "succeeded" for r in rollouts))
            if rewards:
                metrics[f"{mode}/reward_mean"] = sum(rewards) / len(rewards)
        context.log_step(0, metrics)
        return metrics
