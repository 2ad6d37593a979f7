"""The "transformers" model server: the embedded engine and the OpenAI app on a uvicorn thread.

    server = EmbeddedModelServer("model-folder-or.gguf", port=0)
    base_url = server.start()              # http://127.0.0.1:PORT/v1
    server.load_weights("checkpoints/step-3")
    server.stop()

The socket is bound before uvicorn starts, so the port (``port=0``: a free one) is known at once
and early clients wait in the backlog. The engine lives in this process: a trainer in the same
process can train ``server.engine.model`` directly while holding ``server.engine.exclusive()``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import uvicorn

from agl.core.server.run import uvicorn_config
from agl.trainer.serving.model_server import check_exposure
from agl.trainer.serving.openai_app import create_openai_app
from agl.trainer.serving.tool_calls import check_parser
from agl.trainer.serving.transformers_engine import TransformersEngine


class AppThread:
    """A uvicorn server for one app on its own thread and event loop, on an already-bound socket."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.bind((host, port))
        self._socket.listen(128)
        self.host, self.port = host, self._socket.getsockname()[1]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        self.url = f"http://{shown}:{self.port}"
        self._server = uvicorn.Server(uvicorn_config(app))  # the store server's: one write a head, head limits
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"agl-model-server-{self.port}", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def start(self) -> str:
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join()
        self._socket.close()


class EmbeddedModelServer:
    """A `ModelServer` for a transformers model served in this process."""

    def __init__(
        self,
        model: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        engine: TransformersEngine | None = None,
        tool_call_parser: str | None = "auto",
        insecure: bool = False,
        **engine_options: Any,
    ) -> None:
        """``engine``: an engine already loaded (``model`` is then only its description); `stop`
        closes it too. ``tool_call_parser`` as `create_openai_app` takes it. A non-loopback ``host``
        needs a ``token``, or ``insecure=True`` (`check_exposure`). ``engine_options`` go to
        `TransformersEngine.load` (device, dtype, seed, model_name...)."""
        check_exposure(host, token, insecure)
        check_parser(tool_call_parser)
        self.model = model
        self.host, self.port, self.token = host, port, token
        self.tool_call_parser = tool_call_parser
        self._engine = engine
        self._engine_options = engine_options
        self._thread: AppThread | None = None
        self.base_url = ""

    @property
    def engine(self) -> TransformersEngine:
        """The engine, loaded on first use."""
        if self._engine is None:
            self._engine = TransformersEngine.load(self.model, **self._engine_options)
        return self._engine

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    def start(self) -> str:
        if self._thread is None:
            app = create_openai_app(self.engine, token=self.token, tool_call_parser=self.tool_call_parser)
            self._thread = AppThread(app, self.host, self.port)
            self.base_url = f"{self._thread.start()}/v1"
        return self.base_url

    def stop(self) -> None:
        """Stop serving and close the engine (no more requests can be answered by it)."""
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
        if self._engine is not None:
            self._engine.close_sync()

    def load_weights(self, folder: str | Path) -> None:
        self.engine.load_weights_sync(folder)

    def __enter__(self) -> EmbeddedModelServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
