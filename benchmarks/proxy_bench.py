"""What the LLM proxy adds to each model call: latency through the proxy against calling the engine directly.

    timeout 300 python benchmarks/proxy_bench.py [--runs 5] [--calls 200] [--stream]

The engine is agl's scripted OpenAI-compatible server (token ids included) in a process of its own
on 127.0.0.1, so its cost is the same either way. The proxy is `LlmProxy` as a trainer runs it: a
uvicorn thread in this process, recording every call's span into a SQLite store file before it
answers. One openai client makes the same chat call ``--calls`` times directly, then the same
number of times through the proxy, alternating, ``--runs`` times; sequential calls, so the figure
is latency, not throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import openai

from agl.core import open_store
from agl.trainer.proxy import LlmProxy

SERVER = """
    import sys, uvicorn
    from agl.core.testing.chat_server import chat_server_app
    app = chat_server_app(lambda messages: "Paris is the capital of France.")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""
MESSAGES = [
    {"role": "system", "content": "You are a careful geography tutor. " * 10},
    {"role": "user", "content": "What is the capital of France?"},
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def ms_per_call(client: openai.OpenAI, calls: int, stream: bool) -> tuple[float, float]:
    """Wall-clock and CPU milliseconds per call; CPU time counts every thread of this process (the
    client, and the proxy's thread when calling through it), not the engine's process."""
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(calls):
        if stream:
            for _chunk in client.chat.completions.create(model="agl-toy", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
                pass
        else:
            client.chat.completions.create(model="agl-toy", messages=MESSAGES)  # type: ignore[arg-type]
    return (time.perf_counter() - started) * 1000 / calls, (time.process_time() - cpu_started) * 1000 / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--stream", action="store_true", help="streamed calls (the proxy relays and records chunks)")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SERVER), str(port)], stderr=subprocess.DEVNULL)
    folder = tempfile.TemporaryDirectory()
    store = open_store(f"sqlite:///{Path(folder.name) / 'bench.db'}", watchdog_interval=None)
    engine = f"http://127.0.0.1:{port}/v1"
    try:
        direct_client = openai.OpenAI(base_url=engine, api_key="unused", max_retries=30)
        direct_client.models.list()  # waits (retrying) until the engine listens
        attempt = asyncio.run(store.start_rollout({"task": "bench"}))
        direct: list[float] = []
        proxied: list[float] = []
        direct_cpu: list[float] = []
        proxied_cpu: list[float] = []
        with LlmProxy(store, [engine], model="agl-toy") as proxy:
            base_url = proxy.resource.base_url(attempt.rollout_id, attempt.attempt.attempt_id)
            proxy_client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
            ms_per_call(direct_client, 10, args.stream)  # warm both paths' connections
            ms_per_call(proxy_client, 10, args.stream)
            for _ in range(args.runs):
                for walls, cpus, client in ((direct, direct_cpu, direct_client), (proxied, proxied_cpu, proxy_client)):
                    wall, cpu = ms_per_call(client, args.calls, args.stream)
                    walls.append(wall)
                    cpus.append(cpu)
        spans = asyncio.run(store.query_spans(attempt.rollout_id, limit=1)).total
    finally:
        asyncio.run(store.close())
        server.terminate()
        server.wait(timeout=30)
        folder.cleanup()
    kind = "streamed" if args.stream else "whole"
    print(f"{args.runs} runs x {args.calls} sequential {kind} chat calls; {spans} spans recorded by the proxy")
    for name, figures in (
        ("direct, wall", direct),
        ("proxied, wall", proxied),
        ("direct, CPU", direct_cpu),
        ("proxied, CPU", proxied_cpu),
    ):
        low, middle, high = min(figures), statistics.median(figures), max(figures)
        print(f"{name:14} ms/call min / median / max: {low:.3f} / {middle:.3f} / {high:.3f}")
    for what, plain, through in (("wall", direct, proxied), ("CPU", direct_cpu, proxied_cpu)):
        added = statistics.median(through) - statistics.median(plain)
        ratio = statistics.median(through) / statistics.median(plain)
        print(f"added by the proxy, {what} (medians): {added:.3f} ms per call; proxied / direct: {ratio:.2f}x")


if __name__ == "__main__":
    main()
