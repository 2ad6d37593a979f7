"""``agl algorithms`` and ``agl train``, added to the ``agl`` command through the ``agl.cli`` entry point."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import shlex
import signal
import sys
import tomllib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails
from rich.markup import escape
from rich.text import Text

from agl.core.cli._common import JsonOutput, StoreUrl, console, parse_option, print_json, table
from agl.core.errors import AglError
from agl.core.store import LightningStore, open_store
from agl.core.types import NamedResources, Rollout
from agl.trainer.algorithm import Algorithm, RolloutsIncomplete
from agl.trainer.hookspecs import hookimpl
from agl.trainer.metrics import METRICS_FILE, finite_or_null
from agl.trainer.plugins import algorithms as registered_algorithms
from agl.trainer.plugins import plugin_manager
from agl.trainer.runners import DEFAULT_MODE, MODES, RunnerLost, check_mode
from agl.trainer.runners.specs import load_agent
from agl.trainer.trainer import Trainer, UnknownAlgorithm


class AlgorithmFailed(RuntimeError):
    """A plugin's algorithm factory raised, or made no `Algorithm`: the plugin's to fix, reported by name."""


REPORTED = (
    AglError,
    AlgorithmFailed,
    UnknownAlgorithm,
    RunnerLost,
    RolloutsIncomplete,
    ValueError,
    TypeError,
    OSError,
    ImportError,
    AttributeError,
)
"""Errors `agl train` reports in one line, the user's to fix (a bad setting, file or agent; runners that
kept dying; rollouts that outlived the algorithm's timeout); anything else is a bug and keeps its traceback."""

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
        failed.add_column("error", overflow="fold")  # a module name cut at the terminal's edge is no help
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
    # Defaults of None let a config file's settings apply where no flag is given, so the help names the
    # real ones, escaped: typer reads help as rich markup, where "[default: 1]" is a tag and vanishes.
    runners: Annotated[int | None, typer.Option(help=escape("How many runners [default: 1]."), min=1)] = None,
    runner_mode: Annotated[
        str | None, typer.Option(help=escape(f"Where runners run: {', '.join(MODES)} [default: {DEFAULT_MODE}]."))
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
        typer.Option(help=escape("Where to write metrics.jsonl and reward.png [default: agl-runs/<UTC time>].")),
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help=escape("Show finished rollouts and a line per step on stderr [default: when stderr is a terminal]."),
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train an agent on a dataset with an installed algorithm; prints the algorithm's result.

    Settings come from the flags, or from a TOML file CONFIG whose keys are the flags' names with _ (runner_mode, ...).

    In CONFIG, options and runner_options are tables, and paths are relative to the file.

    Shows finished rollouts and a line per step on stderr if it is a terminal, or with --progress (in a log too).

    Exits with status 1 when no rollout succeeded, after writing the metrics.

    Ctrl-C (exit 130) and SIGTERM (exit 143) stop the runners and their programs and fail the attempts in flight.
    """
    terminated: list[bool] = []
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
        if runners < 1:
            raise ValueError(f"--runners must be at least 1, not {runners}")
        if command is not None:
            runner_mode = "command"
        check_mode(runner_mode)
        runner_options = {**file.get("runner_options", {}), **dict(parse_option(text) for text in runner_option or [])}
        if runner_mode == "command":
            if command is None or agent is not None:
                raise ValueError("--runner-mode command takes a --command (and a --reward), not an --agent")
            runner_options.update(command=_split_command(command), reward=reward)
        elif reward is not None:
            raise ValueError("--reward goes with a --command; an --agent computes its own reward")
        elif agent is None:
            raise ValueError("--agent is required (module:attribute)")
        else:
            load_agent(agent)  # a bad name fails here, in one line, before anything starts
        train_tasks = _read_jsonl(dataset, "--dataset")
        val_tasks = _read_jsonl(val, "--val") if val is not None else None
        initial = _read_resources(resources) if resources is not None else None
        options = {**file.get("options", {}), **dict(parse_option(text) for text in option or [])}
        tally = _RolloutTally()
        manager = plugin_manager([tally])
        found = registered_algorithms(manager)
        chosen: str | Algorithm = algorithm
        if algorithm in found:  # else the Trainer names the installed ones
            _check_options(algorithm, found[algorithm][0], options)
            chosen = _create_algorithm(algorithm, *found[algorithm], options)
        backend = open_store(store)
        run_dir = output_dir or RUNS_DIR / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        created = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]
        trainer = Trainer(
            chosen,
            store=backend,
            n_runners=runners,
            agent=agent,
            runner_mode=runner_mode,
            runner_options=runner_options,
            output_dir=run_dir,
            progress=sys.stderr.isatty() if progress is None else progress,
            plugins=manager,
        )

        async def session() -> tuple[Any, str | None]:
            try:
                result = await trainer.fit_async(None, train_tasks, val_tasks, initial)
                return result, await tally.failure(backend)
            finally:
                await backend.close()

        try:
            with _terminate_as_interrupt(terminated):
                result, failure = asyncio.run(session())
        except BaseException:
            _remove_if_unused(run_dir, created)
            raise
    except KeyboardInterrupt:
        how, status = ("terminated", 143) if terminated else ("interrupted", 130)
        typer.echo(f"{how}: runners stopped", err=True)
        raise typer.Exit(status) from None
    except REPORTED as error:
        typer.echo(f"error: {' '.join(str(error).split())}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"metrics: {run_dir / METRICS_FILE}", err=True)
    print_json(_jsonable(result))
    if failure is not None:
        typer.echo(f"error: {' '.join(failure.split())}", err=True)
        raise typer.Exit(1)


@contextlib.contextmanager
def _terminate_as_interrupt(terminated: list[bool]) -> Iterator[None]:
    """SIGTERM (what systemd, Kubernetes and Slurm send to stop a job) takes Ctrl-C's path: the fit
    is cancelled, its runners and their programs stopped, its attempts failed. Python's default
    ends the process at once, leaving programs running and rollouts marked running. ``terminated``
    gets True once SIGTERM arrived."""

    def interrupt(signal_number: int, frame: object) -> None:
        terminated.append(True)
        signal.raise_signal(signal.SIGINT)  # to asyncio.run's handler, which cancels the fit

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _RolloutTally:
    """This run's finished rollouts, as ``agl_rollout_end`` reports them: a run in which none succeeded
    must not exit as a success, whatever the algorithm returned."""

    def __init__(self) -> None:
        self.finished = 0
        self.succeeded = 0
        self.first_failed: Rollout | None = None

    @hookimpl
    def agl_rollout_end(self, rollout: Rollout) -> None:
        self.finished += 1
        if rollout.status == "succeeded":
            self.succeeded += 1
        elif self.first_failed is None:
            self.first_failed = rollout

    async def failure(self, store: LightningStore) -> str | None:
        """Why the run failed although the algorithm ended, with the first failed rollout's error
        when its attempt recorded one; None if any rollout succeeded (or none ran)."""
        if self.first_failed is None or self.succeeded:
            return None
        rollout = self.first_failed
        message = f"none of the {self.finished} rollouts succeeded; the first ended {rollout.status}"
        attempt = await store.get_latest_attempt(rollout.rollout_id)
        error = attempt.metadata.get("error") if attempt is not None else None
        return f"{message}: {error}" if error else message


def _check_options(name: str, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    """Refuse to start without an option the algorithm's factory requires, or with one it does not
    take, naming the --option (the factory's own TypeError would name a Python parameter of some __init__)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read: the factory's own error stands
        return
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    known = [p.name for p in parameters if p.kind in kinds]
    missing = [p.name for p in parameters if p.kind in kinds and p.default is p.empty and p.name not in options]
    if missing:
        noun = "options" if len(missing) > 1 else "option"
        flags = " ".join(f"--option {key}=VALUE" for key in missing)
        raise ValueError(f"algorithm {name} needs the {noun} {', '.join(missing)} ({flags})")
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    unknown = [key for key in options if key not in known]
    if unknown and not takes_any:
        raise ValueError(
            f"algorithm {name} has no option {', '.join(unknown)} (its options: {', '.join(known) or 'none'})"
        )


def _create_algorithm(name: str, factory: Callable[..., Any], provider: str, options: dict[str, Any]) -> Algorithm:
    """The algorithm from its plugin's factory; whatever the factory raises is reported in one line
    naming the plugin, which is the one to fix it (or to be told of a bad option value)."""
    try:
        created = factory(**options)
    except Exception as error:
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise AlgorithmFailed(f"algorithm {name} (from {provider}) could not be created: {reason}") from None
    if not isinstance(created, Algorithm):
        raise AlgorithmFailed(f"algorithm {name} (from {provider}) made a {type(created).__name__}, not an Algorithm")
    return created


def _split_command(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError as error:  # shlex's own message ("No closing quotation") does not say what it read
        raise ValueError(f"--command {command!r}: {error}") from None


def _remove_if_unused(run_dir: Path, created: list[Path]) -> None:
    """After a run that failed: if it got no step as far as the metrics file, remove that empty file and
    the folders the run created, so no empty run folder is left behind."""
    metrics = run_dir / METRICS_FILE
    if metrics.is_file() and metrics.stat().st_size == 0:
        metrics.unlink()
    for folder in created:  # the run's folder first, then the parents it needed
        try:
            folder.rmdir()
        except OSError:  # not empty, or never made: it and its parents stay
            return


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
    wrong types are refused by name. UTF-8 as TOML requires, whatever the locale, BOM or not."""
    try:
        settings = tomllib.loads(_read_utf8(path, "config file"))
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


def _read_jsonl(path: Path, what: str) -> list[Any]:
    """The tasks of a JSON lines file; one without any is refused (a wrong or truncated file would
    otherwise train on nothing and exit as a success). UTF-8, with or without the BOM that some
    Windows editors write."""
    tasks = []
    for number, line in enumerate(_read_utf8(path, what).splitlines(), 1):
        if line.strip():
            try:
                tasks.append(json.loads(line))
            except json.JSONDecodeError as error:
                array = number == 1 and line.lstrip().startswith("[")
                hint = " (expected JSON lines: one task per line, not a JSON array)" if array else ""
                raise ValueError(f"{path}:{number}: not JSON: {error}{hint}") from None
    if not tasks:
        raise ValueError(f"{path}: no tasks (expected one JSON value per line)")
    return tasks


def _read_utf8(path: Path, what: str) -> str:
    """The text of the file given as ``what`` (``--dataset``, ``config file``), named when missing:
    Python's own message names the path alone, and a command line has several."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{what} {path}: no such file") from None
    except UnicodeDecodeError as error:  # its own message names a byte position, not the file
        raise ValueError(f"{path}: not UTF-8 text: {error.reason} at byte {error.start}") from None


def _read_resources(path: Path) -> NamedResources:
    """The resources of a JSON file; a wrong one is refused with each problem where it is (pydantic's
    own message runs over many lines, with a union's name and links)."""
    try:
        return TypeAdapter(NamedResources).validate_json(_read_utf8(path, "--resources"))
    except ValidationError as error:
        problems = "; ".join(_problem(detail) for detail in error.errors(include_url=False))
        raise ValueError(
            f'{path}: not resources ({{"name": {{"resource_type": "llm", ...}}, ...}}): {problems}'
        ) from None


def _problem(detail: ErrorDetails) -> str:
    where = ".".join(str(part) for part in detail["loc"])
    return f"{where}: {detail['msg']}" if where else detail["msg"]


def _jsonable(value: Any) -> Any:
    """The result as JSON can print it: its repr if it is not JSON, NaN and infinities as null."""
    try:
        json.dumps(value)
    except TypeError:
        return repr(value)
    return finite_or_null(value)
