"""The trainer's built-in progress display on stderr (rich), a plugin of its own hooks.

`agl train` turns it on when stderr is a terminal; library code asks with ``Trainer(progress=True)``.
Rollouts count as ``agl_rollout_end`` reports them (an algorithm reports a batch once it has all
finished), steps as ``agl_step_end`` does; totals are unknown, as only the algorithm knows them.
Each step also prints a line above the counters, as ``agl spans`` shows it (its time, reward
means, validation metrics, loss): on a terminal and in a log alike, a run shows how it is going.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from agl.core.cli.spans import step_line
from agl.trainer.hookspecs import hookimpl


class ProgressDisplay:
    """Counts finished rollouts and steps while a fit runs, a line per step above the counts; the last
    counts stay on screen after."""

    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TextColumn("{task.completed:.0f}"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
        )
        self.rollouts: TaskID = self.progress.add_task("rollouts finished", total=None)
        self.steps: TaskID = self.progress.add_task("steps", total=None)

    @hookimpl
    def agl_fit_start(self) -> None:
        self.progress.start()

    @hookimpl
    def agl_rollout_end(self) -> None:
        self.progress.advance(self.rollouts)

    @hookimpl
    def agl_step_end(self, step: int, metrics: dict[str, float]) -> None:
        self.progress.console.print(step_line(step, metrics))
        self.progress.advance(self.steps)

    @hookimpl
    def agl_fit_end(self) -> None:
        self.progress.stop()
