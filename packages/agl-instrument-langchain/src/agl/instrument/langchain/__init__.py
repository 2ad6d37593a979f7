"""agl instrumentation for LangChain and LangGraph: agent, tool, retriever, chain and workflow
spans, and one canonical LLM-call span per model call, whatever the model (``ChatOpenAI``, another
provider, a custom or fake ``BaseChatModel``).

Zero code: ``pip install 'agl-instrument-langchain[instruments]'`` and run the unchanged program
under ``opentelemetry-instrument python my_agent.py``; the entry point ``agl_langchain`` loads it.
In code::

    from agl.instrument.langchain import LangChainInstrumentor

    LangChainInstrumentor().instrument()  # optional: tracer_provider=...

What is instrumented (patching is lazy: each class is patched when its module is imported, so
``instrument()`` imports nothing and may come before or after ``import langchain_core``;
``instrument()`` twice is a no-op; ``uninstrument()`` puts every original back):

- Chat models, at LangChain's own model-call boundary (``BaseChatModel._generate_with_cache``,
  ``_agenerate_with_cache``, ``stream``, ``astream``): the span ``chat {model}`` of
  `agl.core.tracing.llm` with the messages the model saw in OpenAI chat format, tool definitions,
  sampling parameters, the reply messages (tool calls included), finish reasons and usage, and
  ``agl.agent.name`` of the enclosing agent. The span is current while the model runs, so the
  openai instrumentor (``agl_openai``) under ``ChatOpenAI`` joins it ("outermost wins") and adds
  what only the wire knows: exact token ids, logprobs, the response id.
- Tools (``BaseTool.run``/``arun``): ``execute_tool {tool}`` with ``gen_ai.tool.name``,
  ``gen_ai.tool.call.id``, ``gen_ai.tool.call.arguments`` (JSON, the model's: arguments LangGraph
  injects, such as the graph's state or a ``ToolRuntime``, left out as in LangChain's callbacks)
  and ``gen_ai.tool.call.result``. An error the tool handles itself (``handle_tool_error``,
  ``handle_validation_error``) fails its span, with or without a tool-call id.
- Retrievers (``BaseRetriever.invoke``/``ainvoke``): ``retrieve {name}`` with the query and the
  documents (``agl.operation.input``/``output``).
- Chains (``RunnableSequence``, what ``a | b`` builds: ``invoke``/``ainvoke``, ``transform``/
  ``atransform``, which ``stream``/``astream`` run, ``batch``/``abatch``): ``chain {name}``, one
  tree however the chain is run. A batch gets a span per input, with the spans of that input's
  steps under it (found by LangChain's run ids, as the steps run batched in LangChain's threads;
  work nested inside another step, a lambda's model call, stays under the caller).
- LangGraph graphs (``Pregel.invoke``/``ainvoke``/``stream``/``astream``; an ``invoke``'s own
  stream makes no second span): ``invoke_workflow {graph name}``; each node run: ``invoke_agent {agent}`` with
  ``agl.agent.name``/``gen_ai.agent.name``. The agent is the node's name, except for the model
  node of an agent made by ``create_react_agent``/``create_agent`` in a graph given a ``name``,
  whose agent is that name. LangGraph's own nodes (``__start__``…) and tool nodes get no agent
  span; their tools get their own spans. A node with a ``RetryPolicy`` gets an agent span per
  attempt, numbered (``langgraph.node.attempt``, from 1), a failed attempt's in error: the model
  calls of an attempt whose output LangGraph threw away sit under a failed span.

Parentage holds across LangGraph's executor threads, LangChain's ``run_in_executor`` and asyncio
tasks: spans are current around the work they cover, and streams make theirs current around each
step only. A stream (a model's or a graph's, sync or async) ends its span when it is exhausted,
fails, is closed (``aclose`` also closes LangChain's own stream) or is dropped midway, a model's
with the reply streamed so far; async streams are not async generators, so the event loop's
shutdown closes only LangChain's, as without agl. LangGraph's control flow (an ``interrupt``, a
``Command`` for the parent graph) is no failure: its spans end without an error status.
Recording never raises into the caller: a failure is logged (logger
``agl.instrument.langchain``) and the call goes on; the caller's own exceptions are recorded on
the span and reach it unchanged.

Settings: ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=agl_langchain`` leaves LangChain alone under
``opentelemetry-instrument``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from agl.instrument.langchain import _wrappers
from agl.instrument.langchain.package import _instruments
from agl.instrument.langchain.version import __version__

__all__ = ["LangChainInstrumentor", "__version__"]

logger = logging.getLogger(__name__)


class LangChainInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instruments LangChain and LangGraph; see the module's documentation."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        """Never raises: under ``opentelemetry-instrument`` one raising instrumentor stops the rest."""
        try:
            _wrappers.activate(trace.get_tracer(__name__, __version__, kwargs.get("tracer_provider")))
        except Exception:
            logger.exception("agl could not instrument langchain")

    def _uninstrument(self, **kwargs: Any) -> None:
        _wrappers.deactivate()
