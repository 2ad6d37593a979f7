"""`agl algorithms` and `agl train` on the real root app, with the trainer's commands added as
the `agl` script adds them (through the `agl.cli` entry point)."""

from __future__ import annotations

import json
import shlex
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agl.core.cli import add_plugin_commands, app
from agl.trainer import plugins as plugins_module
from agl.trainer.runners import DEFAULT_MODE


@pytest.fixture(scope="module")
def cli() -> CliRunner:
    assert add_plugin_commands(app) == []
    return CliRunner()


def test_algorithms_lists_the_builtin_and_its_distribution(cli: CliRunner) -> None:
    result = cli.invoke(app, ["algorithms"])
    assert result.exit_code == 0, result.output
    assert any(line.split() == ["baseline", "agl-trainer"] for line in result.output.splitlines())
    as_json = json.loads(cli.invoke(app, ["algorithms", "--json"]).output)
    assert {"name": "baseline", "provided_by": "agl-trainer"} in as_json["algorithms"]
    assert as_json["failed"] == []


def test_algorithms_lists_a_broken_plugin_with_its_error(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    real = plugins_module.entry_points(group="agl.trainer")
    broken = EntryPoint("broken", "agl_no_such_module_for_tests", "agl.trainer")
    monkeypatch.setattr(plugins_module, "entry_points", lambda group: [*real, broken])
    result = cli.invoke(app, ["algorithms"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "baseline" in result.output
    assert "broken" in result.output and "agl_no_such_module_for_tests" in result.output


def test_train_runs_an_agent_module_over_a_jsonl_dataset(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracing: None
) -> None:
    (tmp_path / "cli_agent_for_tests.py").write_text(
        "from agl.core.agent import rollout\n\n@rollout\ndef agent(task):\n    return task['x']\n"
    )
    (tmp_path / "train.jsonl").write_text('{"x": 1}\n\n{"x": 0}\n')
    (tmp_path / "val.jsonl").write_text('{"x": 0.5}\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    args = ["train", "--algorithm", "baseline", "--agent", "cli_agent_for_tests:agent", "--store", "memory://"]
    result = cli.invoke(app, [*args, "--dataset", "train.jsonl", "--val", "val.jsonl", "--runners", "2"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["train/reward_mean"] == 0.5 and metrics["val/reward_mean"] == 0.5
    assert metrics["train/rollouts"] == 2.0
    [run_dir] = (tmp_path / "agl-runs").iterdir()  # the default output directory, one per run
    assert f"metrics: {Path('agl-runs', run_dir.name, 'metrics.jsonl')}" in result.stderr
    [step] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert step["step"] == 0 and step["val/reward_mean"] == 0.5
    assert "step 0" not in result.stderr  # not a terminal: no progress unless asked

    shown = cli.invoke(app, [*args, "--dataset", "train.jsonl", "--progress"], env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.output
    assert "step 0  train/reward_mean 0.5" in shown.stderr.splitlines()


def test_train_reports_a_bad_agent_in_one_line(cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text("{}\n")
    args = ["train", "--algorithm", "nope", "--agent", "agl.core.agent:LitAgent", "--store", "memory://"]
    result = cli.invoke(app, [*args, "--dataset", str(tmp_path / "train.jsonl")])
    assert result.exit_code == 1
    assert "error:" in result.output and "not an agent" in result.output and "Traceback" not in result.output


def test_train_runs_runners_in_the_mode_asked_for(cli: CliRunner, tmp_path: Path, tracing: None) -> None:
    (tmp_path / "train.jsonl").write_text('{"x": 1}\n{"x": 2}\n')
    args = ["train", "--algorithm", "baseline", "--agent", "agents_for_runner_tests:double", "--store", "memory://"]
    args += ["--dataset", str(tmp_path / "train.jsonl"), "--output-dir", str(tmp_path / "run")]
    result = cli.invoke(
        app, [*args, "--runner-mode", "threads", "--runners", "2", "--runner-option", "max_concurrency=2"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["train/reward_mean"] == 3.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--runner-mode", "nope"], "unknown runner mode 'nope'"),
        (["--runner-mode", "command"], "takes a --command"),
        (["--command", "true", "--agent", "agents_for_runner_tests:double"], "not an --agent"),
        ([], "--agent is required"),
        (["--agent", "agents_for_runner_tests:double", "--runner-mode", "processes"], "in-memory store"),
        (["--agent", "agents_for_runner_tests:double", "--runner-option", "bogus=1"], "unexpected keyword"),
    ],
)
def test_train_reports_bad_runner_settings_in_one_line(
    cli: CliRunner, tmp_path: Path, extra: list[str], message: str, tracing: None
) -> None:
    (tmp_path / "train.jsonl").write_text('{"x": 1}\n')
    args = ["train", "--algorithm", "baseline", "--store", "memory://", "--dataset", str(tmp_path / "train.jsonl")]
    result = cli.invoke(app, [*args, "--output-dir", str(tmp_path / "run"), *extra])
    assert result.exit_code == 1, result.output
    assert "error:" in result.output and message in result.output and "Traceback" not in result.output


def test_train_takes_its_settings_from_a_config_file_and_flags_override_it(
    cli: CliRunner, tmp_path: Path, tracing: None
) -> None:
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"x": 1}\n{"x": 2}\n')
    (folder / "train.toml").write_text(
        'algorithm = "baseline"\nagent = "agents_for_runner_tests:double"\ndataset = "train.jsonl"\n'
        'store = "memory://"\nrunner_mode = "threads"\nrunners = 2\noutput_dir = "run"\n'
        "[runner_options]\nmax_concurrency = 2\n"
    )
    result = cli.invoke(app, ["train", str(folder / "train.toml")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["train/reward_mean"] == 3.0  # double(x) over x = 1, 2
    assert (folder / "run" / "metrics.jsonl").is_file()  # paths relative to the file

    overridden = cli.invoke(app, ["train", str(folder / "train.toml"), "--runner-mode", "nope"])
    assert overridden.exit_code == 1 and "unknown runner mode 'nope'" in overridden.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('algorithm = "baseline"\nlearning_rate = 1\n', "unknown setting 'learning_rate'"),
        ('algorithm = "baseline"\nrunners = "two"\n', "runners must be of type int"),
        ("algorithm = \n", "not TOML"),
        ('agent = "agents_for_runner_tests:double"\n', "--algorithm and --dataset are required"),
    ],
)
def test_train_reports_a_bad_config_file_in_one_line(cli: CliRunner, tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "train.toml").write_text(text)
    result = cli.invoke(app, ["train", str(tmp_path / "train.toml")])
    assert result.exit_code == 1, result.output
    assert "error:" in result.output and message in result.output and "Traceback" not in result.output


def test_train_help_shows_the_defaults_and_reads_as_plain_text(cli: CliRunner) -> None:
    result = cli.invoke(app, ["train", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for default in ["1", DEFAULT_MODE, "agl-runs/<UTC time>", "when stderr is a terminal"]:
        assert f"[default: {default}]" in text
    assert "``" not in text


def test_train_fails_when_no_rollout_succeeded_after_writing_its_metrics(
    cli: CliRunner, tmp_path: Path, tracing: None
) -> None:
    (tmp_path / "train.jsonl").write_text('{"x": 1}\n{"x": 2}\n')
    args = ["train", "--algorithm", "baseline", "--dataset", str(tmp_path / "train.jsonl"), "--store", "memory://"]
    failing = shlex.join([sys.executable, "-c", "raise SystemExit(3)"])
    result = cli.invoke(app, [*args, "--command", failing, "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["train/succeeded"] == 0.0
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "none of the 2 rollouts succeeded" in error and "exited with status 3" in error  # the store's error
    [step] = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert step["train/succeeded"] == 0.0


def test_train_leaves_no_empty_run_folder_when_it_fails_before_a_step(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracing: None
) -> None:
    (tmp_path / "train.jsonl").write_text('{"x": 1}\n')
    monkeypatch.chdir(tmp_path)
    args = ["train", "--algorithm", "apo", "--dataset", "train.jsonl", "--command", "true", "--store", "memory://"]
    result = cli.invoke(app, args)  # apo fails in its run: no prompt template to optimise
    assert result.exit_code == 1, result.output
    assert "PromptTemplate" in result.output
    assert not (tmp_path / "agl-runs").exists()


def test_train_names_a_missing_required_algorithm_option(cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"x": 1}\n')
    args = ["train", "--algorithm", "grpo", "--dataset", str(tmp_path / "train.jsonl"), "--command", "true"]
    result = cli.invoke(app, [*args, "--store", "memory://"])
    assert result.exit_code == 1, result.output
    assert "error: algorithm grpo needs the option model (--option model=VALUE)" in result.output
