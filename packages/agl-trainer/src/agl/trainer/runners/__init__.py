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
import inspect
import reprlib
import typing
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

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
    check_options(mode, group_class, options or {})
    try:
        group: RunnerGroup = group_class(store, agent, **(options or {}))
    except TypeError as error:
        raise TypeError(f"runner mode {mode!r}: {error}") from None
    return group


FROM_THE_TRAINER = ("self", "store", "agent")
_STRICT = ConfigDict(strict=True, arbitrary_types_allowed=True)


def check_options(mode: str, group_class: type[RunnerGroup], options: dict[str, Any]) -> None:
    """Each option against the type its mode's class declares: a wrong one (often a string from a
    config file) is one line naming it now, not an error deep in a runner, at its first restart or
    in every rollout later. An unknown one is left to the class's own ``unexpected keyword``."""
    declared = {
        name: parameter.annotation
        for name, parameter in inspect.signature(group_class.__init__).parameters.items()
        if name not in FROM_THE_TRAINER
    }
    types = typing.get_type_hints(group_class.__init__)
    for name, value in options.items():
        if name not in declared:
            continue
        try:
            TypeAdapter(types[name], config=_STRICT).validate_python(value)
        except ValidationError:
            raise TypeError(
                f"runner mode {mode!r}: option {name!r} must be {declared[name]}, not {reprlib.repr(value)}"
            ) from None


__all__ = ["DEFAULT_MODE", "MODES", "RunnerGroup", "RunnerLost", "check_mode", "check_options", "create_runner_group"]
