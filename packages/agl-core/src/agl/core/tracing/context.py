"""The rollout a piece of code runs for, carried in a context variable.

The runner enters `rollout_context` around an agent; every span started inside (in this thread,
in tasks it spawns, and in threads started with `run_in_context`) is stamped with the rollout,
the attempt and the next sequence id of that attempt.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class ActiveRollout:
    rollout_id: str
    attempt_id: str
    first_sequence_id: int = 1
    _next: int = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self._next = self.first_sequence_id

    def next_sequence_id(self) -> int:
        with self._lock:  # spans start in several threads of one attempt
            sequence_id = self._next
            self._next += 1
            return sequence_id

    @property
    def used(self) -> bool:
        """Whether any span was stamped with this rollout."""
        return self._next > self.first_sequence_id


_current: contextvars.ContextVar[ActiveRollout | None] = contextvars.ContextVar("agl_rollout", default=None)


def current_rollout() -> ActiveRollout | None:
    return _current.get()


@contextmanager
def rollout_context(rollout_id: str, attempt_id: str, *, first_sequence_id: int = 1) -> Iterator[ActiveRollout]:
    """Everything started inside belongs to this rollout and attempt."""
    active = ActiveRollout(rollout_id, attempt_id, first_sequence_id)
    token = _current.set(active)
    try:
        yield active
    finally:
        _current.reset(token)


def run_in_context(function: Callable[P, R]) -> Callable[P, R]:
    """Bind ``function`` to the caller's context (rollout and OpenTelemetry span), for another thread."""
    context = contextvars.copy_context()

    def bound(*args: P.args, **kwargs: P.kwargs) -> R:
        return context.run(function, *args, **kwargs)

    return bound
