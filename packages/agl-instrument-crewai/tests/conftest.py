"""Fixtures: CrewAI offline (its telemetry off, a scripted `BaseLLM`), spans kept in memory under
a global provider with agl's processor, and the instrumentor switched on for one test."""

from __future__ import annotations

import os

# Before CrewAI is imported: no telemetry, no trace collection, no first-run prompt. Not
# OTEL_SDK_DISABLED, which CrewAI honours too but which would silence agl's own spans.
for _name, _value in {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "CREWAI_DISABLE_TRACKING": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "CREWAI_TESTING": "true",
}.items():
    os.environ.setdefault(_name, _value)

from collections.abc import Callable, Iterator  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from crewai.llms.base_llm import BaseLLM  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan  # noqa: E402
from pydantic import PrivateAttr  # noqa: E402

from agl.instrument.crewai import CrewAIInstrumentor  # noqa: E402

CHAT_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")


class ScriptedLLM(BaseLLM):
    """A model that answers from a script, in CrewAI's text format (``Action:``/``Action Input:``
    for a tool call, ``Final Answer:`` to finish), and keeps a copy of the messages of each call."""

    script: list[str]
    _seen: list[list[dict[str, Any]]] = PrivateAttr(default_factory=list)

    def call(
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> str:
        given = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
        self._seen.append([{key: m[key] for key in CHAT_KEYS if key in m} for m in given])
        if not self.script:
            raise RuntimeError("the script has no more replies")
        return self.script.pop(0)

    def supports_function_calling(self) -> bool:
        return False

    @property
    def seen(self) -> list[list[dict[str, Any]]]:
        return self._seen


def tool_call(name: str, arguments: str) -> str:
    return f"Thought: I should use {name}\nAction: {name}\nAction Input: {arguments}"


def final(answer: str) -> str:
    return f"Thought: I now know the final answer\nFinal Answer: {answer}"


@pytest.fixture(scope="session", autouse=True)
def crewai_locks_in_a_scratch_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """CrewAI's file locks (``crewai:<md5>.lock``, one per lock name, never removed) go to the
    temporary folder: pytest's for the session, not the system's, where every run added its own."""
    import tempfile

    before, tempfile.tempdir = tempfile.tempdir, str(tmp_path_factory.mktemp("crewai-locks"))
    try:
        yield
    finally:
        tempfile.tempdir = before


@pytest.fixture
def kit() -> SimpleNamespace:
    """The helpers above, for test modules (which cannot import this conftest under importlib mode)."""
    return SimpleNamespace(LLM=ScriptedLLM, tool_call=tool_call, final=final, ordered=ordered, tree=tree)


Instrument = Callable[..., CrewAIInstrumentor]


@pytest.fixture
def instrument(captured_spans) -> Iterator[Instrument]:
    """``instrument()`` instruments CrewAI into the global provider of ``captured_spans``; undone after the test."""
    instrumentor = CrewAIInstrumentor()

    def start(**options: Any) -> CrewAIInstrumentor:
        instrumentor.instrument(tracer_provider=trace.get_tracer_provider(), **options)
        return instrumentor

    yield start
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


def ordered(spans: Any) -> list[ReadableSpan]:
    """Spans in the order they started (agl's sequence ids)."""
    return sorted(spans, key=lambda span: span.attributes["agl.sequence_id"])


def tree(spans: list[ReadableSpan]) -> list[tuple[str, str | None]]:
    """(name, parent's name) of each span, in order."""
    names = {span.context.span_id: span.name for span in spans}
    return [(span.name, names.get(span.parent.span_id) if span.parent else None) for span in spans]
