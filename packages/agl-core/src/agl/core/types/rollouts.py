"""Rollouts (one task run to completion) and attempts (one try at it), with their state machines.

Rollout: queuing → preparing → running → succeeded | failed | cancelled, and requeuing when a
failed attempt may be retried. Attempt: preparing → running → succeeded | failed | timeout |
unresponsive. Terminal states are sticky: leaving one raises `InvalidTransition`.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from agl.core.errors import InvalidInput, InvalidTransition
from agl.core.types.fields import Id

RolloutStatus = Literal["queuing", "preparing", "running", "succeeded", "failed", "cancelled", "requeuing"]
AttemptStatus = Literal["preparing", "running", "succeeded", "failed", "timeout", "unresponsive"]
RolloutMode = Literal["train", "val", "test"]

ROLLOUT_STATUSES: tuple[str, ...] = get_args(RolloutStatus)
ATTEMPT_STATUSES: tuple[str, ...] = get_args(AttemptStatus)
ROLLOUT_MODES: tuple[str, ...] = get_args(RolloutMode)

TERMINAL_ROLLOUT_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
TERMINAL_ATTEMPT_STATUSES = frozenset({"succeeded", "failed", "timeout", "unresponsive"})
QUEUED_ROLLOUT_STATUSES = frozenset({"queuing", "requeuing"})
ACTIVE_ATTEMPT_STATUSES = frozenset({"preparing", "running"})

_ROLLOUT_TRANSITIONS: dict[str, frozenset[str]] = {
    "queuing": frozenset({"preparing", "cancelled", "failed"}),
    "requeuing": frozenset({"preparing", "cancelled", "failed"}),
    "preparing": frozenset({"running", "succeeded", "failed", "cancelled", "requeuing"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "requeuing"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
_ATTEMPT_TRANSITIONS: dict[str, frozenset[str]] = {
    "preparing": frozenset({"running"}) | TERMINAL_ATTEMPT_STATUSES,
    "running": TERMINAL_ATTEMPT_STATUSES,
    **{status: frozenset() for status in TERMINAL_ATTEMPT_STATUSES},
}


def check_status(kind: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise `InvalidInput` naming the bad value and the allowed ones."""
    if value not in allowed:
        raise InvalidInput(f"invalid {kind} {value!r}; expected one of {', '.join(allowed)}")


def check_rollout_transition(rollout_id: str, current: str, requested: str) -> None:
    """Allow `requested` from `current` or raise; staying in the same state is always allowed."""
    check_status("rollout status", requested, ROLLOUT_STATUSES)
    if requested != current and requested not in _ROLLOUT_TRANSITIONS[current]:
        raise InvalidTransition("rollout", rollout_id, current, requested)


def check_attempt_transition(attempt_id: str, current: str, requested: str) -> None:
    check_status("attempt status", requested, ATTEMPT_STATUSES)
    if requested != current and requested not in _ATTEMPT_TRANSITIONS[current]:
        raise InvalidTransition("attempt", attempt_id, current, requested)


class RolloutConfig(BaseModel):
    """How long a rollout may take and when a failed attempt is retried."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    timeout_seconds: float | None = Field(default=None, gt=0)
    """An attempt running longer than this (from its start) is marked ``timeout``."""
    unresponsive_seconds: float | None = Field(default=None, gt=0)
    """An attempt with no heartbeat or span for this long is marked ``unresponsive``."""
    max_attempts: int = Field(default=1, ge=1, le=1_000_000)
    retry_condition: tuple[AttemptStatus, ...] = ()
    """Attempt end states that requeue the rollout while attempts remain."""


class Rollout(BaseModel):
    """One task to run: its input, the resources version to use, and where it stands."""

    model_config = ConfigDict(frozen=True)

    rollout_id: str
    input: Any
    mode: RolloutMode | None = None
    resources_id: str | None = None
    status: RolloutStatus = "queuing"
    config: RolloutConfig = RolloutConfig()
    metadata: dict[str, Any] = Field(default_factory=dict)
    start_time: float
    end_time: float | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_ROLLOUT_STATUSES


class Attempt(BaseModel):
    """One try at a rollout by one worker; ``sequence_id`` counts tries from 1."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    rollout_id: str
    attempt_id: str
    sequence_id: int = Field(ge=1, le=2**63 - 1)
    status: AttemptStatus = "preparing"
    worker_id: str | None = None
    start_time: float
    end_time: float | None = None
    last_heartbeat_time: float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_ATTEMPT_STATUSES


class AttemptedRollout(Rollout):
    """A rollout handed to a worker together with the attempt it should report on."""

    attempt: Attempt


class RolloutRequest(BaseModel):
    """One item of `LightningStore.enqueue_many_rollouts`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: Any
    mode: RolloutMode | None = None
    resources_id: str | None = None
    config: RolloutConfig | None = None
    metadata: dict[str, Any] | None = None
    rollout_id: Id | None = None
    """Client-chosen id: enqueueing the same id twice returns the first rollout (idempotent)."""


def rollout_status_after_attempt(attempt: Attempt, config: RolloutConfig) -> RolloutStatus:
    """The rollout status implied by its latest attempt, applying the retry policy."""
    status = attempt.status
    if status in ACTIVE_ATTEMPT_STATUSES:
        return status
    if status == "succeeded":
        return "succeeded"
    if status in config.retry_condition and attempt.sequence_id < config.max_attempts:
        return "requeuing"
    return "failed"
