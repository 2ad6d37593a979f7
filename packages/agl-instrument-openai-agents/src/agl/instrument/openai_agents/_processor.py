"""The Agents SDK tracing processor that turns the SDK's traces and spans into OpenTelemetry spans.

The SDK calls a processor synchronously, in the caller's context, when a trace or span starts and
ends, so each OpenTelemetry span starts and ends at the SDK span's own moments. Its parent is the
current OpenTelemetry span when that one belongs to the same trace (so spans the user opened in
between keep their place), else the OpenTelemetry span of the SDK parent (the nearest mapped
ancestor: kinds we do not map, such as the SDK's own model spans, are passed through).

Mapped kinds: the trace (``invoke_workflow {name}``), ``agent`` (``invoke_agent {name}``),
``function`` (``execute_tool {name}``), ``handoff`` (``handoff {from} -> {to}``), ``guardrail``
(``guardrail {name}``), ``custom`` (its own name) and ``mcp_tools`` (``mcp_list_tools {server}``).
Not mapped: ``generation`` and ``response`` (the canonical LLM span comes from the `Model`
boundary instead, see `_wrappers`), ``task`` and ``turn`` (the trace and the agent span already
say it), and the voice kinds.
"""

from __future__ import annotations

import logging
import sys
import weakref
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from agl.core.tracing import semconv
from agl.core.tracing.jsontext import json_text

logger = logging.getLogger("agl.instrument.openai_agents")

HANDOFF = "handoff"
GUARDRAIL = "guardrail"
GUARDRAIL_TRIGGERED = "agl.guardrail.triggered"
HANDOFF_FROM = "agl.handoff.from_agent"
HANDOFF_TO = "agl.handoff.to_agent"
SDK_SPAN_TYPE = "agl.openai_agents.span_type"
CUSTOM_DATA = "agl.openai_agents.data"
MAPPED = frozenset({"agent", "function", "handoff", "guardrail", "custom", "mcp_tools"})
ERRORS_PASSED_UP = frozenset({"turn", "task"})
"""Unmapped kinds whose error goes on the nearest mapped span (a turn's on its agent, a task's on the
workflow): the SDK records a tripped input guardrail, or a tool the model named that does not exist,
on its current turn. Not the model spans: their errors are the LLM span's, and a call the SDK
retries must not fail its agent."""


@dataclass
class Node:
    """What we keep of one open SDK trace or span."""

    span: trace.Span | None
    """Its OpenTelemetry span; None for a kind that is not mapped."""
    agent: str | None
    """The name of the agent it runs in (its own name for an agent span)."""
    parent: Node | None
    kind: str
    token: object | None = None
    """The OpenTelemetry context token while the SDK holds the span as its current one."""
    call_id: str | None = None
    """A function span's tool call id (`_wrappers` reads it off the tool's context)."""
    result: str | None = None
    """A function span's result as the model got it: the SDK's own conversion of the tool's return
    value (``str()`` of most values), caught by `_wrappers`; None where it was not seen."""
    handled: BaseException | None = None
    """A trace's: the exception already being handled where it started (a run inside the user's
    ``except`` block), so that one is not taken for the run's own failure when it ends."""

    def nearest_span(self) -> trace.Span | None:
        node: Node | None = self
        while node is not None:
            if node.span is not None:
                return node.span
            node = node.parent
        return None


_warned = False


def recording_failed(what: str) -> None:
    """Log and carry on: the agent matters more than its record. A warning the first time, then debug."""
    global _warned
    logger.log(logging.DEBUG if _warned else logging.WARNING, "agl could not record %s", what, exc_info=True)
    _warned = True


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json_text(value)
    except Exception:
        return str(value)


class AglTracingProcessor:
    """An Agents SDK ``TracingProcessor`` (duck-typed, so this module does not import the SDK).

    ``nodes`` maps SDK trace and span ids to what was opened for them; the `_wrappers` hooks read
    it to make the span current and to find the agent of a model call. ``streamed`` maps the id of
    a trace a streamed run owns to that run's ``RunResultStreaming`` (noted by `_wrappers` when
    ``run_streamed`` returns; weakly, since a disabled trace never ends here)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        self.active = True
        self.nodes: dict[str, Node] = {}
        self.streamed: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()

    # --- traces ---

    def on_trace_start(self, sdk_trace: Any) -> None:
        if not self.active:
            return
        try:
            name = getattr(sdk_trace, "name", None) or "workflow"
            attributes: dict[str, Any] = {semconv.OPERATION_NAME: semconv.INVOKE_WORKFLOW}
            group_id = getattr(sdk_trace, "group_id", None)
            if group_id:
                attributes["gen_ai.conversation.id"] = str(group_id)
            span = self.tracer.start_span(f"{semconv.INVOKE_WORKFLOW} {name}", attributes=attributes)
            self.nodes[sdk_trace.trace_id] = Node(span, None, None, "trace", handled=sys.exception())
        except Exception:
            recording_failed("the start of an Agents SDK trace")

    def on_trace_end(self, sdk_trace: Any) -> None:
        try:
            node = self.nodes.pop(sdk_trace.trace_id, None)
            streamed = self.streamed.pop(sdk_trace.trace_id, None)
            if node is not None and node.span is not None:
                _fail_if_raising(node)
                if streamed is not None and streamed.trace is sdk_trace:
                    _fail_if_past_max_turns(node.span, streamed)
                node.span.end()
        except Exception:
            recording_failed("the end of an Agents SDK trace")

    # --- spans ---

    def on_span_start(self, sdk_span: Any) -> None:
        if not self.active:
            return
        try:
            data = sdk_span.span_data
            kind = data.type
            parent = self.nodes.get(sdk_span.parent_id or sdk_span.trace_id)
            agent = parent.agent if parent is not None else None
            if kind == "turn":  # a turn names its agent itself
                agent = getattr(data, "agent_name", None) or agent
            if kind not in MAPPED:
                self.nodes[sdk_span.span_id] = Node(None, agent, parent, kind)
                return
            name, attributes = self._opening(kind, data, agent)
            if kind == "agent":
                agent = data.name
            span = self.tracer.start_span(name, context=self._parent_context(parent), attributes=attributes)
            self.nodes[sdk_span.span_id] = Node(span, agent, parent, kind)
        except Exception:
            recording_failed("the start of an Agents SDK span")

    def on_span_end(self, sdk_span: Any) -> None:
        try:
            node = self.nodes.pop(sdk_span.span_id, None)
            if node is None:
                return
            if node.span is None:
                self._pass_error_up(node, sdk_span)
                return
            try:
                self._closing(node, sdk_span)
            finally:
                node.span.end()
        except Exception:
            recording_failed("the end of an Agents SDK span")

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass

    # --- mapping ---

    def _parent_context(self, parent: Node | None) -> otel_context.Context | None:
        """The current context when its span is in the SDK parent's trace (spans opened in between
        stay in place), else the SDK parent's span; the current context if there is no parent."""
        parent_span = parent.nearest_span() if parent is not None else None
        if parent_span is None:
            return None
        current = trace.get_current_span()
        if current.is_recording() and current.get_span_context().trace_id == parent_span.get_span_context().trace_id:
            return None
        return trace.set_span_in_context(parent_span)

    @staticmethod
    def _opening(kind: str, data: Any, agent: str | None) -> tuple[str, dict[str, Any]]:
        attributes: dict[str, Any] = {SDK_SPAN_TYPE: kind}
        if kind == "agent":
            attributes |= {
                semconv.OPERATION_NAME: semconv.INVOKE_AGENT,
                semconv.AGENT_NAME: data.name,
                semconv.GEN_AI_AGENT_NAME: data.name,
            }
            return f"{semconv.INVOKE_AGENT} {data.name}", attributes
        if agent is not None:
            attributes[semconv.AGENT_NAME] = agent
        if kind == "function":
            attributes |= {semconv.OPERATION_NAME: semconv.EXECUTE_TOOL, semconv.TOOL_NAME: data.name}
            return f"{semconv.EXECUTE_TOOL} {data.name}", attributes
        if kind == "handoff":
            attributes[semconv.OPERATION_NAME] = HANDOFF
            if data.from_agent:
                attributes[HANDOFF_FROM] = data.from_agent
            return f"{HANDOFF} {data.from_agent} -> {data.to_agent}", attributes
        if kind == "guardrail":
            attributes[semconv.OPERATION_NAME] = GUARDRAIL
            return f"{GUARDRAIL} {data.name}", attributes
        if kind == "mcp_tools":
            return f"mcp_list_tools {data.server}", attributes
        return str(data.name), attributes  # custom

    @staticmethod
    def _pass_error_up(node: Node, sdk_span: Any) -> None:
        error = getattr(sdk_span, "error", None)
        span = node.nearest_span() if error and node.kind in ERRORS_PASSED_UP else None
        if span is not None and span.is_recording():
            _record_error(span, error)

    @staticmethod
    def _closing(node: Node, sdk_span: Any) -> None:
        """What is known only at the end: tool arguments and result, the handoff's target, whether a
        guardrail tripped, the error."""
        data, span = sdk_span.span_data, node.span
        assert span is not None
        if node.kind == "function":
            if data.input is not None:
                span.set_attribute(semconv.TOOL_CALL_ARGUMENTS, _text(data.input))
            if data.output is not None:  # the SDK records it only with its sensitive data included
                span.set_attribute(
                    semconv.TOOL_CALL_RESULT, node.result if node.result is not None else _text(data.output)
                )
        elif node.kind == "handoff":
            if data.to_agent:
                span.set_attribute(HANDOFF_TO, data.to_agent)
            span.update_name(f"{HANDOFF} {data.from_agent} -> {data.to_agent}")
        elif node.kind == "guardrail":
            span.set_attribute(GUARDRAIL_TRIGGERED, bool(data.triggered))
        elif node.kind == "custom" and data.data:
            span.set_attribute(CUSTOM_DATA, _text(data.data))
        error = getattr(sdk_span, "error", None)
        if error:
            _record_error(span, error)


def _fail_if_raising(node: Node) -> None:
    """Fail a workflow span whose trace ends as an exception leaves it. The SDK records no error on
    its trace, and finishes it on the way out of a failed run (``Runner.run``'s ``with``, the
    streamed run's ``finally``, the user's ``with trace(...)``), so the exception on its way up is
    the one being handled now. Only an ``Exception``: cancellation is no failure (as the SDK keeps
    it off the agent's span); an error the SDK put on the run's task span stays."""
    error = sys.exception()
    if isinstance(error, Exception) and error is not node.handled and node.span is not None:
        _fail(node.span, f"{type(error).__name__}: {error}")


def _fail_if_past_max_turns(span: trace.Span, streamed: Any) -> None:
    """Fail the workflow span of a streamed run that went past its max turns. The SDK ends that
    trace normally and raises `MaxTurnsExceeded` to the consumer of ``stream_events()`` only
    afterwards, when ``RunResultStreaming._check_errors`` finds ``current_turn > max_turns`` and
    the run not handled; the same test is made here. A run whose ``error_handlers["max_turns"]``
    handler gave a final output succeeded (though its agent's span has the SDK's "Max turns
    exceeded"): the SDK then sets ``current_turn`` back to ``max_turns``, and marks it in the
    private ``_max_turns_handled``, read as a second guard only where it exists."""
    max_turns, turn = getattr(streamed, "max_turns", None), getattr(streamed, "current_turn", None)
    if not isinstance(max_turns, int) or not isinstance(turn, int) or turn <= max_turns:
        return
    if getattr(streamed, "_max_turns_handled", False) is not True:
        _fail(span, f"MaxTurnsExceeded: Max turns ({max_turns}) exceeded")


def _fail(span: trace.Span, description: str) -> None:
    """ERROR status, unless the span already has one (an error the SDK put on the run's task span)."""
    if getattr(getattr(span, "status", None), "status_code", None) is not StatusCode.ERROR:
        span.set_status(Status(StatusCode.ERROR, description))


def _record_error(span: trace.Span, error: Any) -> None:
    """An SDK span's error (``{"message": ..., "data": ...}``) as the span's status."""
    message = error.get("message") if isinstance(error, dict) else str(error)
    span.set_status(Status(StatusCode.ERROR, str(message)))
    if isinstance(error, dict) and error.get("data") is not None:
        span.set_attribute("agl.error.data", _text(error["data"]))
