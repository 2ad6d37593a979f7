"""The `verl` plugin's scheduling options: synchronous or one-step-off training, staleness, failures.

Weights carry a version: 0 is the initial model, and each optimizer update adds 1. A batch of
rollouts is *sampled with* the version the engine served while its rollouts ran, and *trained at*
the version the update starts from; its staleness is the difference.

- ``sync``: step ``k`` samples its rollouts with version ``k - 1`` and trains them at version
  ``k - 1``: staleness 0, and the engine idles while the update runs.
- ``one_step_off``: the rollouts of step ``k + 1`` are launched before step ``k``'s update, so they
  run on version ``k - 1`` while the update turns it into ``k``; they are trained at version ``k``:
  staleness 1 (the first step has nothing to overlap with and is 0). New weights reach the engine
  only between batches, when no rollout is in flight, so every rollout of a batch is sampled with
  one version. A bound above 1 is refused: nothing here is built or tested for deeper pipelines.

Staleness is checked when a batch is about to train (`check_staleness`), from the versions the
rollouts actually ran with, not only planned: a batch beyond the bound raises `StaleRollouts`
rather than training silently on older samples than the configuration allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agl.trainer.learning.rollouts import FailurePolicy

TrainingMode = Literal["sync", "one_step_off"]
MODES: tuple[str, ...] = ("sync", "one_step_off")
FAILURE_POLICIES: tuple[str, ...] = ("zero", "drop_group")
_BOUND = {"sync": 0, "one_step_off": 1}


class StaleRollouts(ValueError):
    """A batch sampled with weights older than the configured bound allows."""


@dataclass(frozen=True)
class Schedule:
    """How rollouts and updates interleave, and what failed rollouts do.

    ``mode`` ["sync"] or "one_step_off"; ``max_staleness`` defaults to the mode's bound (0 or 1) and,
    when given, must equal it (an explicit bound documents the choice; any other value is an error);
    ``failed_rollouts`` ["zero"] or "drop_group" (`learning.rollouts.FailurePolicy`: a failed or
    timed-out rollout scores 0, or its whole task group leaves the step); ``rollout_timeout``
    [None] seconds one rollout attempt may run (the store's ``RolloutConfig.timeout_seconds``): past
    it the attempt is marked ``timeout``, its rollout ends failed and the failure policy applies, so
    a hung agent costs a timeout, never a hang of the whole step.
    """

    mode: TrainingMode = "sync"
    max_staleness: int | None = None
    failed_rollouts: FailurePolicy = "zero"
    rollout_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"verl option mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        bound = _BOUND[self.mode]
        if self.max_staleness is None:
            object.__setattr__(self, "max_staleness", bound)
        elif isinstance(self.max_staleness, bool) or not isinstance(self.max_staleness, int):
            raise ValueError(f"verl option max_staleness must be an integer, not {self.max_staleness!r}")
        elif self.max_staleness != bound:
            raise ValueError(
                f"verl option max_staleness must be {bound} with mode {self.mode!r} "
                f"(sync trains on fresh rollouts: 0; one_step_off overlaps one step: 1), not {self.max_staleness}"
            )
        if self.failed_rollouts not in FAILURE_POLICIES:
            raise ValueError(
                f"verl option failed_rollouts must be 'zero' or 'drop_group', not {self.failed_rollouts!r}"
            )
        timeout = self.rollout_timeout
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0):
            raise ValueError(f"verl option rollout_timeout must be a positive number of seconds, not {timeout!r}")

    @property
    def bound(self) -> int:
        """The staleness bound (``max_staleness`` after defaulting)."""
        return int(self.max_staleness or 0)

    def plan(self, steps: int) -> list[StepPlan]:
        """What each of ``steps`` training steps samples with and trains at (see the module doc)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"verl option steps must be a positive integer, not {steps!r}")
        plans = []
        for step in range(1, steps + 1):
            trains_at = step - 1
            sampled_with = trains_at if self.mode == "sync" or step == 1 else step - 2
            prefetch = self.mode == "one_step_off" and step < steps
            plans.append(StepPlan(step, sampled_with, trains_at, prefetch))
        return plans


@dataclass(frozen=True)
class StepPlan:
    """One training step: ``step`` (from 1) trains rollouts sampled with weights version
    ``sampled_with`` at version ``trains_at``; with ``launch_next_first`` the next step's rollouts
    are queued before this update starts (one-step-off)."""

    step: int
    sampled_with: int
    trains_at: int
    launch_next_first: bool

    @property
    def staleness(self) -> int:
        return self.trains_at - self.sampled_with


def check_staleness(sampled_with: list[int], trains_at: int, bound: int) -> int:
    """The batch's staleness (against its oldest rollout); raises `StaleRollouts` beyond ``bound``.

    ``sampled_with`` holds the weights version of each rollout of the batch (the version the engine
    served when the caller queued it; weights change only between batches). A rollout from a *newer* version than the
    update starts from is a bookkeeping error and raises too.
    """
    if not sampled_with:
        return 0
    newest, oldest = max(sampled_with), min(sampled_with)
    if newest > trains_at:
        raise StaleRollouts(f"a rollout was sampled with weights version {newest}, newer than the update's {trains_at}")
    staleness = trains_at - oldest
    if staleness > bound:
        raise StaleRollouts(
            f"rollouts sampled with weights version {oldest} would train at version {trains_at}: "
            f"staleness {staleness} exceeds the bound {bound}"
        )
    return staleness
