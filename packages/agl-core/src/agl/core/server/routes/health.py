"""/health (open, for load balancers) and /metrics (Prometheus text; behind the token)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agl.core.server.deps import AuthDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", dependencies=[AuthDep], response_class=Response)
async def metrics(request: Request, store: StoreDep) -> Response:
    registry = request.app.state.metrics
    registry.observe_store(await store.statistics())
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
