"""Rollouts and the queue: enqueue, dequeue, start, query, update, wait (long poll)."""

from __future__ import annotations

from fastapi import APIRouter

from agl.core.server.bodies import StrictJsonRoute
from agl.core.server.calls import HotCalls
from agl.core.server.encoding import JsonBytes, respond, respond_page
from agl.core.server.errors import ERROR_RESPONSES
from agl.core.store.base import LightningStore
from agl.core.store.wire import (
    API_PREFIX,
    LONG_POLL_MAX_SECONDS,
    DequeueBody,
    EnqueueManyBody,
    PageBody,
    QueryRolloutsBody,
    RolloutUpdateBody,
    StartRolloutBody,
    WaitBody,
    sent_fields,
)
from agl.core.types import AttemptedRollout, Rollout, RolloutRequest


def build(store: LightningStore, calls: HotCalls) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, tags=["rollouts"], responses=ERROR_RESPONSES, route_class=StrictJsonRoute)

    @router.post("/rollouts", response_model=Rollout)
    async def enqueue_rollout(body: RolloutRequest) -> JsonBytes:
        """Queue a task. Sending a ``rollout_id`` that exists returns that rollout (safe to retry)."""
        return JsonBytes(await calls.enqueue(body))

    @router.post("/rollouts/batch", response_model=list[Rollout])
    async def enqueue_many_rollouts(body: EnqueueManyBody) -> JsonBytes:
        return JsonBytes(await calls.enqueue_many(body))

    @router.post("/rollouts/start", response_model=AttemptedRollout)
    async def start_rollout(body: StartRolloutBody) -> JsonBytes:
        return respond(await store.start_rollout(**sent_fields(body)), AttemptedRollout)

    @router.post("/rollouts/query", response_model=PageBody[Rollout])
    async def query_rollouts(body: QueryRolloutsBody) -> JsonBytes:
        return respond_page(await store.query_rollouts(**body.model_dump()), Rollout)

    @router.post("/rollouts/wait", response_model=list[Rollout])
    async def wait_for_rollouts(body: WaitBody) -> JsonBytes:
        """Long poll: answers when all are finished or after min(timeout, the server's cap) seconds."""
        timeout = LONG_POLL_MAX_SECONDS if body.timeout is None else min(body.timeout, LONG_POLL_MAX_SECONDS)
        return respond(await store.wait_for_rollouts(body.rollout_ids, timeout), list[Rollout])

    @router.post("/dequeue", response_model=AttemptedRollout | None)
    async def dequeue_rollout(body: DequeueBody) -> JsonBytes:
        return JsonBytes(await calls.dequeue(body))

    @router.get("/rollouts/{rollout_id:agl_id}", response_model=Rollout)
    async def get_rollout(rollout_id: str) -> JsonBytes:
        return JsonBytes(await calls.get_rollout(rollout_id))

    @router.patch("/rollouts/{rollout_id:agl_id}", response_model=Rollout)
    async def update_rollout(rollout_id: str, body: RolloutUpdateBody) -> JsonBytes:
        """Change the fields sent; a terminal status also ends the active attempt."""
        return JsonBytes(await calls.update_rollout(rollout_id, body))

    return router
