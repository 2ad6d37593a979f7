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

    # HEAD too (undocumented: the spec would list the operation twice): RFC 9110 has servers answer
    # it wherever GET is, and uptime probes send it.
    router.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    @router.get("/metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        metrics.observe_store(await store.statistics())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
