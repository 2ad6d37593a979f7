"""Serve the trainer's store over HTTP from a thread of the trainer, for runners that cannot
share the object: a command's OpenTelemetry exporter, Ray actors.

Only on 127.0.0.1 and without a token (the store server refuses anything wider unprotected):
for runners on other machines, run ``agl store serve`` and give the trainer that URL instead.
Needs the store server's dependencies (``agl-core[server]``).
"""

from __future__ import annotations

import asyncio
import socket
import threading

from agl.core.store.base import LightningStore
from agl.trainer.runners.specs import shared_store_url

HOST = "127.0.0.1"


class StoreServer:
    """The socket is bound in the constructor, so `url` is valid at once and early clients wait in
    the backlog rather than being refused."""

    def __init__(self, store: LightningStore) -> None:
        try:
            import uvicorn

            from agl.core.server.app import create_app
            from agl.core.server.run import uvicorn_config
            from agl.core.server.settings import ServerSettings
        except ImportError as error:
            raise ImportError(f"serving the store to runners needs agl-core[server]: {error}") from None
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind((HOST, 0))
        self._socket.listen(256)
        port = self._socket.getsockname()[1]
        self.url = f"http://{HOST}:{port}"
        app = create_app(ServerSettings(host=HOST, port=port), store)
        self._server = uvicorn.Server(uvicorn_config(app))
        self._thread = threading.Thread(target=self._serve, name=f"agl-store-server-{port}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join()
        self._socket.close()


def http_url(store: LightningStore) -> tuple[str, StoreServer | None]:
    """An http(s) URL of ``store``: its own for a store server client, else one served from here
    (stop the returned server when done)."""
    url = shared_store_url(store)
    if url is not None and url.startswith(("http://", "https://")):
        return url, None
    server = StoreServer(store)
    return server.url, server
