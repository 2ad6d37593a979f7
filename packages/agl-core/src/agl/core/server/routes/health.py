"""/health (open, for load balancers) and /metrics (Prometheus text; behind the token)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agl.core.server.metrics import Metrics
from agl.core.store.base import LightningStore


def build(store: LightningStore, metrics: Metrics) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        metrics.observe_store(await store.statistics())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
