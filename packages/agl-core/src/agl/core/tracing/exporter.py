"""``agl_store``: an OpenTelemetry span exporter that writes into an agl store (``$AGL_STORE``:
SQLite by default, a store server when it is an ``http://`` URL).

Each batch goes in with one `add_observed_spans` call per store (one transaction); a batch the store
refuses (a span it finds invalid, a body over a store server's limit) goes in again as two halves,
down to single spans (lone surrogates in its text then replaced, which no JSON writer takes), so a
bad span loses only itself. The exporter never raises into the program it observes: a failed write
is reported as FAILURE and logged, once per run of failures (an outage of the store warns once,
and again if the store fails after it recovered).

A process has one tracer provider, so one exporter, but it may run rollouts of several stores: a
notebook that fits twice on two stores, two runners on two stores at once. A runner routes the
spans of each rollout it runs to its own store (`route_rollout`); the rest go to the exporter's.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from agl.core.bridge import StoreBridge
from agl.core.errors import InvalidInput
from agl.core.tracing.identity import file_span
from agl.core.tracing.observed import process_rollout

if TYPE_CHECKING:
    from agl.core.store.base import LightningStore

logger = logging.getLogger(__name__)

_routes: dict[str, LightningStore] = {}
_routes_lock = threading.Lock()


@contextmanager
def route_rollout(rollout_id: str, store: LightningStore) -> Iterator[None]:
    """Inside, spans of ``rollout_id`` that this process exports go to ``store``, whatever store the
    process's exporter was made for. A runner wraps each rollout it runs, its last flush included."""
    with _routes_lock:
        _routes[rollout_id] = store
    try:
        yield
    finally:
        with _routes_lock:
            if _routes.get(rollout_id) is store:
                del _routes[rollout_id]


class StoreSpanExporter(SpanExporter):
    def __init__(self, store_url: str | None = None, *, store: LightningStore | None = None) -> None:
        """Writes to ``store`` when given (a store this process already has open, left open),
        else opens ``store_url`` (default ``$AGL_STORE``) on the first export."""
        self.bridge = StoreBridge(store) if store is not None else StoreBridge(opener=lambda: _open(store_url))
        self._store = store
        process = process_rollout()
        # Sent with every batch, in case this batch is the one that creates the process's rollout.
        self.new_rollout_metadata = {process.active.rollout_id: process.metadata}
        self._warned = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            converted, metadata = self._convert(spans)
        except Exception as error:  # the observed program must never see our failure
            self._failed(len(spans), error)
            return SpanExportResult.FAILURE
        result = SpanExportResult.SUCCESS
        for store, batch in self._by_store(converted):  # a store that fails costs the others nothing
            if not self._store_batch(store, batch, metadata):
                result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self._warned = False  # the store took a whole batch again: its next failure is news
        return result

    def _store_batch(self, store: LightningStore | None, batch: list[Any], metadata: dict[str, dict[str, Any]]) -> bool:
        """Whether every span of ``batch`` went in. A batch the store refuses (a span it finds invalid,
        a request body over the server's limit) goes in again as two halves, so a bad span loses only
        itself and spans that are fine alone are not lost for being sent together. Any other failure
        (a store that is gone, a wrong token) would meet every half: the batch is not sent again."""
        try:
            self._write(store, batch, metadata)
            return True
        except InvalidInput as error:
            if len(batch) > 1:
                middle = len(batch) // 2
                first = self._store_batch(store, batch[:middle], metadata)
                return self._store_batch(store, batch[middle:], metadata) and first
            if (cleaned := _without_lone_surrogates(batch[0])) is not batch[0]:
                return self._store_batch(store, [cleaned], metadata)
            return self._failed(1, error)
        except Exception as error:
            return self._failed(len(batch), error)

    def _write(self, store: LightningStore | None, spans: list[Any], metadata: dict[str, dict[str, Any]]) -> None:
        self.bridge.call(lambda to: to.add_observed_spans(spans, new_rollout_metadata=metadata), store=store)

    def _failed(self, count: int, error: Exception) -> Literal[False]:
        """Warns at the first loss since the last whole batch stored, not at every batch of an outage,
        nor only at the first outage: spans (rewards among them) lost later must not go unsaid."""
        if not self._warned:
            logger.warning("agl could not store %d spans: %s", count, error)
            self._warned = True
        return False

    def _by_store(self, spans: list[Any]) -> list[tuple[LightningStore | None, list[Any]]]:
        """The spans grouped by store: a routed rollout's, else this exporter's own (None)."""
        groups: dict[int, tuple[LightningStore | None, list[Any]]] = {}
        with _routes_lock:
            routes = {span.rollout_id: _routes.get(span.rollout_id) for span in spans}
        for span in spans:
            store = routes[span.rollout_id]
            if store is self._store:
                store = None
            groups.setdefault(id(store), (store, []))[1].append(span)
        return list(groups.values())

    def _convert(self, spans: Sequence[ReadableSpan]) -> tuple[list[Any], dict[str, dict[str, Any]]]:
        from agl.core.types import Span

        converted = []
        metadata = dict(self.new_rollout_metadata)
        for span in spans:
            context = span.get_span_context()
            resource = span.resource.attributes if span.resource is not None else {}
            start = span.start_time / 1e9 if span.start_time else None
            filing = file_span(span.attributes or {}, resource, format(context.trace_id, "032x"), start)
            if filing.new_rollout_metadata is not None:
                metadata[filing.rollout_id] = filing.new_rollout_metadata
            attempt_id = filing.attempt_id or f"at-{filing.rollout_id.removeprefix('ro-')}"
            converted.append(
                Span.from_otel(
                    span, rollout_id=filing.rollout_id, attempt_id=attempt_id, sequence_id=filing.sequence_id
                )
            )
        return converted, metadata

    def shutdown(self) -> None:
        self.bridge.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_lone_surrogates(span: Any) -> Any:
    """The span with every lone surrogate in its text made U+FFFD, or the span itself if it has none.

    Text decoded with ``surrogateescape`` (a file name, a subprocess's bytes) keeps them, and no JSON
    writer takes them, so the store refuses the span. Only spans a store refused come here."""
    document = span.model_dump()
    cleaned = _clean(document)
    return span if cleaned == document else type(span).model_validate(cleaned)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_clean(key): _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value


def _open(store_url: str | None) -> LightningStore:
    """Imported and opened at the first export, on the bridge's thread: the exporter is created
    while the program starts, and the store's modules cost more than the rest of agl together."""
    from agl.core.store import open_store

    return open_store(store_url)
