"""What the trainer holds, whatever runs its runners: a `RunnerGroup`.

The trainer only starts the group, wakes it when rollouts are queued, watches it while the
algorithm runs, and stops it. Everything else (where the agent runs, how the store is reached)
is the mode's business, so a new mode is one module with one class.
"""

from __future__ import annotations

import abc
from contextlib import suppress

from agl.core.errors import InvalidTransition
from agl.core.store.base import LightningStore

ACTIVE = ("preparing", "running")


class RunnerLost(RuntimeError):
    """Runners stopped while the algorithm still needed them (a bug or a dead machine, not a
    failed rollout: those are the store's business)."""


class RunnerGroup(abc.ABC):
    """``n`` runners executing one agent against the trainer's store."""

    mode: str = ""

    @abc.abstractmethod
    async def start(self, n: int) -> None:
        """Start ``n`` runners; returns once they are launched (not necessarily dequeuing yet)."""

    @abc.abstractmethod
    def wake(self) -> None:
        """Rollouts were just queued: let idle runners ask the store now rather than at their next poll.
        Best effort; a mode that cannot reach its runners quickly may do nothing."""

    @abc.abstractmethod
    async def watch(self) -> None:
        """The alive check: wait while the runners are healthy (a mode may replace a lost runner
        meanwhile); raise `RunnerLost` once they cannot go on. Cancelled when the algorithm ends."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop every runner and wait until it is gone; rollouts in flight end as failed attempts.
        Safe to call after a failed `start` and more than once."""


def check_not_negative(**options: float) -> None:
    """Options that count or wait (``stop_seconds``, ``max_restarts``): below 0 means nothing sensible."""
    for name, value in options.items():
        if value < 0:
            raise ValueError(f"runner option {name!r} must be at least 0, not {value}")


async def fail_attempts_of(store: LightningStore, worker_id: str, reason: str) -> int:
    """Fail the attempts a runner that is known dead still holds, so the rollouts' retry config
    acts now rather than after a heartbeat deadline (which only ``unresponsive_seconds`` sets).
    Returns how many."""
    failed = 0
    for rollout in await store.query_rollouts(status_in=ACTIVE):
        attempt = await store.get_latest_attempt(rollout.rollout_id)
        if attempt is None or attempt.worker_id != worker_id or attempt.is_terminal:
            continue
        with suppress(InvalidTransition):  # a deadline ended it meanwhile
            await store.update_attempt(
                rollout.rollout_id, attempt.attempt_id, status="failed", metadata={"error": reason}
            )
            failed += 1
    return failed
