"""``agl serve``: a real subprocess on a free port, stopped with SIGINT; and its refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

pytest.importorskip("transformers")

from agl.trainer.serving.cli import StopSignal, add_commands
from agl.trainer.testing import build_tiny_model

AGL = Path(sys.executable).parent / "agl"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.mark.skipif(not AGL.exists(), reason="the agl command is not installed beside this python")
def test_agl_serve_answers_then_stops_on_sigint(tiny_dir: Path) -> None:
    env = {**os.environ, "AGL_SERVE_TOKEN": "cli-token"}
    command = [str(AGL), "serve", str(tiny_dir), "--port", "0", "--served-model-name", "tiny"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline() if process.stdout else ""  # printed once requests are answered
        assert line.startswith("serving tiny at http://127.0.0.1:"), (line, process.stderr and process.stderr.read())
        base_url = line.split(" at ", 1)[1].strip()
        headers = {"authorization": "Bearer cli-token"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
            assert [m["id"] for m in client.get("/models").json()["data"]] == ["tiny"]
            body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "return_token_ids": True}
            answer = client.post("/chat/completions", json=body).json()
            assert len(answer["choices"][0]["token_ids"]) <= 4
            assert client.get("/models", headers={"authorization": "Bearer wrong"}).status_code == 401
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def _app() -> typer.Typer:
    app = typer.Typer()
    add_commands(app)
    app.command("noop", hidden=True)(lambda: None)  # typer needs two commands to keep "serve" as a name
    return app


def test_agl_serve_refuses_a_public_address_without_a_token(tiny_dir: Path) -> None:
    result = CliRunner().invoke(_app(), ["serve", str(tiny_dir), "--host", "0.0.0.0"], env={"AGL_SERVE_TOKEN": ""})
    assert result.exit_code == 1
    assert "without a token" in result.output


@pytest.mark.parametrize("engine", ["transformers", "vllm"])
def test_agl_serve_refuses_a_blank_token_before_starting_any_engine(tiny_dir: Path, engine: str) -> None:
    """vLLM would have taken it as its API key; the embedded server refused it with a traceback."""
    result = CliRunner().invoke(_app(), ["serve", str(tiny_dir), "--engine", engine], env={"AGL_SERVE_TOKEN": "  "})
    assert result.exit_code == 1
    assert result.output.strip() == "error: the token is blank: set a real token, or none to serve without one"


def test_agl_serve_names_the_installed_engines_when_asked_for_another(tiny_dir: Path) -> None:
    result = CliRunner().invoke(_app(), ["serve", str(tiny_dir), "--engine", "nonesuch"])
    assert result.exit_code == 1
    assert "no model server named 'nonesuch'" in result.output and "transformers" in result.output


def test_agl_serve_reports_a_missing_model_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["serve", str(tmp_path / "missing"), "--port", "0"])
    assert result.exit_code == 1
    assert "no such model folder" in result.output


def test_agl_serve_reports_a_device_torch_cannot_use_in_one_line(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU-only torch
    result = CliRunner().invoke(_app(), ["serve", str(tiny_dir), "--port", "0", "--option", "device=cuda"])
    assert result.exit_code == 1
    assert "error: device 'cuda' is not available to this torch" in result.output


def test_agl_serve_refuses_a_port_out_of_range(tiny_dir: Path) -> None:
    result = CliRunner().invoke(_app(), ["serve", str(tiny_dir), "--port", "99999"])
    assert result.exit_code == 2
    assert "--port" in result.output and "65535" in result.output


def test_agl_serve_refuses_an_unknown_tool_call_parser_naming_the_known_ones(tiny_dir: Path) -> None:
    result = CliRunner().invoke(_app(), ["serve", str(tiny_dir), "--tool-call-parser", "mistral"])
    assert result.exit_code == 2
    assert "'auto', 'hermes', 'none'" in result.output


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_the_start_at_once_and_once_serving_stops_in_order(signum: int) -> None:
    """A signal during the start (minutes for a large model or vLLM) used to be held until the
    model was served, which it then stopped: Ctrl-C seemed ignored."""
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        signals = StopSignal()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signum)
        assert not signals.stopping.is_set()
        signals.serving = True
        signal.raise_signal(signum)
        assert signals.stopping.is_set()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
