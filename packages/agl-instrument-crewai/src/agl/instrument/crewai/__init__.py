"""agl instrumentation for CrewAI: one span per crew run, flow run, flow method, task, agent turn
and tool call, and one canonical LLM-call span per model call, attributed to the agent (its
``role``) that made it.

Zero code: ``pip install 'agl-instrument-crewai[instruments]'`` and run the unchanged program
under ``opentelemetry-instrument python my_crew.py``; the entry point ``agl_crewai`` loads it.
In code::

    from agl.instrument.crewai import CrewAIInstrumentor

    CrewAIInstrumentor().instrument()  # optional: tracer_provider=...

What is instrumented, and the span each call opens:

- ``Crew.kickoff``/``akickoff`` (``kickoff_async`` and ``kickoff_for_each`` go through them):
  ``invoke_workflow {crew name}``, with ``crewai.crew.inputs`` and ``crewai.crew.output``. A
  streaming crew (``stream=True``) has its one span from the run its iteration starts.
- Flows (``crewai.flow.flow.Flow``): ``kickoff_async`` (``kickoff`` and ``akickoff`` go through
  it) opens ``invoke_workflow {flow's name, else its class name}``, with ``crewai.flow.inputs``,
  ``crewai.flow.output`` and the state id the run ended with, ``crewai.flow.id`` (``Flow.flow_id``,
  as CrewAI's own tracing names it); ``resume``/``resume_async`` after a pause for human feedback open it too,
  with ``crewai.flow.feedback``. Each executed ``@start``/``@listen``/``@router`` method has its
  span ``flow_method {method}`` under it (``gen_ai.operation.name=flow_method``,
  ``crewai.flow.method``; a text result as ``crewai.flow.method.output``; a router's
  ``crewai.flow.route``), and the crews, agents, model calls and ``Flow.ask`` calls it runs are
  under that span (each ``ask`` a ``flow_ask`` span, ``gen_ai.operation.name=flow_ask``, with
  ``crewai.flow.ask.message`` and the reply, if any, as ``crewai.flow.ask.response``),
  concurrent listeners and sync methods (run by CrewAI in threads) included. A raising method
  fails its span and the flow's; a pause for human feedback and a listener cancelled because
  another won its ``or_`` race are not failures: ``crewai.flow.stopped`` = ``paused`` or
  ``cancelled``. CrewAI's own internal flows (each agent's ``AgentExecutor``, memory's) get no
  flow spans: their steps are the agent's.
- ``Task`` execution, sync, async or in its own thread: ``task {task name, else the first line of
  its description, shortened to 48 characters}``, ``gen_ai.operation.name=task``, with the
  description, expected output, the agent's role (``crewai.task.agent``) and the output.
- ``Agent.execute_task``/``aexecute_task`` and standalone ``Agent.kickoff``/``kickoff_async``/
  ``akickoff`` (``kickoff`` inside a running event loop returns a coroutine, whose span it is):
  ``invoke_agent {role}``, with ``gen_ai.operation.name=invoke_agent`` and ``agl.agent.name`` =
  ``gen_ai.agent.name`` = the role. When a try at a task fails and CrewAI runs it again
  (``max_retry_limit``), each try is a span of its own under the same parent, numbered
  (``crewai.agent.attempt``, from 1; absent on an agent's only try), the failed one ended in error
  where CrewAI decided to retry: the model calls of a try whose work CrewAI threw away are not
  mixed with the retry's.
- Tools, by CrewAI's text format (``CrewStructuredTool.invoke``) or native function calling
  (``BaseTool.run``): ``execute_tool {tool}``, with ``gen_ai.tool.name``,
  ``gen_ai.tool.call.arguments`` (JSON) and ``gen_ai.tool.call.result``. A function of
  ``available_functions`` that a provider runs inside the model call (CrewAI's reasoning step)
  gets its span under the model call's, and the call's recorded reply is that tool call, not the
  function's result that ``call`` returns. A tool span carries no agent name of its own: it sits
  under the span of the agent that ran it (a coworker's, for work delegated to it, under the
  coworker's ``invoke_agent`` span), whose name the adapters find.
- Every model call, at the ``BaseLLM`` boundary: the ``call``/``acall`` of each ``BaseLLM``
  subclass, CrewAI's own providers and yours alike (subclasses defined after instrumenting are
  wrapped as they are defined). The span is `agl.core.tracing.llm`'s ``chat {model}``
  (``agl.llm.call=true``, ``agl.agent.name`` = the calling agent's role) with the messages in the
  chat shape, the tool definitions, the LLM's sampling parameters, the reply (text, or native
  tool calls) and what the provider reports at the call's end: token usage (as CrewAI counts it),
  finish reason and response id. When the model is reached through the openai client and
  ``agl_openai`` is on too, the client joins this span ("outermost wins"): what went over the wire
  (messages as sent, reply, usage, token ids) is what the span holds, and this layer fills in
  only what is missing.

Patching is lazy: classes are patched when CrewAI's modules are imported, so ``instrument()``
imports nothing and may come before or after ``import crewai``. ``instrument()`` twice is a
no-op; ``uninstrument()`` puts every original method back. Recording never raises into the
caller: a failure to record is logged (logger ``agl.instrument.crewai``) and the call goes on.

Settings:

- ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=agl_crewai``: leave CrewAI alone under
  ``opentelemetry-instrument`` (``crewai`` is OpenInference's instrumentor, if installed).
- CrewAI's own telemetry is separate: ``CREWAI_DISABLE_TELEMETRY=true`` turns it off. Do not use
  ``OTEL_SDK_DISABLED`` for that: it turns off every OpenTelemetry SDK tracer, agl's included.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from agl.instrument.crewai import _wrappers
from agl.instrument.crewai.package import _instruments
from agl.instrument.crewai.version import __version__

__all__ = ["CrewAIInstrumentor", "__version__"]

logger = logging.getLogger(__name__)


class CrewAIInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instruments CrewAI; see the module's documentation."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        """Never raises: under ``opentelemetry-instrument`` one raising instrumentor stops the rest."""
        try:
            _wrappers.activate(trace.get_tracer(__name__, __version__, kwargs.get("tracer_provider")))
        except Exception:
            logger.exception("agl could not instrument CrewAI")

    def _uninstrument(self, **kwargs: Any) -> None:
        _wrappers.deactivate()
