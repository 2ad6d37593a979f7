"""Signalling and watching a child's process group: a program agl started (a `command` runner's
program, vLLM's server) runs in a session of its own, and ending it means ending what it started."""

from __future__ import annotations

import os
from pathlib import Path


def signal_group(group: int, signal_number: int) -> bool:
    """Send ``signal_number`` to process group ``group``; whether any process was there."""
    try:
        os.killpg(group, signal_number)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its user: it is there, but not ours to signal
        return True
    return True


def group_alive(group: int) -> bool:
    """Whether a process of ``group`` still lives (zombies, dead but not yet reaped, do not count:
    an orphan's zombie waits for a reaper that a container's init may never be)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return signal_group(group, 0)
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                state, _parent, member_of = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue
            if int(member_of) == group and state not in ("Z", "X"):
                return True
    return False
