"""Attempts of a rollout: start one, list them, update one (by id or ``latest``), reserve span ids."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from agl.core.errors import AttemptNotFound
from agl.core.server.bodies import StrictJsonRoute
from agl.core.server.calls import HotCalls
from agl.core.server.encoding import JsonBytes, respond, respond_page
from agl.core.server.errors import ERROR_RESPONSES
from agl.core.store.base import LightningStore
from agl.core.store.wire import API_PREFIX, AttemptUpdateBody, PageBody, SequenceIdBody, StartAttemptBody
from agl.core.types import Attempt, AttemptedRollout, AttemptStatus


def build(store: LightningStore, calls: HotCalls) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, tags=["attempts"], responses=ERROR_RESPONSES, route_class=StrictJsonRoute)

    @router.post("/rollouts/{rollout_id:agl_id}/attempts", response_model=AttemptedRollout)
    async def start_attempt(rollout_id: str, body: StartAttemptBody) -> JsonBytes:
        return respond(await store.start_attempt(rollout_id, body.worker_id), AttemptedRollout)

    @router.get("/rollouts/{rollout_id:agl_id}/attempts", response_model=PageBody[Attempt])
    async def query_attempts(
        rollout_id: str,
        status_in: Annotated[list[AttemptStatus] | None, Query()] = None,
        sort_by: str = "sequence_id",
        sort_order: str = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> JsonBytes:
        page = await store.query_attempts(
            rollout_id,
            status_in=status_in,
            sort_by=sort_by,
            sort_order=sort_order,
            limit=limit,
            offset=offset,  # type: ignore[arg-type]
        )
        return respond_page(page, Attempt)

    @router.get("/rollouts/{rollout_id:agl_id}/attempts/latest", response_model=Attempt)
    async def get_latest_attempt(rollout_id: str) -> JsonBytes:
        attempt = await store.get_latest_attempt(rollout_id)
        if attempt is None:
            raise AttemptNotFound(f"latest of {rollout_id}")
        return respond(attempt, Attempt)

    @router.patch("/rollouts/{rollout_id:agl_id}/attempts/{attempt_id:agl_id}", response_model=Attempt)
    async def update_attempt(rollout_id: str, attempt_id: str, body: AttemptUpdateBody) -> JsonBytes:
        """Change the fields sent; ``attempt_id`` may be ``latest``."""
        return JsonBytes(await calls.update_attempt(rollout_id, attempt_id, body))

    @router.post(
        "/rollouts/{rollout_id:agl_id}/attempts/{attempt_id:agl_id}/sequence-ids", response_model=SequenceIdBody
    )
    async def next_span_sequence_id(rollout_id: str, attempt_id: str) -> JsonBytes:
        sequence_id = await store.get_next_span_sequence_id(rollout_id, attempt_id)
        return respond(SequenceIdBody(sequence_id=sequence_id), SequenceIdBody)

    return router
