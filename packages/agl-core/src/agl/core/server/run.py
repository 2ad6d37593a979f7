"""Run the store server with uvicorn (uvloop and httptools when installed)."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from agl.core.server.app import create_app
from agl.core.server.settings import ServerSettings, check_exposure
from agl.core.store.urls import open_store

logger = logging.getLogger("agl.server")


def serve(settings: ServerSettings, store_url: str | None = None) -> None:
    """Serve ``store_url`` (default ``$AGL_STORE``) until interrupted; closes the store on the way out."""
    check_exposure(settings)
    asyncio.run(_serve(settings, store_url))


async def _serve(settings: ServerSettings, store_url: str | None) -> None:
    store = open_store(store_url)
    try:
        app = create_app(settings, store)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        logger.warning("agl store serving %s on http://%s:%d", store_url or "$AGL_STORE", settings.host, settings.port)
        await server.serve()
    finally:
        await store.close()
