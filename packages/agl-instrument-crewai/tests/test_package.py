"""The package as OpenTelemetry's auto-loader sees it, and the instrumentor's contract: lazy,
idempotent, reversible, and never in the way of the crew."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

from crewai import Crew
from crewai.agent.core import Agent
from crewai.flow.runtime import Flow
from crewai.llms.base_llm import BaseLLM
from crewai.task import Task
from crewai.tools.base_tool import BaseTool, Tool
from crewai.tools.structured_tool import CrewStructuredTool

from agl.core.tracing import semconv
from agl.instrument.crewai import CrewAIInstrumentor, _wrappers
from agl.instrument.crewai.package import _instruments

PACKAGE = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PLAIN = [
    (Crew, "kickoff"),
    (Crew, "akickoff"),
    (Task, "_execute_core"),
    (Task, "_aexecute_core"),
    (Agent, "execute_task"),
    (Agent, "aexecute_task"),
    (Agent, "kickoff"),
    (Agent, "akickoff"),
    (BaseTool, "run"),
    (BaseTool, "arun"),
    (Tool, "run"),
    (Tool, "arun"),
    (CrewStructuredTool, "invoke"),
    (CrewStructuredTool, "ainvoke"),
    (BaseLLM, "_emit_call_completed_event"),
    (Flow, "kickoff_async"),
    (Flow, "resume_async"),
    (Flow, "_execute_method"),
]


def test_the_instruments_extra_is_what_the_instrumentor_declares() -> None:
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())
    assert project["project"]["optional-dependencies"]["instruments"] == list(_instruments)
    assert list(CrewAIInstrumentor().instrumentation_dependencies()) == list(_instruments)
    assert project["project"]["dependencies"] == ["agl-core"]
    assert project["tool"]["agl"]["test-environment"] == "crewai"
    for namespace in (PACKAGE / "src" / "agl", PACKAGE / "src" / "agl" / "instrument"):
        assert not (namespace / "__init__.py").exists()


def test_the_entry_point_names_this_instrumentor() -> None:
    (entry,) = [e for e in entry_points(group="opentelemetry_instrumentor") if e.name == "agl_crewai"]
    assert entry.load() is CrewAIInstrumentor


def test_instrument_twice_is_a_no_op_and_uninstrument_restores_every_original(instrument, kit) -> None:
    models = [cls for cls in (kit.LLM, *BaseLLM.__subclasses__()) if "call" in cls.__dict__]
    originals = {(cls, name): cls.__dict__[name] for cls, name in [*PLAIN, *((m, "call") for m in models)]}
    init_subclass = BaseLLM.__dict__["__init_subclass__"]

    instrumentor = instrument()
    wrapped = {key: key[0].__dict__[key[1]] for key in originals}
    assert [key for key, original in originals.items() if wrapped[key] is original] == []
    assert [key for key, original in originals.items() if wrapped[key].__wrapped__ is not original] == []
    instrument()  # again: nothing changes
    assert all(key[0].__dict__[key[1]] is wrapped[key] for key in originals)

    instrumentor.uninstrument()
    assert all(key[0].__dict__[key[1]] is original for key, original in originals.items())
    assert BaseLLM.__dict__["__init_subclass__"] is init_subclass
    assert _wrappers.PATCHER._applied == {}


def test_a_model_class_defined_after_instrumenting_is_traced_and_then_released(captured_spans, instrument, kit) -> None:
    instrumentor = instrument()

    class Later(kit.LLM):
        def call(self, messages, *args, **kwargs):  # type: ignore[no-untyped-def]
            return "later: " + super().call(messages, *args, **kwargs)

    assert Later(model="later-model", script=["hi"]).call("hello") == "later: hi"
    (span,) = captured_spans.get_finished_spans()  # the subclass and its parent: one span, the outer one's
    assert span.name == "chat later-model" and '"later: hi"' in span.attributes[semconv.OUTPUT_MESSAGES]
    original = Later.__dict__["call"].__wrapped__
    instrumentor.uninstrument()
    assert Later.__dict__["call"] is original


def test_recording_failures_never_reach_the_crew(captured_spans, instrument, kit, monkeypatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("recording broke")

    instrument()
    monkeypatch.setattr(_wrappers._Agent, "opening", broken)
    monkeypatch.setattr(_wrappers._Tool, "result", broken)
    monkeypatch.setattr(_wrappers, "_request", broken)
    llm = kit.LLM(model="m", script=[kit.final("done")])
    agent = Agent(role="Solo", goal="g", backstory="b", llm=llm)
    crew = Crew(agents=[agent], tasks=[Task(description="Do it.", expected_output="x", agent=agent)])
    assert crew.kickoff().raw == "done"
    names = [span.name for span in kit.ordered(captured_spans.get_finished_spans())]
    assert names == ["invoke_workflow crew", "task Do it."]  # the agent's and the model's spans failed to open


def test_instrument_never_raises(monkeypatch) -> None:
    monkeypatch.setattr(_wrappers, "activate", lambda tracer: 1 / 0)
    instrumentor = CrewAIInstrumentor()
    instrumentor.instrument()  # logged, not raised: the instrumentors loaded after this one still run
    instrumentor.uninstrument()


LAZY = """
import sys
from agl.instrument.crewai import CrewAIInstrumentor
CrewAIInstrumentor().instrument()
assert not any(name == "crewai" or name.startswith("crewai.") for name in sys.modules), "crewai imported"
from crewai import Crew
from crewai.llms.base_llm import BaseLLM
class Mine(BaseLLM):
    def call(self, messages, *args, **kwargs):
        return "x"
print(type(Crew.__dict__["kickoff"]).__name__, type(Mine.__dict__["call"]).__name__)
"""


def run(command: list[str], tmp_path: Path, **env: str) -> str:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGL_"))}
    done = subprocess.run(
        command,
        env={**inherited, "OTEL_TRACES_EXPORTER": "none", **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_patching_is_lazy(tmp_path: Path) -> None:
    assert run([sys.executable, "-c", LAZY], tmp_path).split() == ["FunctionWrapper", "FunctionWrapper"]


CHECK = """
from crewai import Crew
print(type(Crew.__dict__["kickoff"]).__name__)
"""


def test_the_disable_switch_leaves_crewai_alone(tmp_path: Path) -> None:
    command = [str(BIN / "opentelemetry-instrument"), sys.executable, "-c", CHECK]
    # "crewai" is OpenInference's instrumentor, installed beside ours in the test environment.
    assert run(command, tmp_path, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="crewai") == "FunctionWrapper"
    assert run(command, tmp_path, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="agl_crewai,crewai") == "function"
