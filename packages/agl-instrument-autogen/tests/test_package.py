"""The instrumentor's life cycle and the package as OpenTelemetry's auto-loader sees it: lazy,
idempotent, fully undone, never raising, one source of truth for the supported versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import autogen_core.tools._base as tools_base
from autogen_agentchat.agents import AssistantAgent, BaseChatAgent
from autogen_agentchat.teams import BaseGroupChat
from autogen_core.models import ChatCompletionClient
from autogen_core.tools import BaseStreamTool, BaseTool, FunctionTool
from autogen_ext.models.replay import ReplayChatCompletionClient

from agl.core.tracing import rollout_context, semconv
from agl.instrument.autogen import AutoGenInstrumentor, _wrappers
from agl.instrument.autogen.package import _instruments

from .conftest import replay

PACKAGE = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PATCHED = [
    (ReplayChatCompletionClient, "create"),
    (ReplayChatCompletionClient, "create_stream"),
    (AssistantAgent, "on_messages"),
    (AssistantAgent, "on_messages_stream"),
    (BaseChatAgent, "on_messages_stream"),
    (BaseGroupChat, "run_stream"),
    (BaseTool, "run_json"),
    (BaseStreamTool, "run_json_stream"),
    (FunctionTool, "run"),
]


def test_the_instruments_extra_is_what_the_instrumentor_declares() -> None:
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["instruments"] == list(_instruments)
    assert list(AutoGenInstrumentor().instrumentation_dependencies()) == list(_instruments)
    assert project["dependencies"] == ["agl-core"]


def test_the_entry_point_names_this_instrumentor() -> None:
    (entry,) = [e for e in entry_points(group="opentelemetry_instrumentor") if e.name == "agl_autogen"]
    assert entry.load() is AutoGenInstrumentor


def test_instrument_twice_is_a_no_op_and_uninstrument_restores_every_original(traced) -> None:
    originals = {(cls, name): cls.__dict__[name] for cls, name in PATCHED}
    trace_tool_span = tools_base.trace_tool_span
    instrumentor = AutoGenInstrumentor()
    instrumentor.instrument()
    wrapped = {(cls, name): cls.__dict__[name] for cls, name in PATCHED}
    assert all(wrapped[key] is not originals[key] for key in PATCHED)
    assert tools_base.trace_tool_span is not trace_tool_span
    assert "__init_subclass__" in ChatCompletionClient.__dict__ and "__init_subclass__" in BaseChatAgent.__dict__
    instrumentor.instrument()  # a no-op: nothing wrapped twice
    assert {(cls, name): cls.__dict__[name] for cls, name in PATCHED} == wrapped
    instrumentor.uninstrument()
    assert all(cls.__dict__[name] is originals[(cls, name)] for cls, name in PATCHED)
    assert tools_base.trace_tool_span is trace_tool_span
    assert (
        "__init_subclass__" not in ChatCompletionClient.__dict__ and "__init_subclass__" not in BaseChatAgent.__dict__
    )


async def test_a_client_class_defined_after_instrument_is_traced_and_released_after(traced, instrument) -> None:
    instrumentor = instrument()

    class EchoClient(ReplayChatCompletionClient):
        async def create(self, *args, **kwargs):  # a custom client overriding the model call
            return await super().create(*args, **kwargs)

    assert type(EchoClient.__dict__["create"]).__name__ == "FunctionWrapper"
    client = EchoClient(["hi"])
    with rollout_context("ro-test", "at-test"):
        await client.create([])  # outside any agent: no agent name
    (call,) = traced.ours()
    # The subclass's create and the inherited one it calls make one span: the inner one joins.
    assert call.name == "chat EchoClient" and (call.attributes or {})[semconv.LLM_CALL] is True
    assert semconv.AGENT_NAME not in (call.attributes or {})
    instrumentor.uninstrument()
    assert type(EchoClient.__dict__["create"]).__name__ == "function"


async def test_recording_failures_never_reach_the_agent(traced, instrument, monkeypatch) -> None:
    instrument()

    def broken(*args, **kwargs):
        raise RuntimeError("recording broke")

    monkeypatch.setattr(_wrappers, "chat_messages", broken)
    monkeypatch.setattr(_wrappers, "assistant_message", broken)
    agent = AssistantAgent("calm", model_client=replay("Fine."))
    with rollout_context("ro-test", "at-test"):
        result = await agent.run(task="hello")
    assert result.messages[-1].content == "Fine."
    names = [span.name for span in traced.ours()]
    assert names == ["invoke_agent calm", "chat ReplayChatCompletionClient"]


async def test_a_request_that_cannot_be_recorded_leaves_the_reply_recorded(traced, instrument, monkeypatch) -> None:
    instrument()

    def broken(*args, **kwargs):
        raise RuntimeError("recording broke")

    monkeypatch.setattr(_wrappers, "chat_messages", broken)
    agent = AssistantAgent("calm", model_client=replay("Fine."))
    with rollout_context("ro-test", "at-test"):
        await agent.run(task="hello")
    call = traced.ours()[1]
    assert semconv.INPUT_MESSAGES not in call.attributes
    assert json.loads(call.attributes[semconv.OUTPUT_MESSAGES]) == [{"role": "assistant", "content": "Fine."}]


LAZY = """
import sys
from agl.instrument.autogen import AutoGenInstrumentor
AutoGenInstrumentor().instrument()
assert not any(name.startswith("autogen") for name in sys.modules), "instrument() imported AutoGen"
from autogen_ext.models.replay import ReplayChatCompletionClient
from autogen_agentchat.agents import AssistantAgent
client, agent = ReplayChatCompletionClient.__dict__["create"], AssistantAgent.__dict__["on_messages"]
print(type(client).__name__, type(agent).__name__)
"""


def run_python(code: str, tmp_path: Path, *command: str, **env: str) -> str:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGL_"))}
    done = subprocess.run(
        [*command, sys.executable, "-c", code],
        env={**inherited, "OTEL_TRACES_EXPORTER": "none", **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_instrument_before_import_patches_autogen_when_it_is_imported(tmp_path: Path) -> None:
    assert run_python(LAZY, tmp_path) == "FunctionWrapper FunctionWrapper"


CHECK = """
from autogen_ext.models.replay import ReplayChatCompletionClient
print(type(ReplayChatCompletionClient.__dict__["create"]).__name__)
"""


def test_the_disable_switch_leaves_autogen_alone(tmp_path: Path) -> None:
    instrumented = str(BIN / "opentelemetry-instrument")
    others = "autogen_agentchat,agl_openai"  # OpenInference's entry point is named autogen_agentchat
    assert run_python(CHECK, tmp_path, instrumented, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=others) == "FunctionWrapper"
    disabled = f"{others},agl_autogen"
    assert run_python(CHECK, tmp_path, instrumented, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=disabled) == "function"
