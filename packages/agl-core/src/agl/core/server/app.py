"""`create_app(settings, store)`: the FastAPI app over any `LightningStore`."""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from agl.core.server.auth import TokenAuth, check_token, document_bearer_auth
from agl.core.server.calls import HotCalls
from agl.core.server.errors import install_error_handlers
from agl.core.server.fast import FastPath, routes
from agl.core.server.limits import BodyLimit
from agl.core.server.metrics import Metrics, MetricsMiddleware
from agl.core.server.paths import RawPath
from agl.core.server.routes import admin, attempts, health, otlp, resources, rollouts, spans, workers
from agl.core.server.settings import ServerSettings
from agl.core.store.base import LightningStore
from agl.core.version import __version__


def without_native_telemetry() -> dict[str, Any]:
    """FastAPI's own OpenTelemetry spans off: the store must not trace its own requests into itself
    (newer FastAPI traces by default; older versions have no such option)."""
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    return {}


def create_app(settings: ServerSettings, store: LightningStore, *, fast_path: bool = True) -> FastAPI:
    """Routers are built around ``store`` (no per-request dependency lookups). The caller owns
    the store: it is neither opened nor closed here. ``fast_path=False`` serves every request
    through FastAPI (the tests compare both)."""
    app = FastAPI(
        title="agl store",
        version=__version__,
        summary="Rollouts, attempts, spans, resources and workers of an agl store, and OTLP/HTTP trace ingest.",
        docs_url=None,  # no pages pulling scripts from a CDN; the spec is at /openapi.json
        redoc_url=None,
        **without_native_telemetry(),
    )
    app.state.settings = settings
    metrics = app.state.metrics = Metrics()

    calls = HotCalls(store, metrics)  # the calls of every rollout's path, served by routes and fast path alike
    # The busiest routes first: Starlette tries routes in order.
    for router in (
        spans.build(store, metrics, calls),
        attempts.build(store, calls),
        rollouts.build(store, calls),
        resources.build(store),
        workers.build(store),
        admin.build(store),
    ):
        app.include_router(router)
    app.include_router(otlp.build(store, metrics, settings))
    app.include_router(health.build(store, metrics))

    install_error_handlers(app)
    if fast_path:  # innermost: the token, size limit and metrics below apply to it as to FastAPI
        app.add_middleware(FastPath, fastapi=app, fast_routes=routes(calls))
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.token is not None:
        check_token(settings.token.get_secret_value())
        app.add_middleware(TokenAuth, token=settings.token.get_secret_value())
        document_bearer_auth(app)
    if settings.cors_origins:  # outside the token: a browser's preflight carries none, and it reads a 401 by CORS
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RawPath)  # outermost: every route, the fast path's included, matches the path as sent
    return app
