"""Runner execution modes. `create_runner_group` builds the one a `Trainer` asked for.

- ``async``: asyncio tasks on the trainer's loop, sharing the agent and store objects.
- ``threads``: a thread per runner, each with its own loop; same objects.
- ``processes``: local processes (``python -m agl.trainer.runners.worker``); the agent by
  ``module:object``, the store by URL (a SQLite file or a store server).
- ``command``: asyncio tasks that run a command per rollout; its spans reach a store server.
- ``ray``: Ray actors; the agent by ``module:object``, the store through a store server.

Modes are imported only when chosen (Ray is an extra).
"""

from __future__ import annotations

import importlib
from typing import Any

from agl.core.agent import LitAgent
from agl.core.store.base import LightningStore
from agl.trainer.runners.base import RunnerGroup, RunnerLost

MODES: dict[str, str] = {
    "async": "agl.trainer.runners.inprocess:AsyncRunners",
    "threads": "agl.trainer.runners.threads:ThreadRunners",
    "processes": "agl.trainer.runners.processes:ProcessRunners",
    "command": "agl.trainer.runners.command:CommandRunners",
    "ray": "agl.trainer.runners.ray_actors:RayRunners",
}
DEFAULT_MODE = "async"


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown runner mode {mode!r}; expected one of {', '.join(MODES)}")
    return mode


def create_runner_group(
    mode: str, store: LightningStore, agent: LitAgent | str | None, options: dict[str, Any] | None = None
) -> RunnerGroup:
    """Build (not start) the runners of ``mode``; ``options`` are the mode's own keyword arguments."""
    module_name, _, class_name = MODES[check_mode(mode)].partition(":")
    group_class = getattr(importlib.import_module(module_name), class_name)
    try:
        group: RunnerGroup = group_class(store, agent, **(options or {}))
    except TypeError as error:
        raise TypeError(f"runner mode {mode!r}: {error}") from None
    return group


__all__ = ["DEFAULT_MODE", "MODES", "RunnerGroup", "RunnerLost", "check_mode", "create_runner_group"]
