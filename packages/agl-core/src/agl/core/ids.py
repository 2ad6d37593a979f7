"""Short prefixed ids (``ro-…``, ``at-…``, ``rs-…``): readable in logs, 64 random bits each."""

from __future__ import annotations

import os


def new_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(8).hex()}"


def new_rollout_id() -> str:
    return new_id("ro")


def new_attempt_id() -> str:
    return new_id("at")


def new_resources_id() -> str:
    return new_id("rs")
