"""Threads an agent starts inside a rollout belong to that rollout.

A thread starts with an empty context, so without this the spans, LLM calls and rewards of an
agent's own `threading.Thread` or thread-pool tasks would file under the process's observed
rollout, and the rollout would lose its reward. Once `carry_rollouts_into_threads` has run (the
first `rollout_context` calls it), a thread started from code inside a rollout, and a task such
code submits to a `ThreadPoolExecutor`, run in a copy of the starter's context (the rollout and
the current span), as `asyncio.to_thread` and asyncio tasks do already. Code outside any rollout
starts threads as before. A pool's worker thread is not given the context it started in: each
task brings its own, so a task submitted later, from elsewhere, is not filed under a rollout that
happened to start the worker.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
from concurrent.futures import thread as pool_threads
from typing import Any

from agl.core.tracing.context import current_rollout
from agl.core.tracing.patching import Patch, Patcher

logger = logging.getLogger(__name__)


def _start(wrapped: Any, instance: threading.Thread, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if current_rollout() is not None and getattr(instance, "_target", None) is not pool_threads._worker:
        instance.run = functools.partial(contextvars.copy_context().run, instance.run)  # type: ignore[method-assign]
    return wrapped(*args, **kwargs)


def _submit(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if current_rollout() is not None and args:
        return wrapped(contextvars.copy_context().run, *args, **kwargs)
    return wrapped(*args, **kwargs)


_patcher = Patcher(
    [
        Patch("threading", "Thread", "start", _start),
        Patch("concurrent.futures.thread", "ThreadPoolExecutor", "submit", _submit),
    ],
    logger,
)


def carry_rollouts_into_threads() -> None:
    """Start carrying (idempotent; never undone: outside a rollout the wrappers change nothing)."""
    if not _patcher.active:
        _patcher.activate()
