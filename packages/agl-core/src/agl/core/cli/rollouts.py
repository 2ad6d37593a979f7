"""`agl rollouts list|show`: what is queued, running and finished, and how each attempt went."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, cast

import typer
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from agl.core.cli._common import (
    JsonOutput,
    StoreUrl,
    add_id_column,
    console,
    elapsed,
    fit,
    format_ago,
    format_duration,
    format_time,
    plural,
    print_json,
    printable,
    short_json,
    status_text,
    table,
    with_store,
)
from agl.core.cli.spans import format_rewards, total_rewards
from agl.core.errors import RolloutNotFound
from agl.core.store import LightningStore, Page
from agl.core.store.query import SORT_KEYS
from agl.core.types import Attempt, Rollout, RolloutConfig, RolloutMode, RolloutStatus
from agl.core.types.rollouts import ROLLOUT_MODES, ROLLOUT_STATUSES, check_status

app = typer.Typer(no_args_is_help=True, help="List rollouts, or show one with its attempts.")


@app.command("list")
def list_rollouts(
    status: Annotated[
        list[str] | None, typer.Option(help=f"Only this status (repeatable): {', '.join(ROLLOUT_STATUSES)}.")
    ] = None,
    mode: Annotated[str | None, typer.Option(help=f"Only this mode: {', '.join(ROLLOUT_MODES)}.")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 50,
    offset: Annotated[int, typer.Option(help="Skip this many first.")] = 0,
    sort_by: Annotated[str, typer.Option(help=f"One of {', '.join(SORT_KEYS['rollouts'])}.")] = "start_time",
    desc: Annotated[bool, typer.Option("--desc", help="Sort descending: newest, last or largest first.")] = False,
    json_output: JsonOutput = False,
    store: StoreUrl = None,
) -> None:
    """List rollouts, oldest first, one page at a time."""

    async def load(backend: LightningStore) -> tuple[Page[Rollout], list[int]]:
        for each in status or ():
            check_status("rollout status", each, ROLLOUT_STATUSES)
        if mode is not None:
            check_status("mode", mode, ROLLOUT_MODES)
        page = await backend.query_rollouts(
            status_in=cast(list[RolloutStatus], status) or None,  # both checked just above
            mode=cast(RolloutMode | None, mode),
            sort_by=sort_by,
            sort_order="desc" if desc else "asc",
            limit=limit,
            offset=offset,
        )
        if json_output:
            return page, []
        # One count per row: a page is small, and the count is an indexed lookup in every backend.
        counts = await asyncio.gather(*(backend.query_attempts(r.rollout_id, limit=0) for r in page))
        return page, [count.total for count in counts]

    page, attempt_counts = with_store(store, load)
    if json_output:
        print_json(
            {
                "total": page.total,
                "offset": page.offset,
                "limit": page.limit,
                "items": [rollout.model_dump(mode="json") for rollout in page],
            }
        )
        return
    rows = table()
    ids = [printable(rollout.rollout_id) for rollout in page]
    add_id_column(rows, "rollout", ids)
    rows.add_column("status", no_wrap=True)
    rows.add_column("mode", no_wrap=True)
    rows.add_column("attempts", justify="right", no_wrap=True)
    rows.add_column("started", no_wrap=True)
    rows.add_column("duration", justify="right", no_wrap=True)
    for rollout, rollout_id, attempts in zip(page, ids, attempt_counts, strict=True):
        rows.add_row(
            rollout_id,
            status_text(rollout.status),
            rollout.mode or "-",
            str(attempts),
            format_time(rollout.start_time),
            elapsed(rollout.start_time, rollout.end_time),
        )
    shown = f"{offset + 1}\N{EN DASH}{offset + len(page)}" if len(page) else "0"
    out = console()
    if len(page):
        out.print(fit(out, rows, drop=("started", "duration", "mode", "attempts")), crop=False)
    out.print(f"showing {shown} of {page.total}", style="dim")


@app.command("show")
def show_rollout(
    rollout_id: Annotated[str, typer.Argument(help="The rollout (ro-…).", show_default=False)],
    json_output: JsonOutput = False,
    store: StoreUrl = None,
) -> None:
    """Show one rollout: its fields, config, metadata, attempts, span count and reward."""

    async def load(backend: LightningStore) -> tuple[Rollout, Page[Attempt], int, dict[str, float]]:
        rollout = await backend.get_rollout_by_id(rollout_id)
        if rollout is None:
            raise RolloutNotFound(rollout_id)
        attempts = await backend.query_attempts(rollout_id)
        span_count = (await backend.query_spans(rollout_id, limit=0)).total
        reward = total_rewards(await backend.query_spans(rollout_id, "latest")) if attempts else {}
        return rollout, attempts, span_count, reward

    rollout, attempts, span_count, reward = with_store(store, load)
    if json_output:
        print_json(
            {
                "rollout": rollout.model_dump(mode="json"),
                "attempts": [attempt.model_dump(mode="json") for attempt in attempts],
                "spans": span_count,
                "reward": reward.get(""),
                "reward_dimensions": {name: value for name, value in reward.items() if name},
            }
        )
        return
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column(overflow="fold")
    for name, value in [
        ("rollout", printable(rollout.rollout_id)),
        ("status", status_text(rollout.status)),
        ("mode", rollout.mode or "-"),
        ("resources", printable(rollout.resources_id or "-")),
        ("started", format_time(rollout.start_time)),
        ("ended", format_time(rollout.end_time)),
        ("duration", elapsed(rollout.start_time, rollout.end_time)),
        ("input", short_json(rollout.input)),
        ("config", _config_text(rollout.config)),
        ("metadata", short_json(rollout.metadata) if rollout.metadata else "-"),
        ("spans", f"{span_count} (all attempts)"),
        ("reward", f"{format_rewards(reward)} in the latest attempt" if reward else "-"),
    ]:
        fields.add_row(name, value)
    out = console()
    out.print(fields)
    out.print()
    out.print(
        _attempts_table(out, list(attempts)) if len(attempts) else Text("no attempts yet", style="dim"), crop=False
    )


def _config_text(config: RolloutConfig) -> str:
    """Only what is set: ``timeout 1m00s · max 3 attempts · retry on failed, timeout``."""
    parts = [f"max {plural(config.max_attempts, 'attempt')}"]
    if config.timeout_seconds is not None:
        parts.insert(0, f"timeout {format_duration(config.timeout_seconds)}")
    if config.unresponsive_seconds is not None:
        parts.insert(-1, f"unresponsive after {format_duration(config.unresponsive_seconds)}")
    if config.retry_condition:
        parts.append(f"retry on {', '.join(config.retry_condition)}")
    return " · ".join(parts)


def _attempts_table(out: Console, attempts: list[Attempt]) -> Group:
    now = time.time()
    rows = table()
    rows.add_column("#", justify="right")
    attempt_ids = [printable(attempt.attempt_id) for attempt in attempts]
    worker_ids = [printable(attempt.worker_id or "-") for attempt in attempts]
    add_id_column(rows, "attempt", attempt_ids)
    rows.add_column("status", no_wrap=True)
    add_id_column(rows, "worker", worker_ids)
    rows.add_column("started", no_wrap=True)
    rows.add_column("took", justify="right", no_wrap=True)
    rows.add_column("heartbeat", justify="right", no_wrap=True)
    for attempt, attempt_id, worker_id in zip(attempts, attempt_ids, worker_ids, strict=True):
        rows.add_row(
            str(attempt.sequence_id),
            attempt_id,
            status_text(attempt.status),
            worker_id,
            format_time(attempt.start_time, year=False),
            elapsed(attempt.start_time, attempt.end_time),
            format_ago(attempt.last_heartbeat_time, now),
        )
    return Group(
        Text(plural(len(attempts), "attempt"), style="bold"),
        fit(out, rows, drop=("heartbeat", "started", "took", "worker")),
    )
