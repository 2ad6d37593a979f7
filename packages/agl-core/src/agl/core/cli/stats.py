"""`agl stats`: how much the store holds, and where its rollouts and attempts stand."""

from __future__ import annotations

import dataclasses

from rich.table import Table
from rich.text import Text

from agl.core.cli._common import JsonOutput, StoreUrl, console, print_json, status_text, with_store
from agl.core.store import LightningStore, StoreStatistics
from agl.core.types.rollouts import ATTEMPT_STATUSES, ROLLOUT_STATUSES


def stats(json_output: JsonOutput = False, store: StoreUrl = None) -> None:
    """Count rollouts and attempts by status, spans, resources and workers."""

    async def load(backend: LightningStore) -> StoreStatistics:
        return await backend.statistics()

    found = with_store(store, load)
    if json_output:
        print_json(
            {
                "rollouts": found.rollouts,
                "attempts": sum(found.attempts_by_status.values()),
                **dataclasses.asdict(found),
            }
        )
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column()
    grid.add_row("rollouts", str(found.rollouts), _breakdown(found.rollouts_by_status, ROLLOUT_STATUSES))
    attempts = found.attempts_by_status
    grid.add_row("attempts", str(sum(attempts.values())), _breakdown(attempts, ATTEMPT_STATUSES))
    grid.add_row("spans", str(found.spans), "")
    grid.add_row("resources", str(found.resources), "")
    grid.add_row("workers", str(found.workers), "")
    console().print(grid)


def _breakdown(counts: dict[str, int], order: tuple[str, ...]) -> Text:
    """``succeeded 8 · failed 2 …`` in state-machine order, zero counts left out."""
    parts: list[Text | str] = []
    for status in order:
        if counts.get(status):
            parts += [" · "] if parts else []
            parts += [status_text(status), f" {counts[status]}"]
    return Text.assemble(*parts)
