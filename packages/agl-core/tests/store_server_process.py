"""``agl store serve`` as a child process over a SQLite file, restartable on the same port: the
store server the crash tests kill (test_server_load.py, test_http_restart.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

TIMEOUT = 90.0
"""Bounds every wait on the process; a healthy start or stop needs a fraction of it."""


class Server:
    """``agl store serve --store sqlite:///<tmp>/store.db`` on a free port, its output in a log."""

    def __init__(self, tmp_path: Path, processes: int = 1, token: str | None = None) -> None:
        self.processes = processes
        self.token = token
        self.db = tmp_path / "store.db"
        self.log = tmp_path / "server.log"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Returns at once; clients retry a refused connection until the server listens."""
        command = ["-m", "agl.core.cli", "store", "serve", "--store", f"sqlite:///{self.db}", "--port", str(self.port),
                   "--workers", str(self.processes)]  # fmt: skip
        environment = {**os.environ, **({"AGL_STORE_TOKEN": self.token} if self.token else {})}
        with self.log.open("a") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, *command, env=environment, stdout=log, stderr=log
            )

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        assert await asyncio.wait_for(self.process.wait(), TIMEOUT) == -signal.SIGKILL

    async def stop(self) -> bool:
        """SIGTERM; True when the server shut down on it (uvicorn exits by re-raising the signal)."""
        if self.process is None:
            return False
        if self.process.returncode is None:
            self.process.terminate()
        return await asyncio.wait_for(self.process.wait(), TIMEOUT) in (0, -signal.SIGTERM)


@asynccontextmanager
async def running(server: Server) -> AsyncIterator[Server]:
    """The server started, then stopped; its log printed (pytest shows it when the test failed)."""
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        print(server.log.read_text())
