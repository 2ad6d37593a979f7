"""agl instrumentation for AutoGen AgentChat (``autogen-agentchat``/``autogen-core`` >= 0.7.5):
agent turns, team runs, tool calls and one canonical LLM-call span per model call.

Zero code: ``pip install 'agl-instrument-autogen[instruments]'`` and run the unchanged program
under ``opentelemetry-instrument python my_agent.py``; the entry point ``agl_autogen`` loads it.
In code::

    from agl.instrument.autogen import AutoGenInstrumentor

    AutoGenInstrumentor().instrument()  # optional: tracer_provider=...

What is recorded:

- ``invoke_workflow {team}`` around ``BaseGroupChat.run_stream`` (``run`` goes through it). The
  team's own model calls (a selector picking the next speaker) carry the team's name as
  ``agl.agent.name``, not that of an agent whose turn runs the team (``SocietyOfMindAgent``).
- ``invoke_agent {agent}`` around each turn of an agent (``on_messages``/``on_messages_stream`` of
  every ``BaseChatAgent`` subclass, custom ones included), with ``agl.agent.name`` and
  ``gen_ai.agent.name``. Where AutoGen opened its own ``invoke_agent`` span for the same agent
  (its ``run`` and team containers do, when a global tracer provider is set), that span is
  labelled with ``agl.agent.name`` instead of being doubled.
- ``chat {model}`` (``agl.llm.call=true``, see `agl.core.tracing.llm`) around ``create`` and
  ``create_stream`` of every ``ChatCompletionClient`` (OpenAI, replay, custom; a
  ``ChatCompletionCache`` is recorded as the model and provider it wraps; Azure OpenAI's provider
  is ``azure.ai.openai``), with the messages in
  the OpenAI chat shape, the tools, sampling parameters, the output message, the finish reason in
  OpenAI's words (``tool_calls``), the usage (left out where AutoGen reports 0 and 0: a stream
  that came without usage) and ``agl.agent.name`` of the agent whose turn it is. A call the cache
  answered sent no request: it is marked ``agl.llm.cached=true`` and has no usage; it stays an
  LLM call, since the agent acted on that reply (a trainer may leave it out as off-policy).
  When the ``openai`` client underneath is instrumented too (``agl_openai``), it joins this span
  ("outermost wins") and adds what only the wire knows: the messages exactly as sent, token ids,
  logprobs, the response id. A stream closed early or failing midway keeps the text it streamed
  as its output message.
- ``execute_tool {tool}`` around ``BaseTool.run_json`` and ``BaseStreamTool.run_json_stream`` (an
  agent or a team as a tool: ``AgentTool``, ``TeamTool``; AutoGen's own tool span for that call is
  this one, not a second), and around autogen-ext's ``McpWorkbench.call_tool`` (an MCP server's
  tools), with ``gen_ai.tool.name``, ``gen_ai.tool.call.id``, ``gen_ai.tool.call.arguments``
  (JSON) and ``gen_ai.tool.call.result`` (for MCP, the text the model gets; an error result marks
  the span failed). A sync tool function runs
  in AutoGen's thread pool with the caller's context, so spans opened inside it (an LLM call, an
  ``emit_reward``) are children of the tool span and belong to the rollout.

Patching is lazy (post-import hooks): ``instrument()`` imports nothing and may come before or
after ``import autogen_agentchat``. ``instrument()`` twice is a no-op; ``uninstrument()`` puts every
original back. Recording never raises into the agent: a failure is logged (logger
``agl.instrument.autogen``) and the call goes on.

Settings: ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=agl_autogen`` leaves AutoGen alone under
``opentelemetry-instrument``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from agl.instrument.autogen import _wrappers
from agl.instrument.autogen.package import _instruments
from agl.instrument.autogen.version import __version__

__all__ = ["AutoGenInstrumentor", "__version__"]

logger = logging.getLogger(__name__)


class AutoGenInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instruments AutoGen AgentChat; see the module's documentation."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        """Never raises: under ``opentelemetry-instrument`` one raising instrumentor stops the rest."""
        try:
            _wrappers.activate(trace.get_tracer(__name__, __version__, kwargs.get("tracer_provider")))
        except Exception:
            logger.exception("agl could not instrument AutoGen")

    def _uninstrument(self, **kwargs: Any) -> None:
        _wrappers.deactivate()
