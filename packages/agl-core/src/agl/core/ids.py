"""Short prefixed ids (``ro-…``, ``at-…``, ``rs-…``): readable in logs, 64 random bits each."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import Field

Id = Annotated[str, Field(min_length=1, max_length=256)]
"""Any id a client may choose: not empty, and short enough to index."""


def new_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(8).hex()}"


def new_rollout_id() -> str:
    return new_id("ro")


def new_attempt_id() -> str:
    return new_id("at")


def new_resources_id() -> str:
    return new_id("rs")
