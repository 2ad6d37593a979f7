"""The `agl` command line: inspect any store (``--store URL``, else ``$AGL_STORE``), in plain text
when piped and fitted to a terminal's width; serve one; and whatever installed packages add.
``--store`` goes before the command too (``agl --store URL stats``): it then stands for
``$AGL_STORE`` for every command, and a command's own ``--store`` still wins.

Each module is one group or one command; this module only joins them. Other packages (the
trainer) add commands through the entry-point group ``agl.cli``: each entry point names a function
that takes the root `typer.Typer` and adds to it. Core imports none of them; a broken one is
reported on stderr and the rest of the CLI still works.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points
from typing import Annotated

import typer

from agl.core.cli import resources, rollouts, spans, stats, store
from agl.core.store.urls import STORE_URL_ENV

PLUGIN_GROUP = "agl.cli"

app = typer.Typer(
    name="agl",
    help="Inspect an agl store (rollouts, their attempts and spans, resources, statistics) or serve one.",
    no_args_is_help=True,
)


@app.callback()
def root(
    ctx: typer.Context,
    store_url: Annotated[
        str | None,
        typer.Option("--store", help="Store URL for every command, as $AGL_STORE would be.", show_default=False),
    ] = None,
) -> None:
    # Through the variable every command's own --store already falls back to (plugins' too), and
    # only while this command runs: a caller in the same process (a test) keeps its environment.
    if store_url:
        previous = os.environ.get(STORE_URL_ENV)
        os.environ[STORE_URL_ENV] = store_url
        ctx.call_on_close(lambda: _restore(previous))


def _restore(previous: str | None) -> None:
    if previous is None:
        os.environ.pop(STORE_URL_ENV, None)
    else:
        os.environ[STORE_URL_ENV] = previous


app.add_typer(rollouts.app, name="rollouts")
app.command("spans")(spans.spans)
app.command("resources")(resources.resources)
app.command("stats")(stats.stats)

app.add_typer(store.app, name="store")


def add_plugin_commands(root: typer.Typer) -> list[str]:
    """Let every ``agl.cli`` entry point add its commands; returns the ones that failed."""
    failed = []
    for entry_point in entry_points(group=PLUGIN_GROUP):
        try:
            entry_point.load()(root)
        except Exception as error:  # one broken plugin must not take the CLI down
            failed.append(entry_point.name)
            print(f"agl: commands of {entry_point.name!r} ({entry_point.value}) not loaded: {error}", file=sys.stderr)
    return failed


def main() -> None:
    """Entry point of the ``agl`` console script."""
    add_plugin_commands(app)
    app()
