"""The store as a whole: statistics, and enforcing deadlines on demand."""

from __future__ import annotations

from fastapi import APIRouter

from agl.core.server.bodies import StrictJsonRoute
from agl.core.server.encoding import JsonBytes, respond
from agl.core.server.errors import ERROR_RESPONSES
from agl.core.store.base import LightningStore, StoreStatistics
from agl.core.store.wire import API_PREFIX, DeadlinesBody


def build(store: LightningStore) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, tags=["store"], responses=ERROR_RESPONSES, route_class=StrictJsonRoute)

    @router.get("/statistics", response_model=StoreStatistics)
    async def statistics() -> JsonBytes:
        return respond(await store.statistics(), StoreStatistics)

    @router.post("/deadlines", response_model=DeadlinesBody)
    async def check_deadlines() -> JsonBytes:
        """Enforce timeouts now (the watchdog does it on its own every second)."""
        return respond(DeadlinesBody(enforced=await store.check_deadlines()), DeadlinesBody)

    return router
