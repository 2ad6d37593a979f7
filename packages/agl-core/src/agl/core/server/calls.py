"""The store calls of every rollout's path, each answered as JSON bytes.

Written once and served twice: FastAPI's routes (the documented API) and the fast path
(`server.fast`) call the same methods, so the two differ only in how a request is parsed.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from agl.core.errors import RolloutNotFound
from agl.core.server.metrics import Metrics
from agl.core.store.base import LightningStore, Page
from agl.core.store.lifecycle import LifecycleStore
from agl.core.store.wire import (
    AttemptUpdateBody,
    DequeueBody,
    EnqueueManyBody,
    PageBody,
    RolloutUpdateBody,
    SpanBatchBody,
    sent_fields,
)
from agl.core.types import Attempt, AttemptedRollout, Rollout, RolloutRequest, Span


def json_page(page: Page[bytes]) -> bytes:
    """What ``PageBody`` serialises to, for items that are JSON already."""
    limit = b"null" if page.limit is None else b"%d" % page.limit
    return b'{"items":[%b],"total":%d,"offset":%d,"limit":%b}' % (b",".join(page.items), page.total, page.offset, limit)


class HotCalls:
    """One method per call; each takes the validated request and returns the answer's body."""

    def __init__(self, store: LightningStore, metrics: Metrics) -> None:
        self.store = store
        self._spans_received = metrics.spans.labels("rest")
        self._rollout = TypeAdapter(Rollout).dump_json
        self._rollouts = TypeAdapter(list[Rollout]).dump_json
        self._claimed = TypeAdapter(AttemptedRollout | None).dump_json
        self._attempt = TypeAdapter(Attempt).dump_json
        self._span = TypeAdapter(Span).dump_json
        self._spans = TypeAdapter(list[Span]).dump_json
        self._span_page = TypeAdapter(PageBody[Span]).dump_json

    async def enqueue(self, body: RolloutRequest) -> bytes:
        # A validated request already: enqueued as one, not taken apart and validated again.
        return self._rollout((await self.store.enqueue_many_rollouts([body]))[0])

    async def enqueue_many(self, body: EnqueueManyBody) -> bytes:
        return self._rollouts(await self.store.enqueue_many_rollouts(body.requests))

    async def dequeue(self, body: DequeueBody) -> bytes:
        return self._claimed(await self.store.dequeue_rollout(body.worker_id))

    async def get_rollout(self, rollout_id: str) -> bytes:
        found = await self.store.get_rollout_by_id(rollout_id)
        if found is None:
            raise RolloutNotFound(rollout_id)
        return self._rollout(found)

    async def update_rollout(self, rollout_id: str, body: RolloutUpdateBody) -> bytes:
        return self._rollout(await self.store.update_rollout(rollout_id, **sent_fields(body)))

    async def update_attempt(self, rollout_id: str, attempt_id: str, body: AttemptUpdateBody) -> bytes:
        return self._attempt(await self.store.update_attempt(rollout_id, attempt_id, **sent_fields(body)))

    async def add_span(self, body: Span) -> bytes:
        added = await self.store.add_span(body)
        self._spans_received.inc()
        return self._span(added)

    async def add_many_spans(self, body: SpanBatchBody) -> bytes:
        added = await self.store.add_many_spans(body.spans)
        self._spans_received.inc(len(added))
        return self._spans(added)

    async def query_spans(self, rollout_id: str, **query: Any) -> bytes:
        """``query``: `LightningStore.query_spans`'s keyword arguments, those sent. Over a `LifecycleStore`
        the spans' stored JSON is spliced into the page as it is: models built only to be serialised
        again cost more than the query (~7 µs per LLM-sized span)."""
        if isinstance(self.store, LifecycleStore):
            return json_page(await self.store.query_span_json(rollout_id, **query))
        page = await self.store.query_spans(rollout_id, **query)
        body = PageBody[Span].model_construct(items=page.items, total=page.total, offset=page.offset, limit=page.limit)
        return self._span_page(body)
