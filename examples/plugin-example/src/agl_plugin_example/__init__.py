"""``random_search``: try each prompt variant on the validation set, publish the best."""

from __future__ import annotations

from typing import Any

from agl.core.types import PromptTemplate
from agl.trainer import Algorithm, AlgorithmContext, hookimpl

RESOURCE = "prompt"


class RandomSearch(Algorithm):
    """Each variant (a template string) replaces the ``prompt`` resource and runs on the val set
    (the train set if there is none); step ``i`` reports variant ``i``'s ``val/reward_mean``. The
    variant with the highest mean reward (the first, on a tie) is published as the next version of
    the fit's resources. Returns ``{"best_prompt": ..., "best_reward": ...}``."""

    name = "random_search"

    def __init__(self, variants: list[str], *, timeout: float | None = None) -> None:
        if not variants:
            raise ValueError("random_search needs at least one prompt variant")
        self.variants = list(variants)
        self.timeout = timeout

    async def run(self, context: AlgorithmContext) -> dict[str, Any]:
        base = dict(context.initial_resources or {})
        current = base.get(RESOURCE)
        engine = current.engine if isinstance(current, PromptTemplate) else "f-string"
        tasks = context.val_dataset or context.train_dataset
        best: tuple[float, PromptTemplate] | None = None
        for step, variant in enumerate(self.variants):
            prompt = PromptTemplate(template=variant, engine=engine)
            trial = await context.store.add_resources({**base, RESOURCE: prompt})
            rollouts = await context.enqueue_and_wait(tasks, "val", trial.resources_id, timeout=self.timeout)
            rewards = [await context.reward(rollout) for rollout in rollouts]
            mean = sum(r or 0.0 for r in rewards) / len(rewards) if rewards else 0.0
            context.log_step(step, {"val/reward_mean": mean})
            if best is None or mean > best[0]:
                best = (mean, prompt)
        assert best is not None
        await context.publish_resources({**base, RESOURCE: best[1]})
        return {"best_prompt": best[1].template, "best_reward": best[0]}


@hookimpl
def agl_register_algorithms(register: Any) -> None:
    register("random_search", RandomSearch)
