"""Group-relative advantages (GRPO): a rollout is scored against the other rollouts of its task.

Each task runs ``n`` times; a rollout's advantage is its reward minus its group's mean reward,
divided by the group's standard deviation when ``scale`` (population std, ``ddof=0``: a group
[1, 0] gives +1 and -1). A group whose rewards are all equal (or whose std is below ``eps``) gives
0 to every member: it holds no signal about which behaviour is better, and dividing by a
near-zero std would blow floating-point noise up into large updates. The advantage belongs to
the rollout and is broadcast to every triplet (LLM call) of it.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence


def group_advantages(
    rewards: Sequence[float], groups: Sequence[Hashable], *, scale: bool = True, eps: float = 1e-6
) -> list[float]:
    """One advantage per rollout: ``rewards[i]`` against the rollouts sharing ``groups[i]``."""
    if len(rewards) != len(groups):
        raise ValueError(f"{len(rewards)} rewards for {len(groups)} group keys")
    members: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    advantages = [0.0] * len(rewards)
    for indices in members.values():
        values = [float(rewards[i]) for i in indices]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        if std <= eps:
            continue
        for index, value in zip(indices, values, strict=True):
            advantages[index] = (value - mean) / std if scale else value - mean
    return advantages
