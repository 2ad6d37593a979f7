"""What agl's openai instrumentation costs per model call, as a ratio to the same call uninstrumented.

    python benchmarks/instrumentation_bench.py [--runs 5] [--calls 300]

The model is agl's scripted OpenAI-compatible server (token ids included) in a process of its
own on 127.0.0.1. One client makes the same chat call ``--calls`` times plain, then with
`OpenAIInstrumentor` on and tracing into a SQLite store (spans batched by the SDK in the
background, as in production), alternating, ``--runs`` times.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import openai

from agl.core.store import SqliteLightningStore
from agl.core.tracing import flush_spans, setup_tracing
from agl.instrument.openai import OpenAIInstrumentor

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
        return probe.getsockname()[1]


def calls_per_second(client: openai.OpenAI, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        client.chat.completions.create(model="agl-toy", messages=MESSAGES)  # type: ignore[arg-type]
    return calls / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SERVER), str(port)], stderr=subprocess.DEVNULL)
    folder = tempfile.TemporaryDirectory()
    store = SqliteLightningStore(Path(folder.name) / "bench.db")
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=30)
        client.models.list()  # waits (retrying) until the server listens
        provider = setup_tracing(store=store)
        instrumentor = OpenAIInstrumentor()
        plain, instrumented = [], []
        for _ in range(args.runs):
            plain.append(calls_per_second(client, args.calls))
            instrumentor.instrument(capture_token_ids=True)
            instrumented.append(calls_per_second(client, args.calls))
            flush_spans()
            instrumentor.uninstrument()
        provider.shutdown()
    finally:
        server.terminate()
        server.wait(timeout=30)
        folder.cleanup()
    for name, figures in (("uninstrumented", plain), ("instrumented", instrumented)):
        low, middle, high = min(figures), statistics.median(figures), max(figures)
        print(f"{name:15} calls/s min / median / max: {low:,.0f} / {middle:,.0f} / {high:,.0f}")
    ratio = statistics.median(plain) / statistics.median(instrumented)
    print(f"time per call, instrumented / uninstrumented (medians): {ratio:.3f}")


if __name__ == "__main__":
    main()
