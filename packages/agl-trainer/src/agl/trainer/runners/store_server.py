"""Serve the trainer's store over HTTP from a thread of the trainer, for runners that cannot
share the object: a command's OpenTelemetry exporter, Ray actors.

Only on 127.0.0.1, and behind a random token of its own: the store holds prompts, answers and the
LLM proxy's key (in its resources), which no other user of the machine may read. The token reaches
only the runners, in their environment or constructor arguments, never on a command line (which
``ps`` shows to every user). For runners on other machines, run ``agl store serve`` and give the
trainer that URL instead. Needs the store server's dependencies (``agl-core[server]``).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
from typing import NamedTuple

from agl.core.store.base import LightningStore
from agl.trainer.runners.specs import shared_store_token, shared_store_url

HOST = "127.0.0.1"


class StoreServer:
    """The socket is bound in the constructor, so `url` is valid at once and early clients wait in
    the backlog rather than being refused. Clients send `token` as ``Authorization: Bearer``."""

    def __init__(self, store: LightningStore) -> None:
        try:
            import uvicorn

            from agl.core.server.app import create_app
            from agl.core.server.run import uvicorn_config
            from agl.core.server.settings import ServerSettings
        except ImportError as error:
            raise ImportError(f"serving the store to runners needs agl-core[server]: {error}") from None
        self.token = secrets.token_urlsafe(32)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind((HOST, 0))
        self._socket.listen(256)
        port = self._socket.getsockname()[1]
        self.url = f"http://{HOST}:{port}"
        app = create_app(ServerSettings(host=HOST, port=port, token=self.token), store)
        self._server = uvicorn.Server(uvicorn_config(app))
        self._thread = threading.Thread(target=self._serve, name=f"agl-store-server-{port}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join()
        self._socket.close()


class HttpStore(NamedTuple):
    """How runners reach the store over HTTP."""

    url: str
    token: str | None
    """The token of the trainer's own `server`, else the one the trainer's store server client
    sends (given in code or by ``$AGL_STORE_TOKEN``); None without one."""
    server: StoreServer | None
    """Served from here (stop it when done); None for the user's store server."""


def http_store(store: LightningStore) -> HttpStore:
    """``store`` over HTTP: its own URL for a store server client, else served from here."""
    url = shared_store_url(store)
    if url is not None and url.startswith(("http://", "https://")):
        return HttpStore(url, shared_store_token(store), None)
    server = StoreServer(store)
    return HttpStore(server.url, server.token, server)
