"""A real store server on 127.0.0.1 in a background thread, for tests (needs the server extra).

The listening socket is bound before uvicorn starts, so the port is known at once and a client
that connects early waits in the backlog: no readiness polling.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import uvicorn
from fastapi import FastAPI

from agl.core.server.run import uvicorn_config


class ServingThread:
    def __init__(self, app: FastAPI, **options: Any) -> None:
        """``options`` go to `uvicorn_config`, over its defaults."""
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(128)
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn_config(app, **options))
        self._thread = threading.Thread(target=self._run, name=f"agl-test-server-{self.port}", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def start(self) -> ServingThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join()
        self._socket.close()

    def __enter__(self) -> ServingThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
