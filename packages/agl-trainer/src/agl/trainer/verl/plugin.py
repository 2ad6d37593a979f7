"""Registers the ``verl`` algorithm (entry point ``verl`` of the ``agl.trainer`` group).

Importing this imports neither verl nor torch, so ``agl algorithms`` lists ``verl`` wherever
agl-trainer is installed; a fit without verl stops at its start with `runtime.VerlMissing`.
"""

from __future__ import annotations

from agl.trainer.hookspecs import RegisterAlgorithm, hookimpl
from agl.trainer.verl.algorithm import Verl


@hookimpl
def agl_register_algorithms(register: RegisterAlgorithm) -> None:
    register("verl", Verl)
