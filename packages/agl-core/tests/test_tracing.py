"""The tracing runtime: identity stamping, the store exporter, the LLM-call span, and zero-code
capture through real ``opentelemetry-instrument`` subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agl.core.store import InMemoryLightningStore, SqliteLightningStore
from agl.core.testing import ranks
from agl.core.tracing import llm_call, rollout_context, run_in_context, semconv
from agl.core.tracing.chat import request_parameters
from agl.core.tracing.configure import DEFAULTS, AglDistro
from agl.core.tracing.context import ActiveRollout
from agl.core.tracing.exporter import StoreSpanExporter, route_rollout
from agl.core.tracing.llm import start_llm_call
from agl.core.tracing.processor import RolloutSpanProcessor

BIN = Path(sys.executable).parent


@pytest.fixture
def traced() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(RolloutSpanProcessor(ActiveRollout("ro-process", "at-process")))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def test_distro_sets_defaults_but_the_user_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    AglDistro().configure()
    assert os.environ["OTEL_TRACES_EXPORTER"] == "console"
    assert os.environ["OTEL_METRICS_EXPORTER"] == "none"
    assert int(os.environ["OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT"]) >= 10_000


def test_what_loads_at_interpreter_start_up_imports_no_pydantic() -> None:
    # The distro, the configurator, the processor and the exporter load in every program run under
    # opentelemetry-instrument; the store's models are imported only when the first batch is stored.
    code = (
        "import sys, agl.core.tracing.configure, agl.core.tracing.processor, agl.core.tracing.exporter;"
        " print(sorted(name for name in sys.modules if name.split('.')[0] == 'pydantic'))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_spans_are_stamped_with_their_rollout_and_numbered_at_start(
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = traced
    tracer = provider.get_tracer("test")
    with rollout_context("ro-1", "at-1"), tracer.start_as_current_span("agent"):
        with tracer.start_as_current_span("step 1"):
            pass
        worker = threading.Thread(target=run_in_context(lambda: tracer.start_span("in a thread").end()))
        worker.start()
        worker.join()
    with tracer.start_as_current_span("outside"):
        pass
    finished = {s.name: s.attributes for s in exporter.get_finished_spans()}
    assert {name: attributes[semconv.ROLLOUT_ID] for name, attributes in finished.items()} == {
        "agent": "ro-1",
        "step 1": "ro-1",
        "in a thread": "ro-1",
        "outside": "ro-process",
    }
    # The parent ends last but was numbered first: sequence ids follow start order.
    in_rollout = [finished[name][semconv.SEQUENCE_ID] for name in ("agent", "step 1", "in a thread")]
    assert ranks(in_rollout) == [1, 2, 3]


def test_spans_are_filed_by_their_own_resource_when_providers_share_the_processor() -> None:
    # The processor remembers the last resource it read; spans alternating between providers must
    # still each get their own resource's rollout, numbered per attempt.
    processor = RolloutSpanProcessor(ActiveRollout("ro-process", "at-process"))
    exporter = InMemorySpanExporter()
    tracers = {}
    for name, attributes in {
        "a": {semconv.ROLLOUT_ID: "ro-a", semconv.ATTEMPT_ID: "at-a"},
        "b": {semconv.ROLLOUT_ID: "ro-b", semconv.ATTEMPT_ID: "at-b"},
        "plain": {},
    }.items():
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(processor)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracers[name] = provider.get_tracer("test")
    for name in ["a", "b", "a", "plain", "b", "a"]:
        tracers[name].start_span(name).end()
    finished = exporter.get_finished_spans()
    assert [(s.name, s.attributes[semconv.ROLLOUT_ID]) for s in finished] == [
        ("a", "ro-a"),
        ("b", "ro-b"),
        ("a", "ro-a"),
        ("plain", "ro-process"),
        ("b", "ro-b"),
        ("a", "ro-a"),
    ]
    assert ranks(s.attributes[semconv.SEQUENCE_ID] for s in finished) == [1, 2, 3, 4, 5, 6]


def test_a_program_launched_for_a_rollout_files_everything_under_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGL_ROLLOUT_ID", "ro-launched")
    monkeypatch.setenv("AGL_ATTEMPT_ID", "at-launched")
    processor = RolloutSpanProcessor(ActiveRollout("ro-process", "at-process"))
    assert processor.launched is not None
    assert (processor.launched.rollout_id, processor.launched.attempt_id) == ("ro-launched", "at-launched")


async def test_the_exporter_files_batches_in_the_store_and_never_raises(
    traced: tuple[TracerProvider, InMemorySpanExporter], tmp_path: Path
) -> None:
    provider, finished = traced
    store = InMemoryLightningStore(watchdog_interval=None)
    started = await store.start_rollout({"q": 1})
    tracer = provider.get_tracer("test")
    with (
        rollout_context(started.rollout_id, started.attempt.attempt_id),
        tracer.start_as_current_span("agent"),
        tracer.start_as_current_span("tool"),
    ):
        pass
    exporter = StoreSpanExporter(store=store)
    assert exporter.export(finished.get_finished_spans()).name == "SUCCESS"
    spans = await store.query_spans(started.rollout_id)
    assert [s.name for s in spans] == ["agent", "tool"] and ranks(s.sequence_id for s in spans) == [1, 2]
    exporter.shutdown()

    broken = SqliteLightningStore(tmp_path / "closed.db")
    await broken.close()
    failing = StoreSpanExporter(store=broken)
    assert failing.export(finished.get_finished_spans()).name == "FAILURE"  # logged, not raised
    failing.shutdown()


async def test_a_span_the_store_refuses_loses_only_itself_not_its_batch(
    traced: tuple[TracerProvider, InMemorySpanExporter], tmp_path: Path
) -> None:
    provider, finished = traced
    store = SqliteLightningStore(tmp_path / "spans.db", max_span_bytes=4096)
    started = await store.start_rollout({"q": 1})
    tracer = provider.get_tracer("test")
    with rollout_context(started.rollout_id, started.attempt.attempt_id):
        tracer.start_span("agent").end()
        tracer.start_span("tool", attributes={"result": "x" * 8192}).end()  # over the store's limit
        tracer.start_span("reply").end()
    exporter = StoreSpanExporter(store=store)
    assert exporter.export(finished.get_finished_spans()).name == "FAILURE"  # one span was lost
    assert [s.name for s in await store.query_spans(started.rollout_id)] == ["agent", "reply"]

    finished.clear()
    with rollout_context(started.rollout_id, started.attempt.attempt_id):
        tracer.start_span("run", attributes={"stdout": b"ok \xff".decode(errors="surrogateescape")}).end()
        tracer.start_span("after").end()
    assert exporter.export(finished.get_finished_spans()).name == "SUCCESS"  # a lone surrogate is replaced
    spans = await store.query_spans(started.rollout_id)
    assert [s.name for s in spans] == ["agent", "reply", "run", "after"]
    assert spans[2].attributes["stdout"] == "ok \ufffd"
    exporter.shutdown()
    await store.close()


async def test_a_routed_rollout_s_spans_reach_its_store_even_when_the_exporter_s_own_store_fails(
    traced: tuple[TracerProvider, InMemorySpanExporter], tmp_path: Path
) -> None:
    provider, finished = traced
    routed = InMemoryLightningStore(watchdog_interval=None)
    started = await routed.start_rollout({"q": 1})
    tracer = provider.get_tracer("test")
    tracer.start_span("outside any rollout").end()  # filed under the process's own rollout
    with rollout_context(started.rollout_id, started.attempt.attempt_id):
        tracer.start_span("agent").end()
    broken = SqliteLightningStore(tmp_path / "closed.db")
    await broken.close()
    exporter = StoreSpanExporter(store=broken)  # made for a store that is gone, as after an earlier fit
    with route_rollout(started.rollout_id, routed):
        batch = finished.get_finished_spans()
        assert len(batch) == 2
        assert exporter.export(batch).name == "FAILURE"  # the process's span could not be stored
    assert [s.name for s in await routed.query_spans(started.rollout_id)] == ["agent"]  # but this one was
    exporter.shutdown()


def test_the_outermost_layer_owns_the_llm_span(traced: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = traced
    tracer = provider.get_tracer("test")
    with llm_call("tiny", provider="framework", tracer=tracer) as outer:
        outer.record_request([{"role": "user", "content": "from the framework"}], parameters={"temperature": 0.5})
        with llm_call("tiny", tracer=tracer) as inner:  # the client underneath joins
            assert not inner.owner and inner.span is outer.span
            inner.record_request([{"role": "user", "content": "as sent on the wire"}])
            inner.record_token_ids([1, 2, 3], [4, 5], [-0.1, -0.2])
            inner.record_response([{"role": "assistant", "content": "hi"}], response_id="r-1", output_tokens=2)
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat tiny" and span.attributes[semconv.LLM_CALL] is True
    assert json.loads(span.attributes[semconv.INPUT_MESSAGES]) == [{"role": "user", "content": "from the framework"}]
    assert span.attributes["gen_ai.request.temperature"] == 0.5
    assert list(span.attributes[semconv.PROMPT_TOKEN_IDS]) == [1, 2, 3]
    assert list(span.attributes[semconv.RESPONSE_LOGPROBS]) == [-0.1, -0.2]
    assert span.attributes[semconv.RESPONSE_ID] == "r-1"


def test_a_failed_llm_call_is_recorded_and_raised(traced: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = traced
    with pytest.raises(TimeoutError), llm_call("tiny", tracer=provider.get_tracer("test")):
        raise TimeoutError("model too slow")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code.name == "ERROR" and span.events[0].name == "exception"
    assert span.attributes[semconv.ERROR_TYPE] == "TimeoutError"  # the GenAI conventions require it on a failure


def test_a_failed_llm_call_s_error_type_is_the_fully_qualified_class_and_only_the_owner_sets_it(
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = traced
    tracer = provider.get_tracer("test")
    with llm_call("tiny", tracer=tracer) as outer:
        with pytest.raises(json.JSONDecodeError), llm_call("tiny", tracer=tracer):  # joins: the outer may retry
            json.loads("{")
        assert semconv.ERROR_TYPE not in outer.span.attributes  # type: ignore[attr-defined]
    with pytest.raises(json.JSONDecodeError), llm_call("tiny", tracer=tracer):
        json.loads("{")
    retried, failed = exporter.get_finished_spans()
    assert retried.status.status_code.name == "UNSET" and semconv.ERROR_TYPE not in (retried.attributes or {})
    assert failed.attributes[semconv.ERROR_TYPE] == "json.decoder.JSONDecodeError"
    assert failed.attributes[semconv.ERROR_TYPE] == failed.events[0].attributes["exception.type"]  # type: ignore[index]


def test_a_reply_reported_failed_gets_an_error_type_too(traced: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = traced
    tracer = provider.get_tracer("test")
    with llm_call("tiny", tracer=tracer) as coded:
        coded.fail("response.failed: overloaded", "server_error")
    with llm_call("tiny", tracer=tracer) as uncoded:
        uncoded.fail("the stream ended without its final event")
    assert [(s.status.status_code.name, s.attributes[semconv.ERROR_TYPE]) for s in exporter.get_finished_spans()] == [
        ("ERROR", "server_error"),
        ("ERROR", "_OTHER"),  # the conventions' value when no type is known
    ]


def test_the_server_is_set_when_the_span_starts_or_by_the_layer_that_joins(
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = traced
    tracer = provider.get_tracer("test")
    server = {semconv.SERVER_ADDRESS: "127.0.0.1", semconv.SERVER_PORT: 8000}
    start_llm_call("tiny", tracer=tracer, server=server).end()
    with llm_call("tiny", provider="framework", tracer=tracer) as outer:  # a framework's layer knows no server
        inner = start_llm_call("tiny", tracer=tracer, server=server)
        assert not inner.owner and outer.span.attributes[semconv.SERVER_ADDRESS] == "127.0.0.1"  # type: ignore[attr-defined]
    for span in exporter.get_finished_spans():
        assert (span.attributes[semconv.SERVER_ADDRESS], span.attributes[semconv.SERVER_PORT]) == ("127.0.0.1", 8000)


def test_cached_and_reasoning_token_counts_are_recorded_by_the_layer_that_saw_the_wire(
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = traced
    tracer = provider.get_tracer("test")
    with llm_call("tiny", tracer=tracer) as outer:
        outer.record_response([{"role": "assistant", "content": "hi"}], input_tokens=10, output_tokens=8)
        with llm_call("tiny", tracer=tracer) as inner:
            inner.record_response(None, cache_read_input_tokens=6, reasoning_output_tokens=5)
    (span,) = exporter.get_finished_spans()
    assert span.attributes[semconv.USAGE_CACHE_READ_INPUT_TOKENS] == 6
    assert span.attributes[semconv.USAGE_REASONING_OUTPUT_TOKENS] == 5


# --- zero code: real opentelemetry-instrument subprocesses ----------------------------------


def instrumented(script: str, store_url: str, **env: str) -> subprocess.Popen[str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environment = {**inherited, "AGL_STORE": store_url, **env}
    return subprocess.Popen(
        [str(BIN / "opentelemetry-instrument"), sys.executable, "-c", textwrap.dedent(script)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


PLAIN_APP = """
    import sys
    from opentelemetry import trace
    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("agent"):
        with tracer.start_as_current_span("step", attributes={"n": 1}):
            pass
    if sys.argv[1:] == ["crash"]:
        raise RuntimeError("the agent crashed")
"""


def run_store(coroutine):
    return asyncio.run(coroutine)


@pytest.mark.parametrize("crash", [False, True])
def test_a_plain_program_becomes_an_observed_rollout(tmp_path: Path, crash: bool) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    script = PLAIN_APP.replace('sys.argv[1:] == ["crash"]', str(crash))
    process = instrumented(script, url)
    _, err = process.communicate(timeout=120)
    assert process.returncode == (1 if crash else 0), err
    store = SqliteLightningStore(tmp_path / "store.db", watchdog_interval=None)
    (rollout,) = run_store(store.query_rollouts())
    assert rollout.rollout_id.startswith("ro-proc-") and rollout.metadata["observed"] is True
    assert rollout.status == ("failed" if crash else "succeeded")
    spans = run_store(store.query_spans(rollout.rollout_id))
    assert [s.name for s in spans] == ["agent", "step", semconv.PROCESS_EXIT_SPAN]
    assert ranks(s.sequence_id for s in spans) == [1, 2, 3]
    assert spans[1].parent_id == spans[0].span_id
    assert spans[2].attributes[semconv.PROCESS_OUTCOME] == ("failed" if crash else "succeeded")
    run_store(store.close())


def test_the_user_exporter_choice_wins(tmp_path: Path) -> None:
    process = instrumented(PLAIN_APP, f"sqlite:///{tmp_path}/store.db", OTEL_TRACES_EXPORTER="console")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert '"name": "agent"' in out  # the console exporter printed it
    assert not (tmp_path / "store.db").exists()  # and agl's exporter never opened the store


def test_otlp_without_a_protocol_reaches_agl_s_server_over_http(tmp_path: Path) -> None:
    """``OTEL_TRACES_EXPORTER=otlp`` alone means gRPC to the SDK, whose exporter agl-core does not ship:
    the HTTP one is taken, so the spans arrive instead of a warning and nothing."""
    from agl.core.server import ServerSettings, create_app
    from agl.core.testing.server import ServingThread

    backing = SqliteLightningStore(tmp_path / "served.db", watchdog_interval=None)
    with ServingThread(create_app(ServerSettings(), backing)) as server:
        process = instrumented(
            PLAIN_APP,
            f"sqlite:///{tmp_path}/unused.db",
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=server.url,
        )
        _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    (rollout,) = run_store(backing.query_rollouts())
    assert [s.name for s in run_store(backing.query_spans(rollout.rollout_id))][:2] == ["agent", "step"]
    run_store(backing.close())


def test_a_launched_program_and_a_long_conversation(tmp_path: Path) -> None:
    store = SqliteLightningStore(tmp_path / "store.db", watchdog_interval=None)
    started = run_store(store.start_rollout({"q": 1}))
    # 200 messages flattened the way some instrumentors do (3 attributes each): all must survive.
    script = """
        from opentelemetry import trace
        with trace.get_tracer("app").start_as_current_span("chat") as span:
            for i in range(200):
                span.set_attribute(f"llm.input_messages.{i}.message.role", "user")
                span.set_attribute(f"llm.input_messages.{i}.message.content", "m" * 100 + str(i))
                span.set_attribute(f"llm.input_messages.{i}.message.index", i)
    """
    process = instrumented(
        script,
        f"sqlite:///{tmp_path}/store.db",
        AGL_ROLLOUT_ID=started.rollout_id,
        AGL_ATTEMPT_ID=started.attempt.attempt_id,
    )
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    (span,) = run_store(store.query_spans(started.rollout_id))
    kept = [key for key in span.attributes if key.startswith("llm.input_messages.")]
    assert len(kept) == 600 and span.attributes["llm.input_messages.199.message.content"].endswith("199")
    assert run_store(store.get_latest_attempt(started.rollout_id)).status == "running"  # type: ignore[union-attr]
    run_store(store.close())


def test_identity_from_otel_resource_attributes(tmp_path: Path) -> None:
    store = SqliteLightningStore(tmp_path / "store.db", watchdog_interval=None)
    started = run_store(store.start_rollout({"q": 1}))
    resource = f"service.name=bot,agl.rollout.id={started.rollout_id},agl.attempt.id={started.attempt.attempt_id}"
    process = instrumented(PLAIN_APP, f"sqlite:///{tmp_path}/store.db", OTEL_RESOURCE_ATTRIBUTES=resource)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    spans = run_store(store.query_spans(started.rollout_id))
    assert [s.name for s in spans] == ["agent", "step"] and ranks(s.sequence_id for s in spans) == [1, 2]
    assert run_store(store.query_rollouts()).total == 1  # no observed rollout of its own
    run_store(store.close())


def test_a_killed_program_loses_at_most_its_unflushed_tail(tmp_path: Path) -> None:
    script = """
        from opentelemetry import trace
        from agl.core.tracing import flush_spans
        tracer = trace.get_tracer("app")
        for i in range(100):
            tracer.start_span(f"span {i}").end()
        flush_spans()
        print("flushed", flush=True)
        while True:
            tracer.start_span("tail").end()
    """
    process = instrumented(script, f"sqlite:///{tmp_path}/store.db")
    assert process.stdout is not None and process.stdout.readline().strip() == "flushed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    store = SqliteLightningStore(tmp_path / "store.db", watchdog_interval=None)
    (rollout,) = run_store(store.query_rollouts())
    names = {s.name for s in run_store(store.query_spans(rollout.rollout_id))}
    assert {f"span {i}" for i in range(100)} <= names
    assert rollout.status == "running"  # killed: no exit span; the rollout is left as it was
    run_store(store.close())


def test_request_parameters_keep_the_first_synonym_whatever_order_they_were_passed_in() -> None:
    passed = {"max_tokens": 8, "messages": [], "stop": "\n", "max_completion_tokens": 64, "seed": None}
    assert request_parameters(passed) == {"max_tokens": 64, "stop_sequences": ["\n"]}
    assert request_parameters({"max_tokens": 8}) == {"max_tokens": 8}
    assert request_parameters({"model": "m", "messages": []}) == {}
