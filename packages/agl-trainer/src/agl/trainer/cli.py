"""``agl algorithms`` and ``agl train``, added to the ``agl`` command through the ``agl.cli`` entry point."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import TypeAdapter, ValidationError
from rich.text import Text

from agl.core.agent import LitAgent
from agl.core.cli._common import JsonOutput, StoreUrl, console, print_json, table
from agl.core.errors import AglError
from agl.core.store import open_store
from agl.core.types import NamedResources
from agl.trainer.metrics import METRICS_FILE
from agl.trainer.plugins import algorithms as registered_algorithms
from agl.trainer.plugins import plugin_manager
from agl.trainer.trainer import Trainer, UnknownAlgorithm

RUNS_DIR = Path("agl-runs")
"""Where `agl train` writes each run's metrics by default: ``agl-runs/<UTC time>`` in the current directory."""


def add_commands(root: typer.Typer) -> None:
    """The ``agl.cli`` entry point: add the trainer's commands to the root ``agl`` app."""
    root.command("algorithms")(algorithms)
    root.command("train")(train)


def algorithms(json_output: JsonOutput = False) -> None:
    """List the installed algorithms and the distributions providing them, and plugins that failed."""
    manager = plugin_manager()
    found = registered_algorithms(manager)
    if json_output:
        print_json(
            {
                "algorithms": [{"name": name, "provided_by": provider} for name, (_, provider) in found.items()],
                "failed": [
                    {"plugin": f.name, "distribution": f.distribution, "error": f.error} for f in manager.failures
                ],
            }
        )
        return
    out = console()
    listing = table()
    listing.add_column("algorithm")
    listing.add_column("provided by")
    for name, (_, provider) in sorted(found.items()):
        listing.add_row(name, provider)
    out.print(listing if found else "no algorithms installed")
    if manager.failures:
        out.print()
        failed = table()
        failed.add_column("plugin not loaded", style="red")
        failed.add_column("error")
        for failure in manager.failures:
            label = failure.name if failure.distribution is None else f"{failure.name} ({failure.distribution})"
            failed.add_row(label, Text(failure.error))
        out.print(failed)


def train(
    algorithm: Annotated[str, typer.Option(help="Name of an installed algorithm (see `agl algorithms`).")],
    agent: Annotated[str, typer.Option(help="The agent, as module:attribute (a LitAgent or @rollout function).")],
    dataset: Annotated[Path, typer.Option(help="Training tasks: a JSON lines file, one task input per line.")],
    val: Annotated[Path | None, typer.Option(help="Validation tasks, as --dataset.")] = None,
    resources: Annotated[
        Path | None, typer.Option(help='Initial resources: a JSON file {"name": {"resource_type": ...}}.')
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option(help="An algorithm option KEY=JSON (repeatable), e.g. variants='[...]'.")
    ] = None,
    runners: Annotated[int, typer.Option(help="Runners (asyncio tasks in this process).", min=1)] = 1,
    store: StoreUrl = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(help="Where to write metrics.jsonl and reward.png [default: agl-runs/<UTC time>]."),
    ] = None,
) -> None:
    """Train an agent on a dataset with an installed algorithm; prints the algorithm's result.

    Shows finished rollouts and steps on stderr when it is a terminal.
    """
    try:
        lit_agent = _load_agent(agent)
        train_tasks = _read_jsonl(dataset)
        val_tasks = _read_jsonl(val) if val is not None else None
        initial = _read_resources(resources) if resources is not None else None
        options = dict(_parse_option(text) for text in option or [])
        backend = open_store(store)
        run_dir = output_dir or RUNS_DIR / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        trainer = Trainer(
            algorithm,
            store=backend,
            n_runners=runners,
            algorithm_options=options,
            output_dir=run_dir,
            progress=sys.stderr.isatty(),
        )

        async def session() -> Any:
            try:
                return await trainer.fit_async(lit_agent, train_tasks, val_tasks, initial)
            finally:
                await backend.close()

        result = asyncio.run(session())
    except (AglError, UnknownAlgorithm, ValueError, TypeError, OSError, ImportError, AttributeError) as error:
        typer.echo(f"error: {' '.join(str(error).split())}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"metrics: {run_dir / METRICS_FILE}", err=True)
    print_json(_jsonable(result))


def _load_agent(spec: str) -> LitAgent:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--agent must be module:attribute, not {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")  # modules of the current directory, as `python -m` finds them
    found: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        found = getattr(found, part)
    if not isinstance(found, LitAgent):
        raise TypeError(f"{spec} is a {type(found).__name__}, not an agent (LitAgent or @rollout function)")
    return found


def _read_jsonl(path: Path) -> list[Any]:
    tasks = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                tasks.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON: {error}") from None
    return tasks


def _read_resources(path: Path) -> NamedResources:
    try:
        return TypeAdapter(NamedResources).validate_json(path.read_text())
    except ValidationError as error:
        raise ValueError(f"{path}: not resources: {error}") from None


def _parse_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--option must be KEY=JSON, not {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare string


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except TypeError:
        return repr(value)
    return value
