"""`agl train` and `agl algorithms` given files, flags and plugins a user gets wrong, and runner
modes given agents they cannot run: each is refused in one line that says what to fix."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
from agents_for_runner_tests import double
from typer.testing import CliRunner

from agl.core import open_store
from agl.core.cli import add_plugin_commands, app
from agl.core.types import Span
from agl.trainer import Trainer
from agl.trainer import plugins as plugins_module
from agl.trainer.runners.processes import ProcessRunners

LONG_MODULE = "agl_no_such_module_for_tests_" + "x" * 60
ANSI = re.compile(r"\x1b\[[0-9;]*m")
EXPLODING_PLUGIN = """
from agl.trainer import hookimpl


def exploding(**options):
    raise RuntimeError("factory exploded")


@hookimpl
def agl_register_algorithms(register):
    register("exploding", exploding)
"""
"""A third-party plugin whose factory raises when `agl train` creates its algorithm."""
DIVERGING_PLUGIN = """
from agl.trainer import Algorithm, hookimpl


class Diverging(Algorithm):
    async def run(self, context):
        await context.enqueue_and_wait(context.train_dataset, "train")
        context.log_step(0, {"loss": float("nan")})
        return {"loss": float("nan"), "grad_norm": [1.0, float("inf")]}


@hookimpl
def agl_register_algorithms(register):
    register("diverging", Diverging)
"""
"""A third-party plugin whose loss diverges: NaN in its step and in its result."""


@pytest.fixture
def cli() -> CliRunner:
    assert add_plugin_commands(app) == []
    return CliRunner()


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Callable[[EntryPoint], None]:
    """Install a plugin's entry point beside the real ones."""

    def add(entry_point: EntryPoint) -> None:
        real = plugins_module.entry_points(group=plugins_module.ENTRY_POINT_GROUP)
        monkeypatch.setattr(plugins_module, "entry_points", lambda group: [*real, entry_point])

    return add


@pytest.fixture
def train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`agl train` arguments for a test agent over a memory store, run in ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    args = ["train", "--algorithm", "baseline", "--store", "memory://", "--output-dir", "run", "--no-progress"]
    return [*args, "--agent", "agents_for_runner_tests:double"]


def one_line_error(result: Any) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ")
    return str(line)


def test_a_dataset_saved_with_a_byte_order_mark_trains(
    cli: CliRunner, train: list[str], tmp_path: Path, tracing: None
) -> None:
    """Windows editors start UTF-8 files with a BOM: line 1 was refused as not JSON."""
    (tmp_path / "train.jsonl").write_bytes(b'\xef\xbb\xbf{"x": 1}\r\n{"x": 2}\r\n')
    result = cli.invoke(app, [*train, "--dataset", "train.jsonl"])
    assert result.exit_code == 0, result.output
    assert '"train/reward_mean": 3.0' in result.stdout


def test_a_dataset_that_is_not_utf8_is_refused_by_name(cli: CliRunner, train: list[str], tmp_path: Path) -> None:
    """The error was Python's codec message, naming neither the file nor the problem in words."""
    (tmp_path / "train.jsonl").write_bytes(b'{"x": "caf\xe9"}\n')
    line = one_line_error(cli.invoke(app, [*train, "--dataset", "train.jsonl"]))
    assert line.startswith("error: train.jsonl: not UTF-8 text")


def test_a_dataset_written_as_a_json_array_is_told_to_be_json_lines(
    cli: CliRunner, train: list[str], tmp_path: Path
) -> None:
    (tmp_path / "train.jsonl").write_text('[\n  {"x": 1},\n  {"x": 2}\n]\n')
    line = one_line_error(cli.invoke(app, [*train, "--dataset", "train.jsonl"]))
    assert line.startswith("error: train.jsonl:1: not JSON")
    assert line.endswith("(expected JSON lines: one task per line, not a JSON array)")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[1, 2]", ": Input should be an object"),
        ('{"llm": {"resource_type": "llm"}}', ": llm.llm.endpoint: Field required; llm.llm.model: Field required"),
    ],
    ids=["a-list", "an-llm-without-endpoint"],
)
def test_resources_of_the_wrong_shape_are_refused_by_field(
    cli: CliRunner, train: list[str], tmp_path: Path, content: str, problem: str
) -> None:
    """pydantic's own message ran to a union's type name and a link per problem."""
    (tmp_path / "train.jsonl").write_text('{"x": 1}\n')
    (tmp_path / "resources.json").write_text(content)
    line = one_line_error(cli.invoke(app, [*train, "--dataset", "train.jsonl", "--resources", "resources.json"]))
    assert line.startswith("error: resources.json: not resources (")
    assert line.endswith(problem)
    assert "pydantic" not in line and "tagged-union" not in line


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--option", "bogus=1"], "error: algorithm baseline has no option bogus (its options: timeout)"),
        (["--reward", "agents_for_runner_tests:reward_from_output"], "error: --reward goes with a --command"),
    ],
    ids=["unknown-option", "reward-without-command"],
)
def test_a_flag_the_run_would_not_use_is_refused_in_words(
    cli: CliRunner, train: list[str], tmp_path: Path, extra: list[str], message: str
) -> None:
    """An unknown option named Baseline.__init__'s keyword argument; a --reward beside an --agent was ignored."""
    (tmp_path / "train.jsonl").write_text('{"x": 1}\n')
    line = one_line_error(cli.invoke(app, [*train, "--dataset", "train.jsonl", *extra]))
    assert line.startswith(message)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--option", "timeout=[1,"], "error: option timeout: not JSON: "),
        (["--runner-option", 'max_concurrency={"a":'], "error: option max_concurrency: not JSON: "),
        (["--option", 'timeout="2'], "error: option timeout: not JSON: "),
    ],
    ids=["list", "object", "string"],
)
def test_an_option_that_opens_as_json_but_is_not_is_refused_before_the_run(
    cli: CliRunner, train: list[str], tmp_path: Path, extra: list[str], message: str
) -> None:
    """A typo in a JSON value reached the algorithm or runners as a bare string: the run started and
    failed later on a type error that did not say the JSON was broken."""
    (tmp_path / "train.jsonl").write_text('{"x": 1}\n')
    result = cli.invoke(app, [*train, "--dataset", "train.jsonl", *extra])
    assert one_line_error(result).startswith(message)
    assert not (tmp_path / "run").exists()  # refused before anything started


def test_a_config_file_saved_with_a_byte_order_mark_trains(
    cli: CliRunner, train: list[str], tmp_path: Path, tracing: None
) -> None:
    """Windows editors start UTF-8 files with a BOM: the file was refused as not TOML at line 1."""
    (tmp_path / "train.jsonl").write_text('{"x": 1}\n')
    settings = 'algorithm = "baseline"\ndataset = "train.jsonl"\nagent = "agents_for_runner_tests:double"\n'
    (tmp_path / "train.toml").write_bytes(b"\xef\xbb\xbf" + settings.encode())
    result = cli.invoke(app, ["train", "train.toml", "--store", "memory://", "--output-dir", "run"])
    assert result.exit_code == 0, result.output
    assert '"train/reward_mean": 2.0' in result.stdout


def test_a_config_file_that_is_not_utf8_is_refused_naming_it(cli: CliRunner, tmp_path: Path) -> None:
    """TOML is UTF-8: a file in another encoding was read in the locale's, or failed naming no file."""
    (tmp_path / "train.toml").write_bytes('algorithm = "été"\n'.encode("latin-1"))
    line = one_line_error(cli.invoke(app, ["train", str(tmp_path / "train.toml"), "--store", "memory://"]))
    assert line.startswith(f"error: {tmp_path / 'train.toml'}: not UTF-8 text: ")


def test_a_missing_file_is_named_by_the_setting_that_gave_it(cli: CliRunner, tmp_path: Path) -> None:
    """Python's message ("[Errno 2] No such file or directory: 'train.jsonl'") named a path among
    several on the command line, not which setting it was."""
    (tmp_path / "train.jsonl").write_text('{"x": 1}\n')
    common = ["train", "--algorithm", "baseline", "--agent", "agents_for_runner_tests:double", "--store", "memory://"]
    missing = tmp_path / "none.jsonl"
    for extra, setting in [
        (["--dataset", str(missing)], "--dataset"),
        (["--dataset", str(tmp_path / "train.jsonl"), "--val", str(missing)], "--val"),
        (["--dataset", str(tmp_path / "train.jsonl"), "--resources", str(missing)], "--resources"),
    ]:
        assert one_line_error(cli.invoke(app, [*common, *extra])) == f"error: {setting} {missing}: no such file"
    line = one_line_error(cli.invoke(app, ["train", str(tmp_path / "job.toml"), "--store", "memory://"]))
    assert line == f"error: config file {tmp_path / 'job.toml'}: no such file"


def test_runners_below_one_in_a_config_file_are_refused_as_the_setting(cli: CliRunner, tmp_path: Path) -> None:
    """The error named the Trainer's parameter n_runners, which no setting is called."""
    (tmp_path / "train.jsonl").write_text('{"x": 1}\n')
    (tmp_path / "train.toml").write_text(
        'algorithm = "baseline"\ndataset = "train.jsonl"\nagent = "agents_for_runner_tests:double"\nrunners = 0\n'
    )
    line = one_line_error(cli.invoke(app, ["train", str(tmp_path / "train.toml"), "--store", "memory://"]))
    assert line == "error: --runners must be at least 1, not 0"


def test_a_command_with_an_unclosed_quote_is_refused_naming_the_flag(cli: CliRunner, tmp_path: Path) -> None:
    """The error was shlex's bare "No closing quotation", naming neither the flag nor the text."""
    (tmp_path / "train.jsonl").write_text('{"x": 1}\n')
    args = ["train", "--algorithm", "baseline", "--dataset", str(tmp_path / "train.jsonl"), "--store", "memory://"]
    line = one_line_error(cli.invoke(app, [*args, "--output-dir", str(tmp_path / "run"), "--command", "sh -c 'x"]))
    assert line == 'error: --command "sh -c \'x": No closing quotation'
    assert not (tmp_path / "run").exists()


def test_a_command_whose_program_is_missing_is_refused_before_any_rollout(cli: CliRunner, tmp_path: Path) -> None:
    """Every rollout ran the command and failed with FileNotFoundError; the fit reported it only at
    its end, as "none of the 2 rollouts succeeded"."""
    (tmp_path / "train.jsonl").write_text('{"x": 1}\n{"x": 2}\n')
    store = f"sqlite:///{tmp_path / 'store.db'}"
    args = ["train", "--algorithm", "baseline", "--dataset", str(tmp_path / "train.jsonl"), "--store", store]
    command = "agl-no-such-program --task 'two words'"
    line = one_line_error(cli.invoke(app, [*args, "--output-dir", str(tmp_path / "run"), "--command", command]))
    assert line == "error: the command's program 'agl-no-such-program' is not on PATH"
    assert not (tmp_path / "run").exists()
    opened = open_store(store)
    try:
        assert asyncio.run(opened.statistics()).rollouts == 0
    finally:
        asyncio.run(opened.close())


def printed_reward(task: Any, output: str, spans: list[Span]) -> float:
    return float(output)


@pytest.mark.parametrize(
    ("program", "message"),
    [
        ("./missing.sh", "the command's program './missing.sh' is not an executable file"),
        ("./not_executable.sh", "the command's program './not_executable.sh' is not an executable file"),
        ("tool_on_the_runner_path", None),  # found on the PATH its env gives it, not the trainer's
    ],
    ids=["missing-file", "not-executable", "on-the-env-path"],
)
def test_command_runners_look_the_program_up_as_it_will_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracing: None, program: str, message: str | None
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not_executable.sh").write_text("#!/bin/sh\necho 1\n")
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "tool_on_the_runner_path").write_text(f"#!{sys.executable}\nprint(0.5)\n")
    (tools / "tool_on_the_runner_path").chmod(0o755)
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", watchdog_interval=None)
    options = {"command": [program], "reward": printed_reward, "env": {"PATH": str(tools)}}
    trainer = Trainer("baseline", store=store, runner_mode="command", runner_options=options)
    try:
        if message is None:
            assert trainer.fit(None, [{"x": 1}])["train/reward_mean"] == 0.5
        else:
            with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
                trainer.fit(None, [{"x": 1}])
            assert asyncio.run(store.statistics()).rollouts == 0
    finally:
        asyncio.run(store.close())


def test_an_algorithm_factory_that_raises_is_reported_naming_its_plugin(
    cli: CliRunner,
    train: list[str],
    tmp_path: Path,
    install: Callable[[EntryPoint], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It ended `agl train` with a traceback that named no plugin."""
    (tmp_path / "agl_exploding_plugin_for_tests.py").write_text(EXPLODING_PLUGIN)
    monkeypatch.syspath_prepend(tmp_path)
    install(EntryPoint("exploding", "agl_exploding_plugin_for_tests", plugins_module.ENTRY_POINT_GROUP))
    listed = cli.invoke(app, ["algorithms"])
    assert listed.exit_code == 0, listed.output
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert ["exploding", "exploding"] in rows and ["baseline", "agl-trainer"] in rows
    (tmp_path / "train.jsonl").write_text('{"x": 1}\n')
    args = [arg if arg != "baseline" else "exploding" for arg in train]
    line = one_line_error(cli.invoke(app, [*args, "--dataset", "train.jsonl"]))
    assert line == "error: algorithm exploding (from exploding) could not be created: RuntimeError: factory exploded"
    assert not (tmp_path / "run").exists()


def test_a_result_and_metrics_that_are_not_finite_are_printed_and_written_as_json(
    cli: CliRunner,
    train: list[str],
    tmp_path: Path,
    install: Callable[[EntryPoint], None],
    monkeypatch: pytest.MonkeyPatch,
    tracing: None,
) -> None:
    """stdout and metrics.jsonl held a bare NaN (and Infinity), which JSON parsers other than Python's refuse."""
    (tmp_path / "agl_diverging_plugin_for_tests.py").write_text(DIVERGING_PLUGIN)
    monkeypatch.syspath_prepend(tmp_path)
    install(EntryPoint("diverging", "agl_diverging_plugin_for_tests", plugins_module.ENTRY_POINT_GROUP))
    (tmp_path / "train.jsonl").write_text('{"x": 1}\n')
    args = [arg if arg != "baseline" else "diverging" for arg in train]
    result = cli.invoke(app, [*args, "--dataset", "train.jsonl"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout, parse_constant=refuse_constant) == {"loss": None, "grad_norm": [1.0, None]}
    [line] = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line, parse_constant=refuse_constant)["loss"] is None


def refuse_constant(name: str) -> None:
    raise ValueError(f"not JSON: {name}")


def test_a_broken_plugins_error_is_folded_not_cut_at_80_columns(
    cli: CliRunner, install: Callable[[EntryPoint], None]
) -> None:
    """The error column ended in an ellipsis, cutting the name of the missing module."""
    install(EntryPoint("broken", LONG_MODULE, plugins_module.ENTRY_POINT_GROUP))
    result = cli.invoke(app, ["algorithms"], env={"TTY_COMPATIBLE": "1", "COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    shown = ANSI.sub("", result.stdout)
    assert max(map(len, shown.splitlines())) <= 80
    assert f"Nomodulenamed'{LONG_MODULE}'" in re.sub(r"\s+", "", shown)


def test_processes_refuse_an_agent_named_in_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``__main__:agent`` imported in the trainer, but a child's ``__main__`` is the worker: every child
    failed to import it and was restarted until the fit gave up."""
    monkeypatch.setattr(sys.modules["__main__"], "edge_agent", double, raising=False)
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        with pytest.raises(ValueError, match=r"cannot import '__main__:edge_agent' in another process"):
            ProcessRunners(store, "__main__:edge_agent", max_restarts=0)
    finally:
        asyncio.run(store.close())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--runner-mode", "threads", "--runner-option", "stop_seconds=10s"],
            "error: runner mode 'threads': option 'stop_seconds' must be float, not '10s'",
        ),
        (
            ["--runner-mode", "processes", "--runner-option", 'max_restarts="3"'],
            "error: runner mode 'processes': option 'max_restarts' must be int, not '3'",
        ),
        (
            ["--runner-mode", "threads", "--runner-option", "stop_seconds=-1"],
            "error: runner option 'stop_seconds' must be at least 0, not -1",
        ),
    ],
    ids=["string-for-seconds", "string-for-count", "negative-seconds"],
)
def test_a_bad_runner_option_is_refused_in_one_line_naming_it(
    cli: CliRunner, train: list[str], tmp_path: Path, extra: list[str], message: str
) -> None:
    """A string for ``stop_seconds`` ran the whole fit, then failed as "unsupported operand type(s)
    for +"; one for ``max_restarts`` passed until a runner died; a negative one was taken."""
    (tmp_path / "train.jsonl").write_text('{"x": 1}\n')
    store = f"sqlite:///{tmp_path / 'store.db'}"
    line = one_line_error(cli.invoke(app, [*train, "--dataset", "train.jsonl", "--store", store, *extra]))
    assert line == message


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"env": {"SEED": 1}}, "runner mode 'command': option 'env' must be dict[str, str] | None, not {'SEED': 1}"),
        ({"reward": 0.5}, "runner mode 'command': option 'reward' must be RewardFunction | str | None, not 0.5"),
    ],
    ids=["env-value-not-a-string", "reward-not-a-function"],
)
def test_command_options_that_would_fail_every_rollout_are_refused_before_any(
    tmp_path: Path, tracing: None, options: dict[str, Any], message: str
) -> None:
    """Each rollout failed on them (a TypeError starting the program, or calling the reward) and
    the fit reported only that none succeeded."""
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", watchdog_interval=None)
    runner_options = {"command": [sys.executable, "-c", "print(1)"], **options}
    trainer = Trainer("baseline", store=store, runner_mode="command", runner_options=runner_options)
    try:
        with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
            trainer.fit(None, [{"x": 1}])
        assert asyncio.run(store.statistics()).rollouts == 0
    finally:
        asyncio.run(store.close())
