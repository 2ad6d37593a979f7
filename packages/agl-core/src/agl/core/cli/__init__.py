"""The `agl` command line: inspect any store (``--store URL``, else ``$AGL_STORE``) at 80 columns,
serve one, and whatever installed packages add.

Each module is one group or one command; this module only joins them. Other packages (the
trainer) add commands through the entry-point group ``agl.cli``: each entry point names a function
that takes the root `typer.Typer` and adds to it. Core imports none of them; a broken one is
reported on stderr and the rest of the CLI still works.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import typer

from agl.core.cli import resources, rollouts, spans, stats, store

PLUGIN_GROUP = "agl.cli"

app = typer.Typer(
    name="agl",
    help="Inspect an agl store (rollouts, their attempts and spans, resources, statistics) or serve one.",
    no_args_is_help=True,
)

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
