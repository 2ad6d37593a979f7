"""Store throughput: ops/s per operation and backend, spans shaped like real LLM spans.

    python benchmarks/store_bench.py [--runs 5] [--n 2000] [--backends memory,sqlite,sqlite-full] [--json]
    python benchmarks/store_bench.py --backends http+sqlite,http+memory

Each operation is timed on its own over ``--n`` calls (one sequential caller; ``http+X`` backends
go through the store server, run as a separate process serving backend X),
``--runs`` times on a fresh store; the table shows min / median / max ops/s. The workload
(span shape, operation mix) is defined once in `workload.py` and shared with the anchor's
benchmark, so ratios compare like with like.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from workload import BATCH, QUERY_SPANS_PER_ROLLOUT, SPANS_PER_ROLLOUT, llm_attributes, task_input

from agl.core.store import InMemoryLightningStore, LightningStore, SqliteLightningStore
from agl.core.store.http import HttpLightningStore
from agl.core.types import RolloutRequest, Span

OPERATIONS = ("enqueue", "enqueue_many", "dequeue", "update_attempt", "add_span", "add_many_spans", "query_spans")


@contextlib.contextmanager
def make_store(backend: str, folder: Path) -> Iterator[LightningStore]:
    """A fresh store; ``http+X`` serves backend X from an ``agl store serve`` process of its own."""
    if backend.startswith("http+"):
        with serving(backend.removeprefix("http+"), folder) as url:
            yield HttpLightningStore(url)
    elif backend == "memory":
        yield InMemoryLightningStore()
    else:
        synchronous = "full" if backend == "sqlite-full" else "normal"
        yield SqliteLightningStore(folder / f"{backend}.db", synchronous=synchronous)


@contextlib.contextmanager
def serving(backend: str, folder: Path) -> Iterator[str]:
    store_url = "memory://" if backend == "memory" else f"sqlite:///{folder}/served.db"
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "agl.core.cli", "store", "serve", "--store", store_url, "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # its ready line too
    try:
        yield f"http://127.0.0.1:{port}"  # the client retries until the server listens
    finally:
        server.terminate()
        server.wait(timeout=30)


def spans_for(rollout_id: str, attempt_id: str, first_sequence_id: int, count: int) -> list[Span]:
    return [
        Span(
            rollout_id=rollout_id,
            attempt_id=attempt_id,
            sequence_id=first_sequence_id + i,
            trace_id=f"{1:032x}",
            span_id=f"{first_sequence_id + i:016x}",
            parent_id=None,
            name="chat bench-model",
            attributes=llm_attributes(first_sequence_id + i),
            start_time=1.0,
            end_time=2.0,
        )
        for i in range(count)
    ]


async def timed(n: int, body: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await body()
    return n / (time.perf_counter() - start)


async def run_once(backend: str, n: int, folder: Path) -> dict[str, float]:
    with make_store(backend, folder) as store:
        return await measure(store, n)


async def measure(store: LightningStore, n: int) -> dict[str, float]:
    results: dict[str, float] = {}
    await store.statistics()  # warm up: a served store may still be starting

    async def enqueue() -> None:
        for i in range(n):
            await store.enqueue_rollout(task_input(i))

    async def enqueue_many() -> None:
        for start in range(0, n, BATCH):
            await store.enqueue_many_rollouts(
                [RolloutRequest(input=task_input(i)) for i in range(start, start + BATCH)]
            )

    claimed = []

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

    # Disjoint slices of the claimed rollouts for each span operation. Spans are built before
    # timing: the benchmark measures the store, not the construction of pydantic models.
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
    await store.close()
    return results


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        op: {
            "min": min(r[op] for r in runs),
            "median": statistics.median(r[op] for r in runs),
            "max": max(r[op] for r in runs),
        }
        for op in OPERATIONS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--backends", default="memory,sqlite,sqlite-full")
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    args = parser.parse_args()
    report: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            runs = []
            for run in range(args.runs):
                folder = Path(tmp) / f"{backend}-{run}"
                folder.mkdir()
                runs.append(asyncio.run(run_once(backend, args.n, folder)))
            report[backend] = summarise(runs)
    if args.json:
        print(json.dumps(report))
        return
    for backend, ops in report.items():
        print(f"\n{backend} (ops/s, min / median / max over {args.runs} runs of {args.n})")
        for op, figures in ops.items():
            print(f"  {op:16} {figures['min']:>10,.0f} {figures['median']:>10,.0f} {figures['max']:>10,.0f}")


if __name__ == "__main__":
    main()
