"""A trainer plugin for tests that keeps every ``agl_step_end`` call."""

from __future__ import annotations

from agl.trainer import hookimpl


class StepLog:
    """``seen``: ``(step, metrics)`` of each logged step, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, dict[str, float]]] = []

    @hookimpl
    def agl_step_end(self, step: int, metrics: dict[str, float]) -> None:
        self.seen.append((step, metrics))
