"""A batch of rollouts through the durable SQLite store, worked by several processes.

    python examples/batch_rollouts.py [--tasks 24] [--workers 3]

The algorithm side publishes a prompt and queues arithmetic tasks with a retry policy; worker
processes claim tasks, "run the agent" (a rule-based solver: no model yet), record spans and a
reward, and report. Some first attempts fail or hang on purpose: the store retries the
failures, and its watchdog times out the hung attempts and queues them again, so every
rollout still ends and the table shows how.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import time

from agl.core import InvalidTransition, PromptTemplate, RolloutConfig, RolloutRequest, Span, open_store
from agl.core.store import default_store_url

POLICY = RolloutConfig(timeout_seconds=1.5, max_attempts=3, retry_condition=("failed", "timeout"))


def solve(task: dict[str, int | str]) -> int:
    a, b = int(task["a"]), int(task["b"])
    return a + b if task["op"] == "+" else a * b


async def work(worker_id: str, store_url: str) -> None:
    """One worker process: claim, run, record spans, report; until the queue is empty."""
    store = open_store(store_url)
    while (claimed := await store.dequeue_rollout(worker_id=worker_id)) is not None:
        rollout_id, attempt = claimed.rollout_id, claimed.attempt
        resources = await store.get_resources_by_id(claimed.resources_id or "")
        prompt = resources.resources["prompt"] if resources else PromptTemplate(template="{a} {op} {b}")
        task = claimed.input
        started = time.time()
        trouble = task["trouble"] if attempt.sequence_id == 1 else None
        spans = [("agent", {"agl.agent.name": "calculator", "prompt": prompt.format(**task)})]
        if trouble == "hang":
            time.sleep(POLICY.timeout_seconds + 1)  # the watchdog times this attempt out meanwhile
        if trouble == "crash":
            spans.append(("exception", {"exception.type": "RuntimeError", "exception.message": "flaky tool"}))
        else:
            answer = solve(task)
            spans += [
                ("tool calculate", {"result": answer}),
                ("reward", {"agl.reward": float(answer == task["expected"])}),
            ]
        await store.add_many_spans(
            [
                Span(
                    rollout_id=rollout_id,
                    attempt_id=attempt.attempt_id,
                    sequence_id=seq,
                    trace_id=attempt.attempt_id.removeprefix("at-").rjust(32, "0"),
                    span_id=f"{seq:016x}",
                    parent_id=None if seq == 1 else f"{1:016x}",
                    name=name,
                    attributes=attributes,
                    start_time=started,
                    end_time=time.time(),
                )
                for seq, (name, attributes) in enumerate(spans, start=1)
            ]
        )
        try:
            await store.update_attempt(
                rollout_id, attempt.attempt_id, status="failed" if trouble == "crash" else "succeeded"
            )
        except InvalidTransition:
            print(f"  {worker_id}: late result for {rollout_id} refused: its attempt already timed out", flush=True)
    await store.close()


def worker_main(worker_id: str, store_url: str) -> None:
    asyncio.run(work(worker_id, store_url))


async def main(tasks: int, workers: int) -> None:
    store_url = default_store_url()
    store = open_store(store_url)
    rng = random.Random(7)
    resources = await store.add_resources({"prompt": PromptTemplate(template="Compute {a} {op} {b}.")})
    batch = f"demo-{os.getpid()}-{int(time.time())}"
    requests = []
    for i in range(tasks):
        a, b, op = rng.randint(2, 99), rng.randint(2, 99), rng.choice("+*")
        trouble = "crash" if i % 7 == 3 else "hang" if i % 11 == 5 else None
        task = {"a": a, "b": b, "op": op, "expected": a + b if op == "+" else a * b, "trouble": trouble}
        requests.append(
            RolloutRequest(input=task, resources_id=resources.resources_id, config=POLICY, metadata={"batch": batch})
        )
    rollouts = await store.enqueue_many_rollouts(requests)
    print(f"queued {len(rollouts)} rollouts in {store_url}; starting {workers} worker processes", flush=True)

    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=worker_main, args=(f"worker-{n}", store_url)) for n in range(workers)]
    for process in processes:
        process.start()
    finished = await store.wait_for_rollouts([r.rollout_id for r in rollouts], timeout=120)
    for process in processes:
        process.join()
    elapsed = time.perf_counter() - started

    print(f"\n{'rollout':<20} {'task':<9} {'status':<10} {'attempts':<22} {'spans':>5} {'reward':>6}")
    total_spans = 0
    for rollout in finished:
        attempts = await store.query_attempts(rollout.rollout_id)
        spans = await store.query_spans(rollout.rollout_id, "latest")
        total_spans += len(await store.query_spans(rollout.rollout_id))
        reward = next((s.attributes["agl.reward"] for s in spans if s.name == "reward"), None)
        task = f"{rollout.input['a']}{rollout.input['op']}{rollout.input['b']}"
        history = " > ".join(a.status for a in attempts)
        print(f"{rollout.rollout_id:<20} {task:<9} {rollout.status:<10} {history:<22} {len(spans):>5} {reward!s:>6}")
    stats = await store.statistics()
    succeeded = sum(r.status == "succeeded" for r in finished)
    print(
        f"\n{succeeded}/{len(rollouts)} rollouts succeeded, {len(finished) - succeeded} failed, in {elapsed:.1f} s;"
        f" {total_spans} spans written by {workers} processes."
        f"\nThe store now holds {stats.rollouts} rollouts and {stats.spans} spans ({store_url})."
    )
    await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=24)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.workers))
