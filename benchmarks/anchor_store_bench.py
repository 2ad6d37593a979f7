"""The anchor's store on our store workload: Agent Lightning 0.3.0's ``InMemoryLightningStore``.

    .venvs/anchor/bin/python benchmarks/anchor_store_bench.py [--runs 5] [--n 2000] [--json]

Runs in a virtualenv holding ``agentlightning==0.3.0`` (not agl); `compare_stores.py` makes that
venv and puts these figures next to `store_bench.py`'s. Operations, counts, order and timing mirror
`store_bench.run_once` step for step, through the anchor's public store API and its own ``Span``
type, so the ratios compare like with like. Output shape is the same: {backend: {op: {min, median, max}}}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# Offline: stop litellm (imported by agentlightning) from fetching its model cost map.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
sys.path.insert(0, str(Path(__file__).parent))

from agentlightning.store import InMemoryLightningStore
from agentlightning.types import EnqueueRolloutRequest, Span, TraceStatus
from workload import BATCH, QUERY_SPANS_PER_ROLLOUT, SPANS_PER_ROLLOUT, llm_attributes, task_input

BACKEND = "anchor-memory"
# Our operation name -> the anchor's store method that performs it.
OPERATIONS = {
    "enqueue": "enqueue_rollout",
    "enqueue_many": "enqueue_many_rollouts",
    "dequeue": "dequeue_rollout",
    "update_attempt": "update_attempt",
    "add_span": "add_span",
    "add_many_spans": "add_many_spans",
    "query_spans": "query_spans",
}


def missing_operations() -> list[str]:
    """Operations the anchor's store lacks: reported as missing, never stood in for."""
    return [op for op, method in OPERATIONS.items() if not callable(getattr(InMemoryLightningStore, method, None))]


def spans_for(rollout_id: str, attempt_id: str, first_sequence_id: int, count: int) -> list[Span]:
    """The same spans as `store_bench.spans_for`, as the anchor's ``Span`` (its own public factory)."""
    return [
        Span.from_attributes(
            attributes=llm_attributes(first_sequence_id + i),
            rollout_id=rollout_id,
            attempt_id=attempt_id,
            sequence_id=first_sequence_id + i,
            name="chat bench-model",
            trace_id=f"{1:032x}",
            span_id=f"{first_sequence_id + i:016x}",
            parent_id=None,
            start_time=1.0,
            end_time=2.0,
            status=TraceStatus(status_code="UNSET"),  # agl's default status
        )
        for i in range(count)
    ]


async def timed(n: int, body: Callable[[], Awaitable[None]]) -> float:
    """Ops/s of ``n`` operations done by ``body``, exactly as `store_bench.timed`."""
    start = time.perf_counter()
    await body()
    return n / (time.perf_counter() - start)


async def run_once(n: int) -> dict[str, float]:
    """One pass of every operation on a fresh store (the anchor's defaults)."""
    store = InMemoryLightningStore()
    results: dict[str, float] = {}

    async def enqueue() -> None:
        for i in range(n):
            await store.enqueue_rollout(task_input(i))

    async def enqueue_many() -> None:
        for start in range(0, n, BATCH):
            await store.enqueue_many_rollouts(
                [EnqueueRolloutRequest(input=task_input(i)) for i in range(start, start + BATCH)]
            )

    claimed: list[Any] = []

    async def dequeue() -> None:
        for _ in range(n):
            claimed.append(await store.dequeue_rollout())

    async def update_attempt() -> None:
        for item in claimed:
            await store.update_attempt(item.rollout_id, item.attempt.attempt_id, status="running")

    results["enqueue"] = await timed(n, enqueue)
    results["enqueue_many"] = await timed(n, enqueue_many)
    results["dequeue"] = await timed(n, dequeue)
    results["update_attempt"] = await timed(n, update_attempt)

    # Same disjoint slices as store_bench; spans are built before timing.
    per_rollout, batches = n // SPANS_PER_ROLLOUT, n // BATCH
    single_owners = claimed[:per_rollout]
    batch_owners = claimed[per_rollout : per_rollout + batches]
    query_owners = claimed[per_rollout + batches : 2 * per_rollout + batches]
    single = [s for o in single_owners for s in spans_for(o.rollout_id, o.attempt.attempt_id, 1, SPANS_PER_ROLLOUT)]
    batched = [spans_for(o.rollout_id, o.attempt.attempt_id, 1, BATCH) for o in batch_owners]

    async def add_span() -> None:
        for span in single:
            await store.add_span(span)

    async def add_many_spans() -> None:
        for batch in batched:
            await store.add_many_spans(batch)

    results["add_span"] = await timed(len(single), add_span)
    results["add_many_spans"] = await timed(sum(len(b) for b in batched), add_many_spans)

    for o in query_owners:
        await store.add_many_spans(spans_for(o.rollout_id, o.attempt.attempt_id, 1, QUERY_SPANS_PER_ROLLOUT))

    async def query_spans() -> None:
        for i in range(n):
            await store.query_spans(query_owners[i % len(query_owners)].rollout_id)

    results["query_spans"] = await timed(n, query_spans)
    return results


def summarise(runs: list[dict[str, float]], missing: list[str]) -> dict[str, dict[str, float | None]]:
    """min / median / max per operation; a missing operation gets nulls."""
    return {
        op: (
            {"min": None, "median": None, "max": None}
            if op in missing
            else {
                "min": min(r[op] for r in runs),
                "median": statistics.median(r[op] for r in runs),
                "max": max(r[op] for r in runs),
            }
        )
        for op in OPERATIONS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    args = parser.parse_args()
    missing = missing_operations()
    if missing:
        print(f"anchor store lacks: {', '.join(missing)}", file=sys.stderr)
        runs: list[dict[str, float]] = []  # run_once needs every operation; report nulls for all of them
        missing = list(OPERATIONS)
    else:
        runs = [asyncio.run(run_once(args.n)) for _ in range(args.runs)]
    report = {BACKEND: summarise(runs, missing)}
    if args.json:
        print(json.dumps(report))
        return
    print(f"\n{BACKEND} (ops/s, min / median / max over {args.runs} runs of {args.n})")
    for op, figures in report[BACKEND].items():
        if figures["median"] is None:
            print(f"  {op:16} missing")
        else:
            print(f"  {op:16} {figures['min']:>10,.0f} {figures['median']:>10,.0f} {figures['max']:>10,.0f}")


if __name__ == "__main__":
    main()
