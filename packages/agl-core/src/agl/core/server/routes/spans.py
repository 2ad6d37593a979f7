"""Spans: add one or a batch (upserts, so retries are safe), and query a rollout's spans."""

from __future__ import annotations

from fastapi import APIRouter

from agl.core.server.bodies import StrictJsonRoute
from agl.core.server.calls import HotCalls
from agl.core.server.encoding import JsonBytes, respond
from agl.core.server.errors import ERROR_RESPONSES
from agl.core.server.metrics import Metrics
from agl.core.store.base import LightningStore
from agl.core.store.wire import API_PREFIX, ObservedSpansBody, PageBody, SpanBatchBody
from agl.core.types import Span


def build(store: LightningStore, metrics: Metrics, calls: HotCalls) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, tags=["spans"], responses=ERROR_RESPONSES, route_class=StrictJsonRoute)

    @router.post("/spans", response_model=Span)
    async def add_span(body: Span) -> JsonBytes:
        return JsonBytes(await calls.add_span(body))

    @router.post("/spans/batch", response_model=list[Span])
    async def add_many_spans(body: SpanBatchBody) -> JsonBytes:
        return JsonBytes(await calls.add_many_spans(body))

    @router.post("/spans/observed", response_model=list[Span])
    async def add_observed_spans(body: ObservedSpansBody) -> JsonBytes:
        """Spans of runs nobody queued; missing rollouts are created as observed ones."""
        spans = await store.add_observed_spans(body.spans, new_rollout_metadata=body.new_rollout_metadata)
        metrics.spans.labels("rest").inc(len(spans))
        return respond(spans, list[Span])

    @router.get("/rollouts/{rollout_id:agl_id}/spans", response_model=PageBody[Span])
    async def query_spans(
        rollout_id: str,
        attempt_id: str | None = None,
        name: str | None = None,
        sort_by: str = "sequence_id",
        sort_order: str = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> JsonBytes:
        """``attempt_id`` may be an id, ``latest``, or absent for every attempt."""
        return JsonBytes(
            await calls.query_spans(
                rollout_id,
                attempt_id=attempt_id,
                name=name,
                sort_by=sort_by,
                sort_order=sort_order,
                limit=limit,
                offset=offset,
            )
        )

    return router
