"""OTLP/HTTP trace decoding throughput: spans/s of `agl.core.otlp`, protobuf and JSON bodies.

    python benchmarks/otlp_decode_bench.py [--spans 100,512,1000] [--runs 7]

The batch is what a Python worker exports: spans recorded with the OpenTelemetry SDK carrying
the shared workload's 30 LLM-call attributes (two of them a few KB), one resource, one scope,
encoded by the official OTLP encoder; the JSON body is the OTLP/JSON form of the same request.
Each cell is the best of ``--runs`` timings of the whole batch (the machine may be shared, and
the best run is the one least disturbed), one thread, in process:
``decode`` is `decode_traces` alone; ``models+JSON`` adds building the store's `Span` models and
serialising them (`encode_span`), the ingest path before span documents; ``documents+JSON`` is
what the store server's ingest does now (`decode_documents`, each span's document given its ids
and serialised by ``orjson`` as it comes); ``gzip+decode`` adds `decompress` of a gzip body to
``decode``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import orjson
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from workload import llm_attributes

from agl.core.otlp import decode_documents, decode_traces, decompress, to_span
from agl.core.store.lifecycle import encode_span
from agl.core.testing.otlp import otlp_json_document

CAP = 64 * 2**20


def sdk_spans(count: int) -> tuple[ReadableSpan, ...]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-agent", "agl.rollout.id": "ro-bench"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("agl.bench", "1.0")
    with tracer.start_as_current_span("rollout"):
        for i in range(count - 1):
            with tracer.start_as_current_span("chat bench-model", attributes=llm_attributes(i)) as span:  # type: ignore[arg-type]
                span.set_attribute("agl.attempt.id", "at-bench")
    return exporter.get_finished_spans()


def otlp_json(message: Any) -> bytes:
    return json.dumps(otlp_json_document(message)).encode()


def spans_per_second(runs: int, count: int, work: Callable[[], object]) -> float:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        timings.append(time.perf_counter() - start)
    return count / min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", default="100,512,1000", help="batch sizes, comma-separated")
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    header = ("body", "spans", "KiB", "gzip KiB", "decode", "models+JSON", "documents+JSON", "gzip+decode")
    print(
        f"{header[0]:<9} {header[1]:>5} {header[2]:>6} {header[3]:>8} {header[4]:>9} {header[5]:>11} {header[6]:>14}"
        f" {header[7]:>11}"
    )
    for count in (int(n) for n in args.spans.split(",")):
        request = encode_spans(sdk_spans(count))
        for label, content_type, body in (
            ("protobuf", "application/x-protobuf", request.SerializeToString()),
            ("json", "application/json", otlp_json(request)),
        ):
            zipped = gzip.compress(body, compresslevel=6)
            assert len(decode_traces(body, content_type)) == count

            def convert(body: bytes = body, content_type: str = content_type) -> None:
                for i, span in enumerate(decode_traces(body, content_type), 1):
                    encode_span(to_span(span, rollout_id="ro-bench", attempt_id="at-bench", sequence_id=i))

            def documents(body: bytes = body, content_type: str = content_type) -> None:
                for i, document in enumerate(decode_documents(body, content_type), 1):
                    document.update(rollout_id="ro-bench", attempt_id="at-bench", sequence_id=i)
                    orjson.dumps(document)

            decode = spans_per_second(args.runs, count, lambda b=body, t=content_type: decode_traces(b, t))
            full = spans_per_second(args.runs, count, convert)
            direct = spans_per_second(args.runs, count, documents)
            unzip = spans_per_second(
                args.runs, count, lambda z=zipped, t=content_type: decode_traces(decompress(z, "gzip", CAP), t)
            )
            print(
                f"{label:<9} {count:>5} {len(body) / 1024:>6.0f} {len(zipped) / 1024:>8.0f}"
                f" {decode:>9,.0f} {full:>11,.0f} {direct:>14,.0f} {unzip:>11,.0f}"
            )


if __name__ == "__main__":
    main()
