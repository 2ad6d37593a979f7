"""agl instrumentation for the ``openai`` client: one canonical LLM-call span per model call,
with the exact token ids and logprobs when the server returns them (vLLM does, when asked).

Zero code: ``pip install 'agl-instrument-openai[instruments]'`` and run the unchanged program
under ``opentelemetry-instrument python my_agent.py``; the entry point ``agl_openai`` loads it.
In code::

    from agl.instrument.openai import OpenAIInstrumentor

    OpenAIInstrumentor().instrument()  # optional: tracer_provider=..., capture_token_ids=True

What is instrumented: ``chat.completions.create`` and ``.parse`` (and ``.stream()``, which calls
``create``), ``responses.create`` and ``.parse`` (and ``.stream()``), sync and async, streaming or
not, through ``with_raw_response``/``with_streaming_response`` too. Patching is lazy: the classes
are patched when openai's modules are imported, so ``instrument()`` imports nothing and may come
before or after ``import openai``. ``instrument()`` twice is a no-op; ``uninstrument()`` puts
every original method back.

What each call records, on the span ``chat {model}`` (``agl.llm.call=true``,
``gen_ai.provider.name`` ``openai``, or ``azure.ai.openai`` for Azure's clients; see
`agl.core.tracing.llm`, whose "outermost wins" rule makes a framework's own LLM span, when one is
open, the one that is enriched instead of opening a second):

- ``gen_ai.input.messages``: the messages as sent (JSON); for the responses API, a system message
  holding ``instructions``, then the input items in the same chat shape (function calls as an
  assistant message's ``tool_calls``, their outputs as ``tool`` messages, reasoning as the next
  assistant message's ``reasoning_content``; items with no chat form, such as built-in tools'
  calls and ``item_reference``, as given), so a Responses call records what the equivalent chat
  call does.
- ``gen_ai.tool.definitions`` (a Responses function tool in the chat form, built-in tools as
  given), ``gen_ai.request.{temperature, top_p, top_k, max_tokens, seed,
  stop_sequences, frequency_penalty, presence_penalty, choice.count}``.
- ``gen_ai.output.messages``: one assistant message per choice in the chat shape (``content``,
  ``tool_calls``, ``refusal`` when the model refuses, and ``reasoning_content`` when the server
  sends one: for the responses API, the reasoning items' text, else their summaries); streams are
  put together from their deltas, and a responses stream closed early from the output items done
  so far. A response cut short (``incomplete``) gives its reason as the finish reason.
- ``gen_ai.response.{id, model, finish_reasons}``, ``gen_ai.usage.{input_tokens, output_tokens}``.
- ``agl.llm.prompt_token_ids``, ``agl.llm.response_token_ids`` (the first choice's),
  ``agl.llm.response_logprobs``: when the server returns them. vLLM's OpenAI server does when the
  request carries ``"return_token_ids": true``: ``prompt_token_ids`` on the chat completion (on
  the first chunk of a stream) and ``token_ids`` on each choice (each chunk's own, in a stream).
- Errors: the exception and an ERROR status; the exception itself reaches the caller unchanged.
  A reply the Responses API reports failed (status ``failed``, a stream's ``response.failed`` or
  ``error`` event), which the client returns rather than raises, is an ERROR status too.

A stream's span ends when the stream is exhausted, fails, is closed, or is dropped unfinished;
leaving the context manager of ``.stream()`` or of ``with_streaming_response`` closes it.
Recording never raises into the caller: a failure to record is logged (logger
``agl.instrument.openai``) and the call goes on.

Settings:

- ``AGL_CAPTURE_TOKEN_IDS=1`` (or ``instrument(capture_token_ids=True)``): add
  ``extra_body={"return_token_ids": true}`` (and ``logprobs=true`` unless the caller set
  ``logprobs``) to every chat completion request, so a vLLM server returns token ids. Only for
  servers that accept the field; requests of Azure's clients and to ``api.openai.com``, which
  refuse unknown fields, are sent as they are.
- ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=agl_openai``: leave the openai client alone under
  ``opentelemetry-instrument``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from agl.instrument.openai import _wrappers
from agl.instrument.openai.package import _instruments
from agl.instrument.openai.version import __version__

__all__ = ["CAPTURE_TOKEN_IDS_ENV", "OpenAIInstrumentor", "__version__"]

CAPTURE_TOKEN_IDS_ENV = "AGL_CAPTURE_TOKEN_IDS"

logger = logging.getLogger(__name__)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class OpenAIInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instruments the openai client; see the module's documentation."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        """Never raises: under ``opentelemetry-instrument`` one raising instrumentor stops the rest."""
        try:
            capture = kwargs.get("capture_token_ids")
            tracer = trace.get_tracer(__name__, __version__, kwargs.get("tracer_provider"))
            _wrappers.activate(tracer, _env_flag(CAPTURE_TOKEN_IDS_ENV) if capture is None else bool(capture))
        except Exception:
            logger.exception("agl could not instrument openai")

    def _uninstrument(self, **kwargs: Any) -> None:
        _wrappers.deactivate()
