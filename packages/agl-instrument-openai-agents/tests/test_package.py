"""The package as OpenTelemetry's auto-loader sees it, and the instrumentor's life: lazy, never
raising, idempotent, and leaving nothing behind when undone."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import agents.tracing
import wrapt
from agents import Agent, Model, Runner
from agents.tool_context import ToolContext
from agents.tracing.spans import SpanImpl
from agents.tracing.traces import TraceImpl

from agl.instrument.openai_agents import OpenAIAgentsInstrumentor, _wrappers
from agl.instrument.openai_agents.package import _instruments

PACKAGE = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PATCHED = [(SpanImpl, "start"), (SpanImpl, "finish"), (TraceImpl, "start"), (TraceImpl, "finish")]


def processors() -> tuple:
    return agents.tracing.get_trace_provider()._multi_processor._processors


def ours(found: tuple) -> list:
    return [p for p in found if type(p).__name__ == "AglTracingProcessor"]


def test_the_instruments_extra_is_what_the_instrumentor_declares() -> None:
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["instruments"] == list(_instruments)
    assert list(OpenAIAgentsInstrumentor().instrumentation_dependencies()) == list(_instruments)
    assert project["dependencies"] == ["agl-core"]


def test_the_entry_point_names_this_instrumentor() -> None:
    (entry,) = [e for e in entry_points(group="opentelemetry_instrumentor") if e.name == "agl_openai_agents"]
    assert entry.load() is OpenAIAgentsInstrumentor


def test_instrument_adds_a_processor_beside_the_users_and_uninstrument_restores_everything(
    captured_spans, instrument, scripted
) -> None:
    before = processors()
    originals = {(cls, name): cls.__dict__[name] for cls, name in PATCHED}
    instrumentor = instrument()
    instrument()  # twice: a no-op
    after = processors()
    assert after[: len(before)] == before and len(ours(after)) == 1  # added, nothing replaced
    assert all(isinstance(cls.__dict__[name], wrapt.FunctionWrapper) for cls, name in PATCHED)
    assert isinstance(scripted.__dict__["get_response"], wrapt.FunctionWrapper)  # defined before instrument()

    class Later(Model):  # defined while instrumented: wrapped through the subclass hook
        async def get_response(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def stream_response(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    assert isinstance(Later.__dict__["get_response"], wrapt.FunctionWrapper)

    instrumentor.uninstrument()
    assert processors() == before and not ours(processors())
    assert {(cls, name): cls.__dict__[name] for cls, name in PATCHED} == originals
    assert not isinstance(scripted.__dict__["get_response"], wrapt.FunctionWrapper)
    assert not isinstance(Later.__dict__["get_response"], wrapt.FunctionWrapper)
    assert "__init_subclass__" not in Model.__dict__


async def test_after_uninstrument_a_run_records_nothing(captured_spans, instrument, scripted) -> None:
    instrument().uninstrument()
    result = await Runner.run(Agent(name="quiet", model=scripted(["hi"])), "hello")
    assert result.final_output == "hi" and list(captured_spans.get_finished_spans()) == []


async def test_a_failure_to_record_never_reaches_the_agent(captured_spans, instrument, scripted, monkeypatch, caplog):
    instrument()

    def broken(*args, **kwargs):
        raise RuntimeError("recording is broken")

    monkeypatch.setattr(_wrappers, "_messages", broken)  # the model boundary
    monkeypatch.setattr(_wrappers._config.processor, "_opening", broken)  # the processor
    with caplog.at_level(logging.DEBUG, logger="agl.instrument.openai_agents"):
        result = await Runner.run(Agent(name="robust", model=scripted(["still fine"])), "hello")
    assert result.final_output == "still fine"
    assert "agl could not record" in caplog.text
    # The agent's span could not open; the rest is there, the LLM span without what failed.
    spans = list(captured_spans.get_finished_spans())
    assert [span.name for span in spans] == ["chat scripted", "invoke_workflow Agent workflow"]
    assert "gen_ai.input.messages" not in spans[0].attributes and spans[0].attributes["agl.agent.name"] == "robust"


async def test_a_model_error_reaches_the_caller_and_is_recorded(captured_spans, instrument, scripted) -> None:
    instrument()
    model = scripted([])  # no step left: IndexError
    try:
        await Runner.run(Agent(name="failing", model=model), "hello")
    except IndexError:
        pass
    else:
        raise AssertionError("the model's error was swallowed")
    (call,) = [s for s in captured_spans.get_finished_spans() if s.name == "chat scripted"]
    assert call.status.status_code.name == "ERROR" and call.events[0].name == "exception"


def test_instrument_never_raises(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(_wrappers, "activate", broken)
    instrumentor = OpenAIAgentsInstrumentor()
    instrumentor.instrument()  # logged, not raised
    instrumentor.uninstrument()


LAZY = """
import sys
from agl.instrument.openai_agents import OpenAIAgentsInstrumentor
OpenAIAgentsInstrumentor().instrument()
assert "agents" not in sys.modules, "instrument() imported the SDK"
import agents
from agents.tracing.spans import SpanImpl
from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel
registered = agents.tracing.get_trace_provider()._multi_processor._processors
print(type(SpanImpl.__dict__["start"]).__name__, type(OpenAIChatCompletionsModel.__dict__["get_response"]).__name__,
      sum(type(p).__name__ == "AglTracingProcessor" for p in registered))
"""


def test_instrument_before_import_patches_lazily(tmp_path: Path) -> None:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGL_", "OPENAI_"))}
    done = subprocess.run(
        [sys.executable, "-c", LAZY], env=inherited, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["FunctionWrapper", "FunctionWrapper", "1"]


CHECK = """
from agents.tracing.spans import SpanImpl
print(type(SpanImpl.__dict__["start"]).__name__)
"""


def test_the_disable_switch_leaves_the_sdk_alone(tmp_path: Path) -> None:
    def patched_under(**env: str) -> str:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGL_", "OPENAI_"))}
        done = subprocess.run(
            [str(BIN / "opentelemetry-instrument"), sys.executable, "-c", CHECK],
            env={**inherited, "OTEL_TRACES_EXPORTER": "none", **env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert patched_under() == "FunctionWrapper"
    assert patched_under(OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="agl_openai_agents") == "function"


def test_tool_context_is_patched_while_instrumented(instrument) -> None:
    original = ToolContext.__dict__["from_agent_context"]
    instrumentor = instrument()
    assert isinstance(ToolContext.__dict__["from_agent_context"], wrapt.FunctionWrapper)
    instrumentor.uninstrument()
    assert ToolContext.__dict__["from_agent_context"] is original
