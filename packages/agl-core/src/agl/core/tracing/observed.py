"""The observed rollout of a program that no runner launched: one per process, created in the
store by the process's first exported span."""

from __future__ import annotations

import os
import sys
from typing import Any

from agl.core.ids import new_id
from agl.core.tracing.context import ActiveRollout


class ProcessRollout:
    def __init__(self) -> None:
        suffix = new_id("p").removeprefix("p-")
        self.active = ActiveRollout(f"ro-proc-{suffix}", f"at-proc-{suffix}")
        self.metadata: dict[str, Any] = {"process": {"pid": os.getpid(), "argv": sys.argv[:20]}}
        self.crashed = False
        previous_hook = sys.excepthook

        def note_crash(*exc_info: Any) -> None:
            self.crashed = True
            previous_hook(*exc_info)

        sys.excepthook = note_crash


_process: ProcessRollout | None = None


def process_rollout() -> ProcessRollout:
    global _process
    if _process is None:
        _process = ProcessRollout()
    return _process
