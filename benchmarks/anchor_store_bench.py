"""The anchor's store on our store workload: Agent Lightning 0.3.0, in process and over HTTP.

    .venvs/anchor/bin/python benchmarks/anchor_store_bench.py [--runs 5] [--n 2000] [--json]
        [--backends anchor-memory,anchor-http]

Runs in a virtualenv holding ``agentlightning==0.3.0`` (not agl); `compare_stores.py` makes that
venv and puts these figures next to `store_bench.py`'s. Backends:

- ``anchor-memory``: its ``InMemoryLightningStore``, called in process (its defaults).
- ``anchor-http``: its store server, started the way its ``agl store`` CLI starts it (a process of
  its own, ``asyncio`` launch mode, a thread-safe ``InMemoryLightningStore``), driven by its own
  ``LightningStoreClient`` (default retries and timeouts). This mirrors agl's ``http+memory``.

Operations, counts, order and timing mirror `store_bench.measure` step for step, through the
anchor's public store API and its own ``Span`` type, so the ratios compare like with like. Output
shape is the same: {backend: {op: {min, median, max}}}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

# Offline: stop litellm (imported by agentlightning) from fetching its model cost map. The served
# store inherits this environment.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
sys.path.insert(0, str(Path(__file__).parent))

from agentlightning.store import InMemoryLightningStore, LightningStore, LightningStoreClient
from agentlightning.types import EnqueueRolloutRequest, Span, TraceStatus
from workload import BATCH, QUERY_SPANS_PER_ROLLOUT, SPANS_PER_ROLLOUT, llm_attributes, task_input

# Backend -> the anchor's class whose methods the benchmark calls.
BACKENDS: dict[str, type[LightningStore]] = {
    "anchor-memory": InMemoryLightningStore,
    "anchor-http": LightningStoreClient,
}
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
SERVER_START_TIMEOUT_S = 120.0  # its server imports litellm & co. first: several seconds


def missing_operations(backend: str) -> list[str]:
    """Operations the backend lacks: reported as missing, never stood in for."""
    cls = BACKENDS[backend]
    return [op for op, method in OPERATIONS.items() if not callable(getattr(cls, method, None))]


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


def free_port() -> int:
    """A free local port, picked as `store_bench.serving` picks one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_listening(port: int, server: subprocess.Popen[bytes]) -> None:
    """Block until the server accepts connections: the client's own retries would log warnings."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"anchor store server exited with {server.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"anchor store server not listening on port {port} after {SERVER_START_TIMEOUT_S}s")


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[str]:
    """The anchor's store server (its CLI, in-memory backend) in a process of its own; yields its URL.

    Its output goes to a log file, not our stdout (which carries the JSON); error lines are echoed
    to stderr afterwards so a failing or retrying server does not go unnoticed.
    """
    port = free_port()
    command = [sys.executable, "-m", "agentlightning.cli.store", "--host", "127.0.0.1", "--port", str(port)]
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen([*command, "--log-level", "WARNING"], stdout=log, stderr=subprocess.STDOUT)
        try:
            await wait_listening(port, server)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.seek(0)
            errors = [line.rstrip() for line in log if "ERROR" in line]
            if errors:
                print(f"anchor store server logged {len(errors)} errors:", *errors, sep="\n", file=sys.stderr)


@contextlib.asynccontextmanager
async def make_store(backend: str) -> AsyncIterator[LightningStore]:
    """A fresh store of ``backend``; the HTTP client is closed before its server stops."""
    if backend == "anchor-http":
        async with serving() as url:
            client = LightningStoreClient(url)
            try:
                yield client
            finally:
                await client.close()
    else:
        yield InMemoryLightningStore()


async def timed(n: int, body: Callable[[], Awaitable[None]]) -> float:
    """Ops/s of ``n`` operations done by ``body``, exactly as `store_bench.timed`."""
    start = time.perf_counter()
    await body()
    return n / (time.perf_counter() - start)


async def run_once(backend: str, n: int) -> dict[str, float]:
    """One pass of every operation on a fresh store."""
    async with make_store(backend) as store:
        return await measure(store, n)


async def measure(store: LightningStore, n: int) -> dict[str, float]:
    """Every operation timed on its own, as `store_bench.measure` does."""
    results: dict[str, float] = {}
    await store.statistics()  # warm up, as store_bench does: a served store opens its session here

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
    if None in claimed:  # its HTTP client turns any dequeue failure into None: refuse to time on
        raise RuntimeError(f"{claimed.count(None)} of {n} dequeues returned nothing")
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


def bench(backend: str, runs: int, n: int) -> dict[str, dict[str, float | None]]:
    """``runs`` passes on fresh stores of ``backend``, summarised; all nulls if an operation is missing."""
    missing = missing_operations(backend)
    if missing:
        print(f"{backend} lacks: {', '.join(missing)}", file=sys.stderr)
        return summarise([], list(OPERATIONS))  # run_once needs every operation
    return summarise([asyncio.run(run_once(backend, n)) for _ in range(runs)], [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, of: {', '.join(BACKENDS)}")
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    args = parser.parse_args()
    backends = args.backends.split(",")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backends: {', '.join(unknown)}")
    report = {backend: bench(backend, args.runs, args.n) for backend in backends}
    if args.json:
        print(json.dumps(report))
        return
    for backend, ops in report.items():
        print(f"\n{backend} (ops/s, min / median / max over {args.runs} runs of {args.n})")
        for op, figures in ops.items():
            if figures["median"] is None:
                print(f"  {op:16} missing")
            else:
                print(f"  {op:16} {figures['min']:>10,.0f} {figures['median']:>10,.0f} {figures['max']:>10,.0f}")


if __name__ == "__main__":
    main()
