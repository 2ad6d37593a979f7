"""OTLP/HTTP ingest into the store server, end to end: spans/s written to SQLite.

    python benchmarks/otlp_ingest_bench.py [--runs 5] [--batches 20] [--batch-size 512] [--gzip] [--shape llm|agent]
                                           [--clients 1] [--workers 1]

Two span shapes: ``llm`` (every span an LLM call: 30 attributes, two of them a few KB of
messages, ~4 KB of JSON) and ``agent`` (what an agent's trace holds: each LLM-call span among
three small spans, an agent step, a tool call and an HTTP client call, of ~8 short attributes).

The server runs as its own process (``agl store serve``, SQLite, durable). Bodies are built the
way OpenTelemetry exporters build them (SDK spans with the workload's 30 LLM attributes, encoded
by the official OTLP encoder) and posted one after another over one keep-alive connection; the
clock stops when the last response arrives, i.e. when every span is committed. ``--clients N``
posts from N exporters at once (threads, each with its own connection, taking the batches in
turn), as the runners of a training job export; ``--workers N`` runs the server as N processes
(``agl store serve --workers N``).

The machine may be shared, so each run also reads the CPU time the server process used while it
ingested (user + system, from ``/proc``; on Linux only): that figure, in µs per span, says what
the server costs whatever else is running, and 10⁶ / it is the rate one idle core would give.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

sys.path.insert(0, str(Path(__file__).parent))

from workload import llm_attributes

SMALL_SPANS = ("agent step", "tool lookup", "POST")


def small_attributes(i: int) -> dict[str, object]:
    return {
        "agl.agent.name": "tutor",
        "gen_ai.tool.name": "lookup",
        "gen_ai.tool.call.arguments": f'{{"query": "capital {i}"}}',
        "gen_ai.tool.call.result": "Ottawa",
        "http.request.method": "POST",
        "server.address": "127.0.0.1",
        "server.port": 8000,
        "http.response.status_code": 200,
    }


def make_bodies(batches: int, batch_size: int, compress: bool, shape: str = "llm") -> list[bytes]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")
    bodies = []
    for batch in range(batches):
        exporter.clear()
        with tracer.start_as_current_span(f"agent {batch}"):
            for i in range(batch_size - 1):
                small = shape == "agent" and i % 4 != 0
                name = SMALL_SPANS[i % 4 - 1] if small else "chat bench-model"
                with tracer.start_as_current_span(name, attributes=small_attributes(i) if small else llm_attributes(i)):
                    pass
        body = encode_spans(exporter.get_finished_spans()).SerializeToString()
        bodies.append(gzip.compress(body, compresslevel=1) if compress else body)
    provider.shutdown()
    return bodies


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far, or None where /proc is not there."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def ingest_once(
    bodies: list[bytes], batch_size: int, compress: bool, clients: int, workers: int
) -> tuple[float, float | None]:
    """Spans/s, and the server's CPU µs per span (None without /proc)."""
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "agl.core.cli", "store", "serve", "--port", str(port), "--store",
             f"sqlite:///{folder}/otlp.db", "--max-body-mb", "64",
             *(["--workers", str(workers)] if workers > 1 else [])],
            stdout=subprocess.DEVNULL,  # its ready line: this script's stdout is its report
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            connections = [wait_for(port) for _ in range(clients)]
            headers = {"content-type": "application/x-protobuf"} | ({"content-encoding": "gzip"} if compress else {})
            pids = [server.pid, *child_pids(server.pid)]
            wait_until_idle(pids)  # one worker answering /health says nothing of the others' start-up
            cpu_before = total_cpu_seconds(pids)

            def post_share(client: int) -> None:
                connection = connections[client]
                for body in bodies[client::clients]:
                    connection.request("POST", "/v1/traces", body, headers)
                    response = connection.getresponse()
                    response.read()
                    assert response.status == 200, response.status

            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(post_share, range(clients)))
            elapsed = time.perf_counter() - started
            cpu_after = total_cpu_seconds(pids)
            spans = len(bodies) * batch_size
            cpu = None if cpu_before is None or cpu_after is None else (cpu_after - cpu_before) / spans * 1e6
            return spans / elapsed, cpu
        finally:
            server.terminate()
            server.wait(timeout=30)


def child_pids(pid: int) -> list[int]:
    """The server's worker processes (Linux; none elsewhere)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(child) for child in children.read().split()]
    except OSError:
        return []


def wait_until_idle(pids: list[int], timeout: float = 30.0) -> None:
    """Until the server's processes use under 10 ms of CPU in 0.2 s (their start-up is done)."""
    deadline = time.monotonic() + timeout
    before = total_cpu_seconds(pids)
    while before is not None and time.monotonic() < deadline:
        time.sleep(0.2)
        after = total_cpu_seconds(pids)
        if after is None or after - before < 0.01:
            return
        before = after


def total_cpu_seconds(pids: list[int]) -> float | None:
    seconds = [cpu_seconds(pid) for pid in pids]
    return None if None in seconds else sum(seconds)  # type: ignore[arg-type]


def wait_for(port: int) -> http.client.HTTPConnection:
    """Poll /health until the server process answers (start-up is not measured)."""
    deadline = time.monotonic() + 30
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port)
        try:
            connection.request("GET", "/health")
            connection.getresponse().read()
            return connection
        except OSError:
            connection.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--gzip", action="store_true", help="gzip the bodies, as exporters do by default")
    parser.add_argument("--shape", choices=["llm", "agent"], default="llm", help="span shape (see above)")
    parser.add_argument("--clients", type=int, default=1, help="exporters posting at once")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    args = parser.parse_args()
    bodies = make_bodies(args.batches, args.batch_size, args.gzip, args.shape)
    results = [ingest_once(bodies, args.batch_size, args.gzip, args.clients, args.workers) for _ in range(args.runs)]
    figures = [rate for rate, _ in results]
    cpu = [per_span for _, per_span in results if per_span is not None]
    body_kb = sum(map(len, bodies)) / len(bodies) / 1024
    print(
        f"OTLP ingest into SQLite, {args.shape} spans, {args.batches} batches of {args.batch_size}"
        f" from {args.clients} client(s) into {args.workers} server process(es)"
        f" ({body_kb:.0f} KiB each"
        f"{', gzip' if args.gzip else ''}), spans/s min / median / max over {args.runs} runs:"
        f" {min(figures):,.0f} / {statistics.median(figures):,.0f} / {max(figures):,.0f}"
        + (f"; server CPU per span, median: {statistics.median(cpu):.1f} µs" if cpu else "")
    )


if __name__ == "__main__":
    main()
