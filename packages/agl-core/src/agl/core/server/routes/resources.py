"""Versioned resources: add, update (a new version), fetch by id or the latest, list."""

from __future__ import annotations

from fastapi import APIRouter

from agl.core.errors import ResourcesNotFound
from agl.core.server.bodies import StrictJsonRoute
from agl.core.server.encoding import JsonBytes, respond, respond_page
from agl.core.server.errors import ERROR_RESPONSES
from agl.core.store.base import LightningStore
from agl.core.store.wire import API_PREFIX, PageBody, ResourcesBody
from agl.core.types import ResourcesUpdate


def build(store: LightningStore) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, tags=["resources"], responses=ERROR_RESPONSES, route_class=StrictJsonRoute)

    @router.post("/resources", response_model=ResourcesUpdate)
    async def add_resources(body: ResourcesBody) -> JsonBytes:
        return respond(await store.add_resources(body.resources), ResourcesUpdate)

    @router.get("/resources", response_model=PageBody[ResourcesUpdate])
    async def query_resources(
        sort_by: str = "update_time", sort_order: str = "asc", limit: int | None = None, offset: int = 0
    ) -> JsonBytes:
        page = await store.query_resources(sort_by=sort_by, sort_order=sort_order, limit=limit, offset=offset)  # type: ignore[arg-type]
        return respond_page(page, ResourcesUpdate)

    @router.get("/resources/latest", response_model=ResourcesUpdate)
    async def get_latest_resources() -> JsonBytes:
        latest = await store.get_latest_resources()
        if latest is None:
            raise ResourcesNotFound("latest")
        return respond(latest, ResourcesUpdate)

    @router.get("/resources/{resources_id:agl_id}", response_model=ResourcesUpdate)
    async def get_resources(resources_id: str) -> JsonBytes:
        update = await store.get_resources_by_id(resources_id)
        if update is None:
            raise ResourcesNotFound(resources_id)
        return respond(update, ResourcesUpdate)

    @router.put("/resources/{resources_id:agl_id}", response_model=ResourcesUpdate)
    async def update_resources(resources_id: str, body: ResourcesBody) -> JsonBytes:
        return respond(await store.update_resources(resources_id, body.resources), ResourcesUpdate)

    return router
