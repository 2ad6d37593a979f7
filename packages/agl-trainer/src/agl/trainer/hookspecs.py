"""The trainer's table of contents: every hook a plugin may implement.

Plugins implement these with ``@agl.trainer.hookimpl`` and publish the module (or object) under
the entry-point group ``agl.trainer``. The trainer calls every hook by keyword, and parameters are
only ever added, so an implementation may accept just the arguments it needs. Registration hooks
take a ``register`` callback, so their signatures stay stable however registration grows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from agl.core.types import Rollout
    from agl.trainer.algorithm import Algorithm
    from agl.trainer.trainer import Trainer

PROJECT = "agl"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
"""Marks a plugin's implementation of a hook: ``@hookimpl def agl_step_end(step, metrics): ...``."""

RegisterAlgorithm = Callable[[str, "Callable[..., Algorithm]"], None]
RegisterModelServer = Callable[[str, Callable[..., Any]], None]


@hookspec
def agl_register_algorithms(register: RegisterAlgorithm) -> None:
    """Register algorithms that ``Trainer(algorithm=NAME)`` and ``agl train --algorithm NAME`` can use.

    Args:
        register: ``register(name, factory)``; ``factory(**options)`` returns an `Algorithm`.
            If two plugins register one name, the first called wins (pluggy calls the plugin
            registered last first, ``tryfirst`` ones before the rest), so a plugin can replace a
            built-in; the other registration is reported as a plugin failure.
    """


@hookspec
def agl_register_model_servers(register: RegisterModelServer) -> None:
    """Register model servers (engines behind ``agl serve``) by name.

    Args:
        register: ``register(name, factory)``; ``factory(**options)`` returns a model server.
    """


@hookspec
def agl_fit_start(trainer: Trainer) -> None:
    """Called once when `Trainer.fit` starts, after the initial resources are published and the
    runners started, before the algorithm runs.

    Args:
        trainer: the running `Trainer` (its ``store``, ``algorithm``, ``n_runners``).
    """


@hookspec
def agl_fit_end(trainer: Trainer, result: Any) -> None:
    """Called once when `Trainer.fit` ends, after the runners stopped; also when it failed.

    Args:
        trainer: the `Trainer`.
        result: what the algorithm's ``run`` returned, or the exception it raised.
    """


@hookspec
def agl_rollout_end(trainer: Trainer, rollout: Rollout) -> None:
    """Called for each rollout an algorithm waited for (`AlgorithmContext.enqueue_and_wait`)
    once it is finished.

    Args:
        trainer: the `Trainer`.
        rollout: the finished `Rollout`, as the store has it.
    """


@hookspec
def agl_step_end(trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
    """Called when an algorithm reports the metrics of a step (`AlgorithmContext.log_step`).

    Args:
        trainer: the `Trainer`.
        step: the step number, counted by the algorithm from 0.
        metrics: metric name to value, e.g. ``{"train/reward_mean": 0.5}``.
    """
