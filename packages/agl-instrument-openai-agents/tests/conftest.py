"""Fixtures: spans kept in memory, the instrumentor switched on for one test, a scripted Agents SDK
`Model`, and no trace upload: the SDK's default exporter is replaced by a recorder for the session."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from agents import Model, ModelResponse, Usage
from agents.tracing.processors import BackendSpanExporter
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agl.instrument.openai_agents import OpenAIAgentsInstrumentor

UPLOADED: list[Any] = []
"""What the SDK's default exporter was asked to upload (it never sends it)."""


def _record_instead_of_uploading(self: BackendSpanExporter, items: list[Any], *args: Any, **kwargs: Any) -> None:
    UPLOADED.extend(items)


# No network, for the whole session and the SDK's exit-time flush after it: without an API key the
# SDK's exporter would only warn, but a developer's shell may hold one.
os.environ.pop("OPENAI_API_KEY", None)
BackendSpanExporter.export = _record_instead_of_uploading  # type: ignore[method-assign]
BackendSpanExporter._export_with_deadline = _record_instead_of_uploading  # type: ignore[method-assign]


Instrument = Callable[..., OpenAIAgentsInstrumentor]


@pytest.fixture
def instrument(captured_spans: InMemorySpanExporter) -> Iterator[Instrument]:
    """``instrument(**options)`` instruments the SDK into agl-core's ``captured_spans`` (the global
    provider, which emitters write to as well); undone after the test."""
    instrumentor = OpenAIAgentsInstrumentor()

    def start(**options: Any) -> OpenAIAgentsInstrumentor:
        instrumentor.instrument(**options)
        return instrumentor

    yield start
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


# --- a scripted model -------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A tool call the scripted model asks for."""

    name: str
    arguments: dict[str, Any]
    call_id: str


Step = str | Sequence[Call]


@dataclass
class ScriptedModel(Model):
    """Answers from a script, in order: a string is a final answer, a list of `Call` asks for tools.
    ``seen`` keeps each call's system instructions and input as the model received them."""

    script: list[Step]
    model: str = "scripted"
    seen: list[tuple[str | None, Any]] = field(default_factory=list)

    async def get_response(
        self, system_instructions, input, model_settings, tools, output_schema, handoffs, tracing, **_
    ):  # type: ignore[no-untyped-def]
        self.seen.append((system_instructions, input))
        step = self.script.pop(0)
        if isinstance(step, str):
            text = ResponseOutputText(text=step, type="output_text", annotations=[])
            output: list[Any] = [
                ResponseOutputMessage(id="msg-1", content=[text], role="assistant", status="completed", type="message")
            ]
        else:
            output = [
                ResponseFunctionToolCall(
                    arguments=json.dumps(call.arguments), call_id=call.call_id, name=call.name, type="function_call"
                )
                for call in step
            ]
        usage = Usage(requests=1, input_tokens=10 * len(self.seen), output_tokens=3)
        return ModelResponse(output=output, usage=usage, response_id=f"resp-{len(self.seen)}")

    def stream_response(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise NotImplementedError


@pytest.fixture
def scripted() -> type[ScriptedModel]:
    return ScriptedModel


@pytest.fixture
def tool_call() -> type[Call]:
    return Call
