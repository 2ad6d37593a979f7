"""The emitters write short spans into the rollout's span tree, and do nothing (one warning each)
where agl tracing is not set up."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agl.core.testing import ranks
from agl.core.tracing import emitters, rollout_context, semconv
from agl.core.tracing.configure import setup_tracing
from agl.core.tracing.emitters import (
    emit_annotation,
    emit_exception,
    emit_message,
    emit_object,
    emit_reward,
    operation,
)


def install(monkeypatch: pytest.MonkeyPatch, provider: trace.TracerProvider) -> None:
    """Make ``provider`` the global one for this test only (the API lets a process set it once)."""
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emitters, "_warned", set())
    monkeypatch.delenv("AGL_ROLLOUT_ID", raising=False)
    monkeypatch.delenv("AGL_ATTEMPT_ID", raising=False)


@pytest.fixture
def exporter(captured_spans: InMemorySpanExporter) -> InMemorySpanExporter:
    return captured_spans


def span_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.span_id


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def test_a_scalar_reward_is_one_stamped_span(exporter: InMemorySpanExporter) -> None:
    with rollout_context("ro-1", "at-1"):
        emit_reward(0.5)
    (span,) = exporter.get_finished_spans()
    assert span.name == "agl.reward"
    attributes = dict(span.attributes or {})
    assert isinstance(attributes.pop(semconv.SEQUENCE_ID), int)
    assert attributes == {
        semconv.SPAN_KIND: "reward",
        semconv.REWARD: 0.5,
        semconv.ROLLOUT_ID: "ro-1",
        semconv.ATTEMPT_ID: "at-1",
    }


def test_named_rewards_keep_every_dimension_and_pick_the_primary(exporter: InMemorySpanExporter) -> None:
    with rollout_context("ro-1", "at-1"):
        emit_reward({"correct": 1, "brevity": 0.25}, primary="correct")
        emit_reward({"only": 0.75})
        emit_reward({"a": 0.1, "b": 0.2})
    chosen, only, ambiguous = (span.attributes or {} for span in exporter.get_finished_spans())
    assert chosen[semconv.REWARD] == 1.0 and isinstance(chosen[semconv.REWARD], float)
    assert (chosen["agl.reward.correct"], chosen["agl.reward.brevity"]) == (1.0, 0.25)
    assert only[semconv.REWARD] == 0.75 and only["agl.reward.only"] == 0.75
    assert semconv.REWARD not in ambiguous
    assert (ambiguous["agl.reward.a"], ambiguous["agl.reward.b"]) == (0.1, 0.2)


def test_a_bad_reward_raises_before_anything_is_emitted(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError, match="'speed'"):
        emit_reward({"correct": 1.0}, primary="speed")
    with pytest.raises(TypeError, match="str"):
        emit_reward("high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs at least one dimension"):  # e.g. metrics of an empty batch
        emit_reward({})
    assert exporter.get_finished_spans() == ()


def test_emitters_attach_to_the_current_span_in_sequence(exporter: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test")
    with rollout_context("ro-1", "at-1"), tracer.start_as_current_span("agent") as agent:
        emit_message("hello", role="user")
        emit_object({"plan": ["a", "b"], "n": 2})
        emit_annotation(tag="fast", scores=[1, 2], mixed=[1, "x"], nested={"a": 1}, skipped=None)
    spans = by_name(exporter)
    agent_id = agent.get_span_context().span_id
    emitted = [spans[name] for name in ("agl.message", "agl.object", "agl.annotation")]
    assert [span.parent.span_id for span in emitted if span.parent] == [agent_id] * 3
    numbered = [agent, *emitted]
    assert ranks(span.attributes[semconv.SEQUENCE_ID] for span in numbered if span.attributes) == [1, 2, 3, 4]
    message, obj, annotation = (span.attributes or {} for span in emitted)
    assert (message[semconv.SPAN_KIND], message["agl.message"], message["agl.message.role"]) == (
        "message",
        "hello",
        "user",
    )
    assert obj[semconv.SPAN_KIND] == "object" and json.loads(str(obj["agl.object"])) == {"plan": ["a", "b"], "n": 2}
    assert annotation[semconv.SPAN_KIND] == "annotation"
    assert (annotation["tag"], annotation["scores"]) == ("fast", (1, 2))
    assert json.loads(str(annotation["mixed"])) == [1, "x"] and json.loads(str(annotation["nested"])) == {"a": 1}
    assert "skipped" not in annotation


def test_values_that_are_not_json_become_strings(exporter: InMemorySpanExporter) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    loop: list[object] = []
    loop.append(loop)
    with rollout_context("ro-1", "at-1"):
        emit_object({"thing": Opaque()})
        emit_object(loop)
        emit_object({(1, 2): "tuple key"})
        emit_object(Unprintable())
    values = [json.loads(str((span.attributes or {})["agl.object"])) for span in exporter.get_finished_spans()]
    assert values[0] == {"thing": "opaque!"}
    assert values[1] == "[[...]]"
    assert values[2] == "{(1, 2): 'tuple key'}"
    assert values[3] == "<unprintable Unprintable>"


def test_emit_exception_is_an_error_span_with_the_exception_event(exporter: InMemorySpanExporter) -> None:
    with rollout_context("ro-1", "at-1"):
        try:
            raise KeyError("missing")
        except KeyError as error:
            emit_exception(error)
    (span,) = exporter.get_finished_spans()
    assert span.name == "agl.exception" and (span.attributes or {})[semconv.SPAN_KIND] == "exception"
    assert span.status.status_code is trace.StatusCode.ERROR
    assert span.status.description == "KeyError: 'missing'"
    (event,) = span.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.type"] == "KeyError"
    assert "raise KeyError" in str((event.attributes or {})["exception.stacktrace"])


def test_operation_as_a_context_manager_parents_what_happens_inside(exporter: InMemorySpanExporter) -> None:
    with rollout_context("ro-1", "at-1"), operation("plan", inputs={"task": "sum"}) as op:
        emit_reward(1.0)
        op.set_output(["step 1", "step 2"])
    spans = by_name(exporter)
    plan = spans["plan"]
    attributes = plan.attributes or {}
    assert attributes[semconv.SPAN_KIND] == "operation"
    assert json.loads(str(attributes["agl.operation.input"])) == {"task": "sum"}
    assert json.loads(str(attributes["agl.operation.output"])) == ["step 1", "step 2"]
    reward = spans["agl.reward"]
    assert reward.parent is not None and reward.parent.span_id == span_id(plan)
    assert ranks([attributes[semconv.SEQUENCE_ID], (reward.attributes or {})[semconv.SEQUENCE_ID]]) == [1, 2]


def test_operation_context_manager_records_and_reraises_errors(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError, match="bad plan"), rollout_context("ro-1", "at-1"), operation("plan"):
        raise ValueError("bad plan")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is trace.StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]
    assert "agl.operation.input" not in (span.attributes or {})


def test_operation_decorates_sync_functions_and_methods(exporter: InMemorySpanExporter) -> None:
    @operation
    def add(a: int, b: int = 2) -> int:
        return a + b

    class Agent:
        @operation("think")
        def think(self, question: str) -> dict[str, str]:
            return {"answer": question.upper()}

    with rollout_context("ro-1", "at-1"):
        assert add(1, b=3) == 4
        assert Agent().think("why") == {"answer": "WHY"}
    spans = by_name(exporter)
    added = spans[add.__qualname__].attributes or {}
    assert add.__name__ == "add"  # functools.wraps keeps the function's identity
    assert json.loads(str(added["agl.operation.input"])) == {"a": 1, "b": 3}
    assert json.loads(str(added["agl.operation.output"])) == 4
    thought = spans["think"].attributes or {}
    assert json.loads(str(thought["agl.operation.input"])) == {"question": "why"}
    assert json.loads(str(thought["agl.operation.output"])) == {"answer": "WHY"}


def test_operation_decorated_sync_function_records_its_exception(exporter: InMemorySpanExporter) -> None:
    @operation("divide")
    def divide(a: float, b: float) -> float:
        return a / b

    with rollout_context("ro-1", "at-1"), pytest.raises(ZeroDivisionError):
        divide(1, 0)
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is trace.StatusCode.ERROR
    assert (span.events[0].attributes or {})["exception.type"] == "ZeroDivisionError"
    assert "agl.operation.output" not in (span.attributes or {})


async def test_operation_decorates_async_functions(exporter: InMemorySpanExporter) -> None:
    @operation("fetch")
    async def fetch(url: str) -> str:
        emit_message(f"fetching {url}")
        return "<html>"

    @operation
    async def broken() -> None:
        raise RuntimeError("offline")

    with rollout_context("ro-1", "at-1"):
        assert await fetch("http://x") == "<html>"
        with pytest.raises(RuntimeError, match="offline"):
            await broken()
    spans = by_name(exporter)
    fetched = spans["fetch"]
    assert json.loads(str((fetched.attributes or {})["agl.operation.output"])) == "<html>"
    message = spans["agl.message"]
    assert message.parent is not None and message.parent.span_id == span_id(fetched)
    failed = spans[broken.__qualname__]
    assert failed.status.status_code is trace.StatusCode.ERROR
    assert json.loads(str((failed.attributes or {})["agl.operation.input"])) == {}


def test_operation_refuses_to_wrap_a_generator_whose_span_would_end_before_its_items() -> None:
    def steps(n: int) -> Iterator[int]:
        yield from range(n)

    async def stream() -> AsyncIterator[int]:
        yield 1

    for function in (steps, stream):
        with pytest.raises(TypeError, match=f"cannot wrap the generator '.*{function.__name__}': its span would end"):
            operation(function)
        with pytest.raises(TypeError, match="cannot wrap the generator"):
            operation("named")(function)


def test_an_sdk_provider_set_up_by_setup_tracing_is_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    install(monkeypatch, provider)
    assert not emitters.agl_tracing_active()
    assert setup_tracing() is provider  # adds agl's processor to the provider already in place
    assert emitters.agl_tracing_active()
    emit_reward(1.0)  # outside any rollout_context: filed under the process's observed rollout
    (span,) = exporter.get_finished_spans()
    assert str((span.attributes or {})[semconv.ROLLOUT_ID]).startswith("ro-")
    provider.shutdown()


@pytest.mark.parametrize("kind", ["no provider", "sdk provider without agl"])
def test_outside_agl_tracing_emitters_do_nothing_and_warn_once_each(
    kind: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = InMemorySpanExporter()
    provider: trace.TracerProvider = trace.NoOpTracerProvider()
    if kind == "sdk provider without agl":
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    install(monkeypatch, provider)

    @operation
    def double(x: int) -> int:
        return 2 * x

    caplog.set_level(logging.WARNING, logger=emitters.__name__)
    with rollout_context("ro-1", "at-1"):
        for _ in range(2):
            emit_reward(1.0)
            emit_message("hi")
            emit_object({"a": 1})
            emit_exception(RuntimeError("x"))
            emit_annotation(tag="t")
            assert double(4) == 8
            with operation("plan") as op:
                op.set_output("done")
            assert op.span is None
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    named = sorted(message.split()[1] for message in warnings)
    assert named == ["emit_annotation", "emit_exception", "emit_message", "emit_object", "emit_reward", "operation"]
    assert all("setup_tracing" in message for message in warnings)
    assert exporter.get_finished_spans() == ()
