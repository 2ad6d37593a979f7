"""Short prefixed ids (``ro-…``, ``at-…``, ``rs-…``): readable in logs, 64 random bits each; and the
clock span sequence ids are taken from. No imports beyond the standard library: the tracing runtime
loads this at interpreter start-up."""

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


def sequence_clock(seconds: float) -> int:
    """The lowest sequence id a span started at ``seconds`` (since the epoch) may take: microseconds.

    Why one clock: an attempt's spans come from several producers at once (the runner's process, an
    agent subprocess, the LLM proxy through the store, an OTLP exporter), each numbering its own.
    Each takes ``max(its next id, sequence_clock(now))``, so ids stay strictly increasing per
    producer and interleave across producers in start order, as far as their clocks agree.
    """
    return round(seconds * 1e6)
