"""Workers: heartbeats and listing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from agl.core.server.bodies import StrictJsonRoute
from agl.core.server.encoding import JsonBytes, respond, respond_page
from agl.core.server.errors import ERROR_RESPONSES
from agl.core.store.base import LightningStore
from agl.core.store.wire import API_PREFIX, PageBody, WorkerHeartbeatBody, sent_fields
from agl.core.types import Worker, WorkerStatus


def build(store: LightningStore) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, tags=["workers"], responses=ERROR_RESPONSES, route_class=StrictJsonRoute)

    @router.put("/workers/{worker_id:agl_id}", response_model=Worker)
    async def update_worker(worker_id: str, body: WorkerHeartbeatBody) -> JsonBytes:
        """A heartbeat; it also heartbeats the worker's active attempt."""
        return respond(await store.update_worker(worker_id, **sent_fields(body)), Worker)

    @router.get("/workers", response_model=PageBody[Worker])
    async def query_workers(
        status_in: Annotated[list[WorkerStatus] | None, Query()] = None,
        sort_by: str = "worker_id",
        sort_order: str = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> JsonBytes:
        page = await store.query_workers(
            status_in=status_in, sort_by=sort_by, sort_order=sort_order, limit=limit, offset=offset
        )  # type: ignore[arg-type]
        return respond_page(page, Worker)

    return router
