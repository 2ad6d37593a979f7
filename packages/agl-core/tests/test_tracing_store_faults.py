"""The exporter against stores that refuse what it is sent (a real store server, a SQLite file):
spans that a store takes one at a time must not be lost for having ended together, and every
run of losses is warned about."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import Tracer, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agl.core.server import ServerSettings, create_app
from agl.core.store import SqliteLightningStore
from agl.core.testing.server import ServingThread
from agl.core.tracing import rollout_context, semconv
from agl.core.tracing.context import ActiveRollout
from agl.core.tracing.exporter import StoreSpanExporter
from agl.core.tracing.processor import RolloutSpanProcessor

BODY_LIMIT = 1024 * 1024


def recording_provider() -> tuple[TracerProvider, InMemorySpanExporter, Tracer]:
    """A provider with agl's processor whose ended spans are kept in memory, for an exporter to take."""
    finished = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(RolloutSpanProcessor(ActiveRollout("ro-process", "at-process")))
    provider.add_span_processor(SimpleSpanProcessor(finished))
    return provider, finished, provider.get_tracer("test")


def test_a_batch_over_the_server_s_body_limit_goes_in_as_smaller_requests(tmp_path: Path) -> None:
    """A long conversation's LLM spans ending in one batch can add up past the server's body limit
    (32 MiB by default) while each is far below it: the batch, reward included, must not be lost.
    A span over the limit on its own loses only itself."""
    backing = SqliteLightningStore(tmp_path / "served.db", watchdog_interval=None)
    started = asyncio.run(backing.start_rollout({"q": 1}))
    provider, finished, tracer = recording_provider()
    with rollout_context(started.rollout_id, started.attempt.attempt_id):
        for turn in range(6):  # 6 x 300 KiB: over the limit together, well under it one by one
            tracer.start_span(f"chat {turn}", attributes={"gen_ai.input.messages": "x" * 300 * 1024}).end()
        tracer.start_span("huge", attributes={"blob": "y" * 2 * BODY_LIMIT}).end()  # over it alone
        tracer.start_span("agl.reward", attributes={semconv.SPAN_KIND: "reward", semconv.REWARD: 1.0}).end()

    with ServingThread(create_app(ServerSettings(max_body_bytes=BODY_LIMIT), backing)) as server:
        exporter = StoreSpanExporter(server.url)
        assert exporter.export(finished.get_finished_spans()).name == "FAILURE"  # the huge span is lost
        exporter.shutdown()

    spans = asyncio.run(backing.query_spans(started.rollout_id))
    assert [s.name for s in spans] == [f"chat {turn}" for turn in range(6)] + ["agl.reward"]
    assert spans[-1].attributes[semconv.REWARD] == 1.0
    provider.shutdown()
    asyncio.run(backing.close())


def test_spans_lost_after_the_store_recovered_are_warned_about_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A long run whose store fails, recovers and fails again must say so both times: the warning
    used to come once per process, so a later outage lost spans and rewards without a word."""
    store = SqliteLightningStore(tmp_path / "spans.db", watchdog_interval=None, max_span_bytes=4096)
    started = asyncio.run(store.start_rollout({"q": 1}))
    provider, finished, tracer = recording_provider()
    exporter = StoreSpanExporter(store=store)

    def export(*attributes: dict[str, str]) -> str:
        finished.clear()
        with rollout_context(started.rollout_id, started.attempt.attempt_id):
            for each in attributes:
                tracer.start_span("step", attributes=each).end()
        return exporter.export(finished.get_finished_spans()).name

    too_big = {"blob": "x" * 8192}  # over the store's span limit: the store refuses it
    with caplog.at_level(logging.WARNING, logger="agl.core.tracing.exporter"):
        assert [export(too_big), export(too_big), export({}), export(too_big)] == [
            "FAILURE",
            "FAILURE",
            "SUCCESS",
            "FAILURE",
        ]
    assert [r.getMessage().startswith("agl could not store 1 spans") for r in caplog.records] == [True, True]
    exporter.shutdown()
    provider.shutdown()
    asyncio.run(store.close())
