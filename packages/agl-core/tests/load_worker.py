"""A worker process for test_server_load.py: asyncio workers draining a store server's queue.

    python load_worker.py URL NAME WORKERS SPANS [--linger]

Each of the WORKERS workers (named NAME-w0, NAME-w1, …) has its own `HttpLightningStore`. For
every rollout it claims it writes SPANS spans (two with add_span, the rest in one
add_many_spans) and ends the attempt as the input says. After every acknowledged write, that is
once the call has returned, it prints one JSON line:

    {"op": "claim", "worker": w, "rollout": r, "attempt": a, "sequence_id": 1, "input": {...}}
    {"op": "span", "worker": w, "rollout": r, "attempt": a, "span_id": s, "counter": c}
    {"op": "status", "worker": w, "rollout": r, "attempt": a, "status": "succeeded"}

and a line for each of two events that are not acknowledgements:

    {"op": "lost", "worker": w, "error": e}  a dequeue raised StoreUnavailable (its claim, if it made
                                    one, not found again within retry_seconds)
    {"op": "rejected", "worker": w, "rollout": r, "attempt": a, "status": s, "current": c}
                                    the attempt had ended already (the server's watchdog)

Once every worker has reached the server, the process prints ``{"op": "ready"}`` and waits for
a line on stdin, so that all processes start together. Without ``--linger`` a worker stops at
its first empty dequeue; with it, it stops only when every rollout is finished, since the
server may requeue a rollout later.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from agl.core.errors import InvalidTransition, StoreUnavailable
from agl.core.store.http import HttpLightningStore
from agl.core.testing.conformance import make_span

RETRY_SECONDS = 60.0
"""Generous: idempotent calls ride out a server restart."""
IDLE_SECONDS = 1.0
"""With --linger, how long an idle worker waits (a long poll) before it asks the queue again."""
UNFINISHED = ["queuing", "requeuing", "preparing", "running"]


def report(op: str, **fields: Any) -> None:
    print(json.dumps({"op": op, **fields}), flush=True)


async def work(store: HttpLightningStore, worker: str, spans_per_attempt: int, linger: bool) -> None:
    counter = 0
    while True:
        try:
            claimed = await store.dequeue_rollout(worker_id=worker)
        except StoreUnavailable as error:  # recovery gave up: it may have claimed a rollout
            report("lost", worker=worker, error=str(error))
            continue
        if claimed is None:
            if not linger or await all_finished(store):
                return
            continue
        rollout, attempt = claimed.rollout_id, claimed.attempt.attempt_id
        ids = {"worker": worker, "rollout": rollout, "attempt": attempt}
        report("claim", **ids, sequence_id=claimed.attempt.sequence_id, input=claimed.input)
        spans = []
        for sequence_id in range(1, spans_per_attempt + 1):
            counter += 1
            spans.append(make_span(rollout, attempt, sequence_id, name="load", **ids, counter=counter))
        for span in spans[:2]:
            await store.add_span(span)
            report("span", **ids, span_id=span.span_id, counter=span.attributes["counter"])
        await store.add_many_spans(spans[2:])
        for span in spans[2:]:
            report("span", **ids, span_id=span.span_id, counter=span.attributes["counter"])
        status = "failed" if claimed.input["fail"] else "succeeded"
        try:
            await store.update_attempt(rollout, attempt, status=status)
        except InvalidTransition as error:
            report("rejected", **ids, status=status, current=error.current)
        else:
            report("status", **ids, status=status)


async def all_finished(store: HttpLightningStore) -> bool:
    """Wait up to IDLE_SECONDS for the unfinished rollouts; True when none is left."""
    unfinished = [r.rollout_id for r in await store.query_rollouts(status_in=UNFINISHED)]
    return not unfinished or len(await store.wait_for_rollouts(unfinished, timeout=IDLE_SECONDS)) == len(unfinished)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("name")
    parser.add_argument("workers", type=int)
    parser.add_argument("spans", type=int)
    parser.add_argument("--linger", action="store_true")
    args = parser.parse_args()
    stores = [HttpLightningStore(args.url, retry_seconds=RETRY_SECONDS) for _ in range(args.workers)]
    await asyncio.gather(*(store.statistics() for store in stores))  # the server answers each worker
    report("ready", worker=args.name)
    sys.stdin.readline()  # the go signal
    try:
        await asyncio.gather(
            *(work(store, f"{args.name}-w{i}", args.spans, args.linger) for i, store in enumerate(stores))
        )
    finally:
        for store in stores:
            await store.close()


if __name__ == "__main__":
    asyncio.run(main())
