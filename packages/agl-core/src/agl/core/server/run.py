"""Run the store server with uvicorn (uvloop when installed; httptools, with one write per answer)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import gc
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from agl.core.errors import AglError
from agl.core.server.app import create_app
from agl.core.server.protocol import OneWriteHttpProtocol
from agl.core.server.settings import ServerSettings, check_exposure
from agl.core.store.base import LightningStore
from agl.core.store.urls import default_store_url, open_store

KEEP_ALIVE_SECONDS = 65
"""Longer than the client's 15 s idle limit, so a client never reuses a connection being closed."""
PR_SET_PDEATHSIG = 1
"""Linux's prctl option: the signal a process gets when the thread that started it ends."""


def uvicorn_config(app: FastAPI | Callable[[], FastAPI], **options: Any) -> uvicorn.Config:
    """How every store server runs under uvicorn (``agl store serve``, the trainer's, the tests')."""
    defaults: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "timeout_graceful_shutdown": 5,
        "http": OneWriteHttpProtocol,
        "proxy_headers": False,  # nothing here reads the client's address: no layer rewriting it per request
    }
    return uvicorn.Config(app, **{**defaults, **options})


def serve(
    settings: ServerSettings,
    store_url: str | None = None,
    workers: int = 1,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``store_url`` (default ``$AGL_STORE``) until interrupted; closes the store on the way out.

    With ``workers`` > 1, uvicorn's supervisor runs that many server processes on one socket, each
    with its own connection to the SQLite file (which processes share safely), so
    decoding and serialising use as many cores; it restarts a worker that dies.
    ``on_ready`` is called with the server's address once the store is open and the port bound:
    a client connecting from then on waits in the socket's backlog and is answered.
    """
    check_exposure(settings)
    if workers < 1:
        raise AglError(f"--workers must be at least 1, got {workers}")
    if workers > 1:
        url = store_url or default_store_url()
        if not url.startswith("sqlite:"):
            raise AglError(f"--workers {workers} needs a store every process can open (sqlite://), not {url}")
        # Opened once here first: a bad URL or file is one clear error, and the schema exists before
        # the workers open it.
        asyncio.run(open_store(url, watchdog_interval=None).close())
        config = uvicorn_config(
            functools.partial(_app_with_store, settings, url, os.getpid()), factory=True, workers=workers
        )
        sockets = [_listen(settings, config.backlog, on_ready)]
        Multiprocess(config, sockets=sockets).run()
        return
    store = open_store(store_url)
    try:
        config = uvicorn_config(_app_closing(settings, store))
        sockets = [_listen(settings, config.backlog, on_ready)]
        # Server.run (not asyncio.run(serve())) installs uvloop and the signal handlers.
        uvicorn.Server(config).run(sockets=sockets)
    finally:
        asyncio.run(store.close())


def _listen(settings: ServerSettings, backlog: int, on_ready: Callable[[str], None] | None) -> socket.socket:
    """The server's socket, bound here rather than by uvicorn so that a port in use is one clear
    error (uvicorn logs the OS's and exits with status 3); ``on_ready`` is then told its address."""
    host, port = settings.host, settings.port
    ipv6 = ":" in host
    sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET)  # as uvicorn's: "::" is dual-stack
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise AglError(f"port {port} on {host} is in use") from None
        raise AglError(f"cannot listen on {host} port {port}: {error.strerror or error}") from None
    sock.listen(backlog)  # from here on a client waits in the backlog until uvicorn accepts
    if on_ready is not None:
        bound = sock.getsockname()[1]  # the port the system chose for --port 0
        on_ready(f"http://[{host}]:{bound}" if ipv6 else f"http://{host}:{bound}")
    return sock


def _app_with_store(settings: ServerSettings, store_url: str, supervisor: int) -> FastAPI:
    """A worker process's app (uvicorn calls this factory in each worker)."""
    _end_with(supervisor)
    return _app_closing(settings, open_store(store_url))


def _end_with(supervisor: int) -> None:
    """Have Linux send this worker SIGTERM when the supervisor dies (elsewhere, nothing is done).

    Why: the supervisor stops its workers on SIGTERM or SIGINT, but when it is killed (SIGKILL, the
    OOM killer) it cannot, and orphaned workers would go on serving the port, so a restarted server
    could not bind it. The signal follows the supervisor's main thread, which is the one uvicorn
    starts and restarts workers from.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != supervisor:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def _app_closing(settings: ServerSettings, store: LightningStore) -> FastAPI:
    app = create_app(settings, store)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # What start-up built (modules, the app, pydantic's schemas: ~84k objects) lives as long as
        # the process. Frozen, it is skipped by the garbage collector's full passes: over a
        # `store_bench.py` run of a memory:// server (three runs each way), the longest pause went
        # from 45-56 ms to 20-24 ms and all collections took ~15% less time.
        gc.freeze()
        # uvicorn ends a SIGTERM by re-raising the signal, so a caller's finally never runs then;
        # the lifespan's shutdown does, before the signal is re-raised.
        try:
            yield
        finally:
            await store.close()

    app.router.lifespan_context = lifespan
    return app
