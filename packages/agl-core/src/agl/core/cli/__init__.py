"""The `agl` command line: inspect any store (``--store URL``, else ``$AGL_STORE``) at 80 columns.

Each module is one group or one command; this module only joins them.
"""

from __future__ import annotations

import typer

from agl.core.cli import resources, rollouts, spans, stats, store

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


def main() -> None:
    """Entry point of the ``agl`` console script."""
    app()
