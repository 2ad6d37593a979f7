"""``agl algorithms`` and ``agl train``, added to the ``agl`` command through the ``agl.cli`` entry point."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import TypeAdapter, ValidationError
from rich.text import Text

from agl.core.cli._common import JsonOutput, StoreUrl, console, parse_option, print_json, table
from agl.core.errors import AglError
from agl.core.store import open_store
from agl.core.types import NamedResources
from agl.trainer.metrics import METRICS_FILE
from agl.trainer.plugins import algorithms as registered_algorithms
from agl.trainer.plugins import plugin_manager
from agl.trainer.runners import DEFAULT_MODE, MODES, check_mode
from agl.trainer.runners.specs import load_agent
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
    config: Annotated[
        Path | None,
        typer.Argument(help="A TOML file of these settings (keys as the flags, with _); flags given override it."),
    ] = None,
    algorithm: Annotated[
        str | None, typer.Option(help="Name of an installed algorithm (see `agl algorithms`).")
    ] = None,
    dataset: Annotated[
        Path | None, typer.Option(help="Training tasks: a JSON lines file, one task input per line.")
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option(help="The agent, as module:attribute (a LitAgent or @rollout function); not with a --command."),
    ] = None,
    val: Annotated[Path | None, typer.Option(help="Validation tasks, as --dataset.")] = None,
    resources: Annotated[
        Path | None, typer.Option(help='Initial resources: a JSON file {"name": {"resource_type": ...}}.')
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option(help="An algorithm option KEY=JSON (repeatable), e.g. variants='[...]'.")
    ] = None,
    runners: Annotated[int | None, typer.Option(help="How many runners [default: 1].", min=1)] = None,
    runner_mode: Annotated[
        str | None, typer.Option(help=f"Where runners run: {', '.join(MODES)} [default: {DEFAULT_MODE}].")
    ] = None,
    runner_option: Annotated[
        list[str] | None,
        typer.Option(help="An option of the runner mode KEY=JSON (repeatable), e.g. heartbeat_seconds=1."),
    ] = None,
    command: Annotated[
        str | None,
        typer.Option(
            help="Run this command per rollout (implies --runner-mode command); task and LLM in its environment."
        ),
    ] = None,
    reward: Annotated[
        str | None, typer.Option(help="With --command: the reward function, module:function(task, output, spans).")
    ] = None,
    store: StoreUrl = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(help="Where to write metrics.jsonl and reward.png [default: agl-runs/<UTC time>]."),
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Show finished rollouts and a line per step on stderr [default: when stderr is a terminal].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train an agent on a dataset with an installed algorithm; prints the algorithm's result.

    Settings come from the flags, or from a TOML file CONFIG whose keys are the flags' names
    (``runner_mode``, ...; ``options`` and ``runner_options`` as tables; paths relative to the
    file). Shows finished rollouts and a line per step on stderr when it is a terminal, or when
    asked with --progress (a log then gets the step lines and the final counts).
    """
    try:
        file = _read_config(config) if config is not None else {}
        algorithm = algorithm or file.get("algorithm")
        dataset = dataset or file.get("dataset")
        if algorithm is None or dataset is None:
            raise ValueError("--algorithm and --dataset are required (as flags or in the config file)")
        agent = agent or file.get("agent")
        val = val or file.get("val")
        resources = resources or file.get("resources")
        runners = runners or file.get("runners", 1)
        runner_mode = runner_mode or file.get("runner_mode", DEFAULT_MODE)
        command = command or file.get("command")
        reward = reward or file.get("reward")
        store = store or file.get("store")
        output_dir = output_dir or file.get("output_dir")
        if command is not None:
            runner_mode = "command"
        check_mode(runner_mode)
        runner_options = {**file.get("runner_options", {}), **dict(parse_option(text) for text in runner_option or [])}
        if runner_mode == "command":
            if command is None or agent is not None:
                raise ValueError("--runner-mode command takes a --command (and a --reward), not an --agent")
            runner_options.update(command=shlex.split(command), reward=reward)
        elif agent is None:
            raise ValueError("--agent is required (module:attribute)")
        else:
            load_agent(agent)  # a bad name fails here, in one line, before anything starts
        train_tasks = _read_jsonl(dataset)
        val_tasks = _read_jsonl(val) if val is not None else None
        initial = _read_resources(resources) if resources is not None else None
        options = {**file.get("options", {}), **dict(parse_option(text) for text in option or [])}
        backend = open_store(store)
        run_dir = output_dir or RUNS_DIR / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        trainer = Trainer(
            algorithm,
            store=backend,
            n_runners=runners,
            agent=agent,
            runner_mode=runner_mode,
            runner_options=runner_options,
            algorithm_options=options,
            output_dir=run_dir,
            progress=sys.stderr.isatty() if progress is None else progress,
        )

        async def session() -> Any:
            try:
                return await trainer.fit_async(None, train_tasks, val_tasks, initial)
            finally:
                await backend.close()

        result = asyncio.run(session())
    except KeyboardInterrupt:
        typer.echo("interrupted: runners stopped", err=True)
        raise typer.Exit(130) from None
    except (AglError, UnknownAlgorithm, ValueError, TypeError, OSError, ImportError, AttributeError) as error:
        typer.echo(f"error: {' '.join(str(error).split())}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"metrics: {run_dir / METRICS_FILE}", err=True)
    print_json(_jsonable(result))


CONFIG_KEYS = {
    "algorithm": str,
    "dataset": Path,
    "agent": str,
    "val": Path,
    "resources": Path,
    "options": dict,
    "runners": int,
    "runner_mode": str,
    "runner_options": dict,
    "command": str,
    "reward": str,
    "store": str,
    "output_dir": Path,
}
"""What an `agl train` config file may say, and the type of each value (paths are strings there)."""


def _read_config(path: Path) -> dict[str, Any]:
    """The settings of a TOML config file, paths made relative to its folder; unknown keys and
    wrong types are refused by name."""
    try:
        settings = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not TOML: {error}") from None
    checked: dict[str, Any] = {}
    for key, value in settings.items():
        kind = CONFIG_KEYS.get(key)
        if kind is None:
            raise ValueError(f"{path}: unknown setting {key!r} (known: {', '.join(CONFIG_KEYS)})")
        wanted = str if kind is Path else kind
        if not isinstance(value, wanted) or isinstance(value, bool):
            expected = "a path string" if kind is Path else f"of type {wanted.__name__}"
            raise ValueError(f"{path}: {key} must be {expected}")
        checked[key] = path.parent / value if kind is Path else value
    return checked


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


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except TypeError:
        return repr(value)
    return value
