"""agl instrumentation for the OpenAI Agents SDK (``openai-agents``): agents, tools, handoffs and
guardrails as OpenTelemetry spans, and one canonical LLM-call span per model call, with the
messages the model really saw.

Zero code: ``pip install 'agl-instrument-openai-agents[instruments]'`` and run the unchanged
program under ``opentelemetry-instrument python my_agent.py``; the entry point
``agl_openai_agents`` loads it. In code::

    from agl.instrument.openai_agents import OpenAIAgentsInstrumentor

    OpenAIAgentsInstrumentor().instrument()  # optional: tracer_provider=...

How, and why this way:

- Agents, tools, handoffs, guardrails: an Agents SDK tracing processor, *added* beside the user's
  (``agents.add_trace_processor``; the SDK's own exporter and any other processor keep working).
  The SDK calls processors synchronously when its spans start and end, so each becomes an
  OpenTelemetry span at the same moments: the SDK's trace is ``invoke_workflow {name}``, an agent
  ``invoke_agent {name}`` (``agl.agent.name`` and ``gen_ai.agent.name``), a function tool
  ``execute_tool {name}`` (``gen_ai.tool.name``, ``.call.id``, ``.call.arguments`` as JSON text,
  ``.call.result``), a handoff ``handoff {from} -> {to}``, a guardrail ``guardrail {name}``
  (``agl.guardrail.triggered``), a custom span under its own name. A run that raises
  (``MaxTurnsExceeded``, a guardrail's tripwire, a model error) fails its workflow span as well as
  its agent's: the SDK records no error on its trace, so the exception leaving the trace's ``with``
  (``Runner.run``'s, a streamed run's, the user's ``with trace(...)``) is recorded there. A
  streamed run past its max turns is the SDK's exception: it ends that trace normally and raises
  to the consumer only afterwards, so ``AgentRunner.run_streamed`` is wrapped to find the run's
  result when its trace ends and fail the span as the consumer will be failed (not when an
  ``error_handlers["max_turns"]`` handler gave a final output).
- Parentage: a processor only hears about spans; it cannot make them current. So the SDK's
  ``SpanImpl.start``/``finish`` and ``TraceImpl.start``/``finish`` are wrapped: when the SDK makes
  its span current (in the caller's context), the matching OpenTelemetry span becomes current in
  that same context, and stops being current when the SDK resets its own. Spans opened inside a
  tool body (``emit_reward``, an openai call, a nested agent run) therefore nest under the tool's
  span, and the model's span under its agent's.
- The LLM span: the SDK's own ``generation``/``response`` spans arrive after the fact and only
  for OpenAI's models, so they are not mapped. Instead the ``Model`` boundary is hooked:
  ``get_response`` and ``stream_response`` of every ``Model`` subclass (existing ones, and later
  ones through a ``Model.__init_subclass__`` hook) run inside `agl.core.tracing.llm_call`, so a
  custom or fake model gets its span too. It records the input in the chat format
  (``system_instructions`` as a system message, then the input items rendered by the SDK's own
  chat-completions converter), the tools and handoffs as chat tool definitions, the sampling
  settings, the output as chat assistant messages, usage and response id, and the enclosing
  agent's name. An item with no chat form (a hosted tool's call such as ``web_search_call``, an
  ``item_reference``) is kept as the item it is, in its place. A stream that ends without
  ``response.completed`` (a ``response.failed``, ``response.incomplete`` or ``error`` event, or
  none) is a failed call, as the SDK treats it: status ERROR, with what it produced. When the
  model is the SDK's OpenAI model and ``agl_openai`` is on, the openai call underneath *joins* this
  span ("outermost wins"): one span per physical call, and since this layer
  records its request and response only where the wire layer left them unset, the messages and
  token ids are exactly what went over the wire.

Patching is lazy (post-import hooks): ``instrument()`` imports nothing and may come before or
after ``import agents``. ``instrument()`` twice is a no-op; ``uninstrument()`` removes the
processor, the subclass hook and every patch. Recording never raises into the agent: a failure is
logged (logger ``agl.instrument.openai_agents``) and the run goes on.

Settings:

- ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=agl_openai_agents``: leave the SDK alone under
  ``opentelemetry-instrument``.
- The SDK's own switches apply: ``OPENAI_AGENTS_DISABLE_TRACING=1`` (or ``set_tracing_disabled(
  True)``, ``RunConfig(tracing_disabled=True)``) stops its spans, and with them our agent, tool,
  handoff and guardrail spans: only the LLM spans remain, each a root span still naming its agent.
  To stop only the upload to OpenAI and keep agl's whole record, replace the SDK's processors
  instead (``set_trace_processors([])`` or your own list): agl keeps recording without being in
  that list. ``OPENAI_AGENTS_TRACE_INCLUDE_SENSITIVE_DATA=0`` leaves tool arguments and results
  out. The SDK's default exporter uploads traces to OpenAI only when an OpenAI API key is set
  (``OPENAI_API_KEY`` or ``set_tracing_export_api_key``); without one it logs a warning and sends
  nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from agl.instrument.openai_agents import _wrappers
from agl.instrument.openai_agents.package import _instruments
from agl.instrument.openai_agents.version import __version__

__all__ = ["OpenAIAgentsInstrumentor", "__version__"]

logger = logging.getLogger(__name__)


class OpenAIAgentsInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instruments the OpenAI Agents SDK; see the module's documentation."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        """Never raises: under ``opentelemetry-instrument`` one raising instrumentor stops the rest."""
        try:
            _wrappers.activate(trace.get_tracer(__name__, __version__, kwargs.get("tracer_provider")))
        except Exception:
            logger.exception("agl could not instrument the OpenAI Agents SDK")

    def _uninstrument(self, **kwargs: Any) -> None:
        _wrappers.deactivate()
