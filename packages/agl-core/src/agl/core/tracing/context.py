"""The rollout a piece of code runs for, carried in a context variable.

The runner enters `rollout_context` around an agent; every span started inside (in this thread,
in tasks it spawns, in threads and thread-pool tasks it starts: `threads`) is stamped with the rollout,
the attempt and a sequence id on the clock every producer of the attempt shares (`sequence_clock`).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from agl.core.ids import sequence_clock

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class ActiveRollout:
    rollout_id: str
    attempt_id: str
    _next: int = field(default=0, init=False, repr=False)  # 0: no span numbered yet
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def next_sequence_id(self) -> int:
        """This producer's next id, never below the shared clock (`sequence_clock`)."""
        now = sequence_clock(time.time())
        with self._lock:  # spans start in several threads of one attempt
            sequence_id = self._next if self._next > now else now
            self._next = sequence_id + 1
            return sequence_id

    @property
    def used(self) -> bool:
        """Whether any span was stamped with this rollout."""
        return self._next > 0


_current: contextvars.ContextVar[ActiveRollout | None] = contextvars.ContextVar("agl_rollout", default=None)
_open = 0  # rollout contexts open in this process, in any thread or task
_open_lock = threading.Lock()


def current_rollout() -> ActiveRollout | None:
    return _current.get()


def rollouts_open() -> bool:
    """Whether any code of this process runs inside `rollout_context` now: code outside one then is
    likely an agent's thread started without `run_in_context`, whose spans miss their rollout."""
    return _open > 0


@contextmanager
def rollout_context(rollout_id: str, attempt_id: str) -> Iterator[ActiveRollout]:
    """Everything started inside belongs to this rollout and attempt, threads it starts included."""
    global _open
    from agl.core.tracing.threads import carry_rollouts_into_threads  # it imports this module

    carry_rollouts_into_threads()
    active = ActiveRollout(rollout_id, attempt_id)
    token = _current.set(active)
    with _open_lock:
        _open += 1
    try:
        yield active
    finally:
        with _open_lock:
            _open -= 1
        _current.reset(token)


def run_in_context(function: Callable[P, R]) -> Callable[P, R]:
    """Bind ``function`` to the caller's context (rollout and OpenTelemetry span), for another thread."""
    context = contextvars.copy_context()

    def bound(*args: P.args, **kwargs: P.kwargs) -> R:
        return context.run(function, *args, **kwargs)

    return bound
