"""Zero-code set-up. ``opentelemetry-instrument python my_agent.py`` loads the ``agl`` distro
(defaults, each only if the user has not set it) and the ``agl`` configurator (the SDK's own
set-up plus agl's span processor); the SDK then exports through ``agl_store``. Programs that set
up tracing themselves (the runner) call `setup_tracing`.

A program not launched for a rollout gets one *observed* rollout of its own; it is marked
succeeded when the program exits, or failed after an uncaught exception or a ``sys.exit`` with a
failing status (see `ProcessRollout.exited_failing` for what can be seen of that).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from collections.abc import Collection
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.distro import BaseDistro
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from agl.core.tracing.llm import TRACER_NAME
from agl.core.tracing.observed import exit_status_fails, process_rollout
from agl.core.tracing.processor import RolloutSpanProcessor, has_rollout_processor
from agl.core.tracing.semconv import PROCESS_EXIT_SPAN, PROCESS_OUTCOME

logger = logging.getLogger(__name__)

DEFAULTS = {
    "OTEL_TRACES_EXPORTER": "agl_store",
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
    # Conversations are training data: never let the SDK drop attributes or events.
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "100000",
    "OTEL_SPAN_EVENT_COUNT_LIMIT": "100000",
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT": "10000",
    # A killed process loses at most half a second of spans.
    "OTEL_BSP_SCHEDULE_DELAY": "500",
}
EXIT_WAIT_SECONDS = 5.0
"""How long an exiting program waits for agl's store (a healthy one answers in milliseconds)."""


class AglDistro(BaseDistro):
    def _configure(self, **kwargs: Any) -> None:
        for key, value in DEFAULTS.items():
            os.environ.setdefault(key, value)


class AglConfigurator:
    """Sets up tracing only, without importing the SDK's general configurator (~0.13 s of imports
    for metrics and logs that agl turns off). If the user asks for metrics, logs or a config file,
    the SDK's own configurator does everything, with agl's processor added."""

    def configure(self, **kwargs: Any) -> None:
        processor = RolloutSpanProcessor(process_rollout().active)
        if _wants_more_than_traces():
            from opentelemetry.sdk._configuration import _OTelSDKConfigurator

            _OTelSDKConfigurator()._configure(span_processors=[processor], **kwargs)
        else:
            provider = TracerProvider(resource=Resource.create())  # sampler, limits, resource from env
            provider.add_span_processor(processor)
            for exporter in _trace_exporters():
                provider.add_span_processor(BatchSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
        _finish_at_exit(trace.get_tracer_provider(), processor)


def _otlp_flavour(available: Collection[str]) -> str:
    """``otlp`` means the gRPC or the HTTP exporter, by protocol, as in the SDK. With no protocol set
    the SDK takes gRPC; agl-core ships only the HTTP exporter (agl's store server speaks OTLP/HTTP),
    so where the gRPC one is not installed, HTTP it is, rather than no exporter and no span."""
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol is None or not protocol.strip():
        return "otlp_proto_grpc" if "otlp_proto_grpc" in available else "otlp_proto_http"
    return "otlp_proto_http" if protocol.strip().startswith("http") else "otlp_proto_grpc"


def _wants_more_than_traces() -> bool:
    wanted = [os.environ.get(key, "none").strip().lower() for key in ("OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER")]
    return any(value not in ("", "none") for value in wanted) or bool(os.environ.get("OTEL_CONFIG_FILE"))


def _trace_exporters() -> list[Any]:
    """The exporters named in OTEL_TRACES_EXPORTER, found by entry point as the SDK finds them."""
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "agl_store").split(",") if n.strip()]
    available = {ep.name: ep for ep in entry_points(group="opentelemetry_traces_exporter")}
    exporters = []
    for name in (_otlp_flavour(available) if n == "otlp" else n for n in names):
        if name == "none":
            continue
        if name not in available:
            logger.warning("no trace exporter named %r is installed; spans will not go there", name)
            continue
        exporters.append(available[name].load()())
    return exporters


def setup_tracing(store_url: str | None = None, *, store: Any = None) -> TracerProvider:
    """Trace into ``store`` (an open store, e.g. the runner's) or the store at ``store_url``
    (default ``$AGL_STORE``), for programs not started by ``opentelemetry-instrument``. An SDK
    provider already in place only gets agl's processor added."""
    from agl.core.tracing.exporter import StoreSpanExporter

    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        if not has_rollout_processor(provider):
            provider.add_span_processor(RolloutSpanProcessor(process_rollout().active))
        return provider
    for key, value in DEFAULTS.items():
        if key.startswith("OTEL_SPAN") or key.startswith("OTEL_EVENT") or key == "OTEL_BSP_SCHEDULE_DELAY":
            os.environ.setdefault(key, value)
    provider = TracerProvider()
    processor = RolloutSpanProcessor(process_rollout().active)
    provider.add_span_processor(processor)
    exporter = StoreSpanExporter(store_url, store=store)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _finish_at_exit(provider, processor)
    return provider


def flush_spans(timeout_millis: int = 30000) -> bool:
    """Export every finished span now (the runner does this at the end of each rollout)."""
    provider = trace.get_tracer_provider()
    return bool(getattr(provider, "force_flush", lambda _: True)(timeout_millis))


def _finish_at_exit(provider: Any, processor: RolloutSpanProcessor) -> None:
    """At exit, a program that ran as its own observed rollout sends one last span with its outcome;
    the store ends the rollout when it arrives (over agl's exporter or plain OTLP alike).
    Registered after the provider's own exit hook, so it runs first, while exporters still work.
    From then on agl waits at most `EXIT_WAIT_SECONDS` for its store, so a store that is gone
    costs the exiting program a warning, not a hang. A program that shuts its provider down
    itself (as OpenTelemetry's examples end) sends the span then, before its exporters stop: after,
    nothing would carry it and the rollout would stay running. A forked child shares its parent's
    observed rollout: only the process that set tracing up ends it."""
    owner = os.getpid()
    sent = threading.Event()

    def send_exit_span(failed: bool) -> None:
        state = process_rollout()
        if sent.is_set() or not state.active.used or os.getpid() != owner:
            return
        sent.set()
        outcome = "failed" if failed or state.crashed else "succeeded"
        provider.get_tracer(TRACER_NAME).start_span(PROCESS_EXIT_SPAN, attributes={PROCESS_OUTCOME: outcome}).end()

    def finish() -> None:
        _stop_waiting_for_stores()
        send_exit_span(failed=process_rollout().exited_failing())
        getattr(provider, "force_flush", lambda: None)()

    processor.before_shutdown = lambda: send_exit_span(failed=_failure_in_flight())
    atexit.register(finish)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=lambda: _flush_at_child_exit(provider))


def _failure_in_flight() -> bool:
    """Whether the provider is being shut down while an exception propagates (``finally:``); a
    `SystemExit` is the program's own way out, a failure only with a failing status."""
    error = sys.exc_info()[1]
    if isinstance(error, SystemExit):
        return exit_status_fails(error.code)
    return error is not None


def _stop_waiting_for_stores() -> None:
    bridge = sys.modules.get("agl.core.bridge")  # not loaded: no store to wait for
    if bridge is not None:
        bridge.stop_waiting_after(EXIT_WAIT_SECONDS)


def _flush_at_child_exit(provider: Any) -> None:
    """A child of `multiprocessing` (fork) ends with ``os._exit``, skipping atexit, so its spans
    would be lost: its exit runs a flush instead. Registered as an after-forker, since the child
    clears its finalizers first; a child of a plain `os.fork` ends through atexit as usual."""
    util = sys.modules.get("multiprocessing.util")
    if util is None:
        return

    def flush() -> None:
        _stop_waiting_for_stores()
        getattr(provider, "force_flush", lambda: None)()

    util.register_after_fork(provider, lambda _: util.Finalize(None, flush, exitpriority=0))
