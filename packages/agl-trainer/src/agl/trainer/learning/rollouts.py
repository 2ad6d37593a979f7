"""Run tasks as rollouts and read back what training needs: reward, status and triplets per rollout.

This is the one module of `learning` that talks to the store (through the algorithm's context).
Triplets come from the latest attempt's spans with `spans_to_triplets` (calls merged where their
token ids continue exactly), so their ids are those the engine produced and the proxy recorded.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agl.core.adapters import spans_to_triplets
from agl.core.tracing import semconv
from agl.core.types import Rollout, RolloutMode
from agl.core.types.triplets import Triplet
from agl.trainer.algorithm import AlgorithmContext
from agl.trainer.learning.advantages import group_advantages

TEMPERATURE = f"{semconv.REQUEST_PREFIX}temperature"
TOP_P = f"{semconv.REQUEST_PREFIX}top_p"

FailurePolicy = Literal["zero", "drop_group"]
"""What a failed rollout (not succeeded, or no reward) does: ``zero`` scores it 0 and still trains on
what it generated (a crash is then something to unlearn); ``drop_group`` leaves its whole task
group out of the step (an infrastructure failure then teaches nothing)."""


@dataclass
class Scored:
    """One finished rollout: its task's group, its reward (``None`` when it reported none)."""

    rollout: Rollout
    group: int
    reward: float | None
    triplets: list[Triplet] = field(default_factory=list)
    temperatures: set[float] = field(default_factory=set)
    """The sampling temperatures its LLM calls ran at, as the proxy recorded them (1, OpenAI's
    default, which agl's engines apply, for a call that named none)."""
    top_ps: set[float] = field(default_factory=set)
    """Their top-p, the same way (1 when not named)."""

    @property
    def failed(self) -> bool:
        return self.rollout.status != "succeeded" or self.reward is None


async def run_groups(
    context: AlgorithmContext,
    tasks: Sequence[Any],
    n: int,
    mode: RolloutMode,
    *,
    resources_id: str | None,
    timeout: float | None = None,
    with_triplets: bool = True,
    first_group: int = 0,
) -> list[Scored]:
    """``n`` rollouts of each task (group ``first_group + i`` = task ``i``), finished, with rewards
    and triplets.

    Within a group, in the order of the tokens generated rather than of the rollouts: which of a
    task's identical requests got which sample depends on when each arrived, and a seeded run
    must see the same rollouts in the same order every time."""
    queued = [task for task in tasks for _ in range(n)]
    rollouts = await context.enqueue_and_wait(queued, mode, resources_id, timeout=timeout)
    scored = []
    for index, rollout in enumerate(rollouts):
        spans = await context.store.query_spans(rollout.rollout_id, "latest")
        reward = await context.reward(rollout)
        triplets = spans_to_triplets(spans, merge=True) if with_triplets and spans else []
        calls = [span.attributes for span in spans if span.attributes.get(semconv.LLM_CALL) is True]
        temperatures = {_number(call.get(TEMPERATURE), 1.0) for call in calls}
        top_ps = {_number(call.get(TOP_P), 1.0) for call in calls}
        scored.append(Scored(rollout, first_group + index // n, reward, triplets, temperatures, top_ps))
    scored.sort(key=lambda s: (s.group, [t.response_token_ids or [] for t in s.triplets]))
    return scored


def apply_failure_policy(scored: list[Scored], policy: FailurePolicy) -> tuple[list[Scored], int]:
    """The rollouts to train on, and how many failed; ``zero`` gives failures reward 0."""
    if policy not in ("zero", "drop_group"):
        raise ValueError(f"failure policy must be 'zero' or 'drop_group', not {policy!r}")
    failed = [s for s in scored if s.failed]
    if policy == "drop_group":
        bad_groups = {s.group for s in failed}
        return [s for s in scored if s.group not in bad_groups], len(failed)
    for s in failed:
        s.reward = 0.0
    return scored, len(failed)


def tied_groups(scored: Sequence[Scored]) -> set[int]:
    """Groups whose advantages are all 0, so they teach nothing: rewards all alike, or apart by no more
    than `group_advantages` ignores (rounding noise). A rollout without a reward counts 0."""
    advantages = group_advantages([s.reward or 0.0 for s in scored], [s.group for s in scored])
    groups = {s.group for s in scored}
    return groups - {s.group for s, advantage in zip(scored, advantages, strict=True) if advantage != 0.0}


def mean_reward(scored: Sequence[Scored]) -> float:
    """Mean reward, a rollout without one counting 0 (a failure is not left out of the average)."""
    return sum(s.reward or 0.0 for s in scored) / len(scored) if scored else 0.0


async def validation_reward(context: AlgorithmContext, resources_id: str | None, timeout: float | None) -> float | None:
    """Mean reward over the val dataset, one rollout per task (failures count 0); None without one."""
    if not context.val_dataset:
        return None
    scored = await run_groups(
        context, context.val_dataset, 1, "val", resources_id=resources_id, timeout=timeout, with_triplets=False
    )
    return mean_reward(scored)


def task_cycle(tasks: Sequence[Any], seed: int) -> Iterator[Any]:
    """Tasks in a seeded random order, reshuffled each pass, forever (how `grpo` and `verl` draw them)."""
    order = list(range(len(tasks)))
    shuffle = random.Random(seed)
    while True:
        shuffle.shuffle(order)
        for index in order:
            yield tasks[index]


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
