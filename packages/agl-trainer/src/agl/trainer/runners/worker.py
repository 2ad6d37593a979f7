"""``python -m agl.trainer.runners.worker``: one runner in a process of its own (mode ``processes``).

It opens the store by URL, imports the agent by ``module:object`` and runs until told to stop.
The trainer talks to it over its stdin: a ``wake`` line asks it to dequeue now, and end of file
(the trainer closed the pipe, or died) stops it cleanly, rollouts in flight ending as failed
attempts, so a worker never outlives its trainer. A pipe rather than signals: a line written
before the worker is ready waits in the pipe, where a signal would kill it. SIGTERM stops it
cleanly too; SIGINT is ignored, since a Ctrl-C in the terminal reaches the whole process group
and the trainer decides how its workers stop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading

from agl.core.runner import Runner
from agl.core.store import open_store
from agl.trainer.runners.specs import load_agent

WAKE = b"wake\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agl.trainer.runners.worker", description=__doc__)
    parser.add_argument("--store", required=True, help="store URL (sqlite:// or http://)")
    parser.add_argument("--agent", required=True, help="the agent as module:object")
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--max-concurrency", type=int, default=1)
    parser.add_argument("--heartbeat-seconds", type=float, default=5.0)
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format=f"[{args.worker_id}] %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> None:
    agent = load_agent(args.agent)
    store = open_store(args.store)
    runner = Runner(
        agent,
        store,
        worker_id=args.worker_id,
        max_concurrency=args.max_concurrency,
        heartbeat_seconds=args.heartbeat_seconds,
        poll_seconds=args.poll_seconds,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    threading.Thread(target=_listen, args=(loop, runner, stop), name="agl-trainer-pipe", daemon=True).start()
    try:
        await runner.run(stop=stop)
    finally:
        await store.close()


def _listen(loop: asyncio.AbstractEventLoop, runner: Runner, stop: asyncio.Event) -> None:
    try:
        for line in sys.stdin.buffer:
            if line.strip() == WAKE.strip():
                loop.call_soon_threadsafe(runner.wake)
        loop.call_soon_threadsafe(stop.set)  # end of file: the trainer closed the pipe or died
    except RuntimeError:  # the loop is closed: the worker is already on its way out
        pass


if __name__ == "__main__":
    main()
