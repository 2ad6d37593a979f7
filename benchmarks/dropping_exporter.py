"""The span exporter of the overhead benchmarks: it counts the spans it is given and keeps none.

An in-memory exporter would keep every span of a block alive until the block ends: the heap grows
and the garbage collector's passes over those spans land inside the measured runs of the
instrumented variants only, charging them for the benchmark's own bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class DroppingExporter(SpanExporter):
    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS
