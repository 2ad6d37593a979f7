"""The built-in algorithms, registered through the ``agl.trainer`` entry point ``builtin``,
exactly as a third-party plugin registers its own."""

from __future__ import annotations

from agl.trainer.algorithms.apo import APO
from agl.trainer.algorithms.baseline import Baseline
from agl.trainer.algorithms.grpo import GRPO
from agl.trainer.algorithms.sft import SFT
from agl.trainer.hookspecs import RegisterAlgorithm, hookimpl


@hookimpl
def agl_register_algorithms(register: RegisterAlgorithm) -> None:
    register("baseline", Baseline)
    register("apo", APO)
    register("grpo", GRPO)
    register("sft", SFT)
