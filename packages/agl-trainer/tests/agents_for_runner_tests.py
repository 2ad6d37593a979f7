"""Agents of the runner-mode tests, in a module of their own so that child processes and Ray
actors can import them by name (``agents_for_runner_tests:double``)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from agl.core.agent import rollout
from agl.core.types import AttemptedRollout, Span


@rollout
def double(task: dict[str, Any]) -> float:
    """The small job every mode runs: no LLM, a reward computed from the task."""
    return 2.0 * task["x"]


RELEASE = threading.Event()
"""Set by a test to let `blocks_its_loop` agents return."""


def announce(task: dict[str, Any], rollout: AttemptedRollout) -> None:
    """Write ``<pid>-<attempt id>`` into the folder ``task["signals"]``: which process runs which attempt."""
    signals = Path(task["signals"])
    name = f"{os.getpid()}-{rollout.attempt.attempt_id}"
    (signals / f".{name}").write_text(rollout.rollout_id)
    (signals / f".{name}").rename(signals / name)  # appears complete or not at all


@rollout
async def blocks_its_loop(task: dict[str, Any], rollout: AttemptedRollout) -> float:
    """An async agent that makes a blocking call: its runner's event loop is stuck until `RELEASE`."""
    announce(task, rollout)
    RELEASE.wait()
    return 1.0


@rollout
def announce_then_hang(task: dict[str, Any], rollout: AttemptedRollout) -> float:
    """On attempts up to ``task["hang_attempts"]``: write ``<pid>-<attempt id>`` into the folder
    ``task["signals"]`` (so a test knows which process runs which attempt), then block until the
    process is killed or stopped. Later attempts succeed at once."""
    if rollout.attempt.sequence_id <= task["hang_attempts"]:
        announce(task, rollout)
        threading.Event().wait()
    return 1.0


def reward_from_output(task: dict[str, Any], output: str, spans: list[Span]) -> float:
    """The command mode's reward: the number the program printed, if its own span reached the
    store with the model it was given (-1 otherwise)."""
    work = [span for span in spans if span.name == "program.work"]
    if not work or work[0].attributes.get("program.model") != "toy-model":
        return -1.0
    return float(output.strip())
