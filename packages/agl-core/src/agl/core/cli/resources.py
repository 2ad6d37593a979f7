"""`agl resources [ID]`: the versioned resources an algorithm published (model endpoints, prompts).

API keys are never printed, not even with ``--json``: output of this command ends up in logs.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from agl.core.cli._common import (
    JsonOutput,
    StoreUrl,
    add_id_column,
    console,
    fit,
    format_time,
    print_json,
    printable,
    table,
    with_store,
)
from agl.core.errors import ResourcesNotFound
from agl.core.store import LightningStore
from agl.core.types import LLM, PromptTemplate, Resource, ResourcesUpdate

HIDDEN = "<hidden>"
CONTENTS_ROOM = 24
"""Columns the listing keeps for its contents (and the gap before them) on a narrow terminal."""


def resources(
    resources_id: Annotated[
        str | None, typer.Argument(help="Show this resources id (rs-…); list all without one.", show_default=False)
    ] = None,
    json_output: JsonOutput = False,
    store: StoreUrl = None,
) -> None:
    """List resource versions, or show one id's resources in full."""

    async def load(backend: LightningStore) -> tuple[list[ResourcesUpdate], str | None]:
        latest = await backend.get_latest_resources()
        latest_id = latest.resources_id if latest else None
        if resources_id is None:
            return list(await backend.query_resources()), latest_id
        update = await backend.get_resources_by_id(resources_id)
        if update is None:
            raise ResourcesNotFound(resources_id)
        return [update], latest_id

    updates, latest_id = with_store(store, load)
    if json_output:
        documents = [_redacted(update) for update in updates]
        print_json(documents[0] if resources_id is not None else {"latest": latest_id, "items": documents})
        return
    out = console()
    if resources_id is not None:
        out.print(_details(updates[0], latest_id))
    elif updates:
        out.print(_listing(out, updates, latest_id), crop=False)
    else:
        out.print("no resources yet", style="dim")


def _redacted(update: ResourcesUpdate) -> dict[str, Any]:
    document = update.model_dump(mode="json")
    for resource in document["resources"].values():
        if resource.get("api_key") is not None:
            resource["api_key"] = HIDDEN
    return document


def _listing(out: Console, updates: list[ResourcesUpdate], latest_id: str | None) -> Group:
    """One row per id; on a narrow terminal the time, then the version, go before an id is cut
    (an id can be any string `update_resources` was given), and the contents fold into the rest."""
    rows = table()
    ids = [printable(update.resources_id) for update in updates]
    add_id_column(rows, "resources", ids)
    rows.add_column("version", justify="right", no_wrap=True)
    rows.add_column("updated", no_wrap=True)
    rows.add_column("contents", overflow="fold")
    for update, shown_id in zip(updates, ids, strict=True):
        contents = ", ".join(f"{name} ({resource.resource_type})" for name, resource in update.resources.items())
        rows.add_row(shown_id, str(update.version), format_time(update.update_time), printable(contents) or "-")
    contents = rows.columns.pop()  # measured apart: it folds into whatever room the others leave
    fit(out, rows, drop=("updated", "version"), room=CONTENTS_ROOM).columns.append(contents)
    return Group(rows, Text(f"latest: {printable(str(latest_id))}", style="dim"))


def _details(update: ResourcesUpdate, latest_id: str | None) -> Group:
    header = Text.assemble(
        (printable(update.resources_id), "bold"),
        f" · version {update.version} · updated {format_time(update.update_time)}",
        (" · latest", "green") if update.resources_id == latest_id else "",
    )
    parts: list[RenderableType] = [header]
    for name, resource in update.resources.items():
        parts += [
            Text(),
            Text.assemble((name, "bold"), f"  {resource.resource_type}"),
            Padding(_body(resource), (0, 2), expand=False),
        ]
    return Group(*parts)


def _body(resource: Resource) -> RenderableType:
    """An LLM's endpoint, model and sampling parameters; a prompt template's text, as written."""
    if isinstance(resource, PromptTemplate):
        return Group(Text(f"engine {resource.engine}", style="dim"), Text(resource.template))
    assert isinstance(resource, LLM)  # ProxyLLM is an LLM too
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("endpoint", resource.endpoint)
    grid.add_row("model", resource.model)
    grid.add_row("api key", "set (hidden)" if resource.api_key else "-")
    for key, value in resource.sampling_parameters.items():
        grid.add_row(key, str(value))
    return grid
