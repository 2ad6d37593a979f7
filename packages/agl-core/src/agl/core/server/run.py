"""Run the store server with uvicorn (uvloop when installed; httptools, with one write per answer)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from agl.core.server.app import create_app
from agl.core.server.protocol import OneWriteHttpProtocol
from agl.core.server.settings import ServerSettings, check_exposure
from agl.core.store.urls import open_store

KEEP_ALIVE_SECONDS = 65
"""Longer than the client's 15 s idle limit, so a client never reuses a connection being closed."""


def uvicorn_config(app: FastAPI, **options: Any) -> uvicorn.Config:
    """How every store server runs under uvicorn (``agl store serve``, the trainer's, the tests')."""
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=5,
        http=OneWriteHttpProtocol,
        proxy_headers=False,  # nothing here reads the client's address: no layer rewriting it per request
        **options,
    )


def serve(settings: ServerSettings, store_url: str | None = None) -> None:
    """Serve ``store_url`` (default ``$AGL_STORE``) until interrupted; closes the store on the way out."""
    check_exposure(settings)
    store = open_store(store_url)
    app = create_app(settings, store)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # uvicorn ends a SIGTERM by re-raising the signal, so the finally below never runs then;
        # the lifespan's shutdown does, before the signal is re-raised.
        try:
            yield
        finally:
            await store.close()

    app.router.lifespan_context = lifespan
    try:
        config = uvicorn_config(app, host=settings.host, port=settings.port)
        # Server.run (not asyncio.run(serve())) installs uvloop and the signal handlers.
        uvicorn.Server(config).run()
    finally:
        asyncio.run(store.close())
