"""The canonical LLM-call span, shared by every instrumentor: one span per physical model call.

"Outermost wins": when a framework's model call (a LangChain chat model, say) already opened the
LLM span and the openai client underneath makes the actual request, the inner layer joins that
span instead of opening a second one. It may add what the outer layer could not know (the exact
messages sent if none were recorded, token ids, logprobs, usage, the response id) and leaves the
rest as the outer layer wrote it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from agl.core.tracing import semconv
from agl.core.tracing.jsontext import json_text

TRACER_NAME = "agl"
# What only the wire knows: the layer that makes the request always records these.
_FROM_THE_WIRE = frozenset(
    {
        semconv.PROMPT_TOKEN_IDS,
        semconv.RESPONSE_TOKEN_IDS,
        semconv.RESPONSE_LOGPROBS,
        semconv.RESPONSE_ID,
        semconv.USAGE_INPUT_TOKENS,
        semconv.USAGE_OUTPUT_TOKENS,
        semconv.USAGE_CACHE_READ_INPUT_TOKENS,
        semconv.USAGE_REASONING_OUTPUT_TOKENS,
        semconv.SERVER_ADDRESS,
        semconv.SERVER_PORT,
    }
)
# The conventions' ``error.type`` of a failure that names no type of its own.
OTHER_ERROR = "_OTHER"


_OPEN_CALL = otel_context.create_key("agl-llm-call")
_tracer_for: tuple[object, trace.Tracer] | None = None


def agl_tracer() -> trace.Tracer:
    """agl's tracer from the global provider, built once per provider (the SDK builds a new one on
    every ``get_tracer`` call, a cost paid on each model call otherwise)."""
    global _tracer_for
    provider = trace.get_tracer_provider()
    cached = _tracer_for
    if cached is None or cached[0] is not provider:
        cached = _tracer_for = (provider, provider.get_tracer(TRACER_NAME))
    return cached[1]


def open_llm_span() -> Span | None:
    """The LLM-call span this code runs under, if one is open: the one its owner made current (found
    through a context key, so even with other projects' spans opened in between), else a current
    span marked as an LLM call."""
    owned = otel_context.get_value(_OPEN_CALL)
    if isinstance(owned, Span) and owned.is_recording():
        return owned
    span = trace.get_current_span()
    attributes = getattr(span, "attributes", None)
    if span.is_recording() and attributes and attributes.get(semconv.LLM_CALL):
        return span
    return None


class LlmCall:
    """One model call's span; ``owner`` says whether this layer opened it (and must end it)."""

    def __init__(self, span: Span, owner: bool) -> None:
        self.span = span
        self.owner = owner

    def record(self, attributes: Mapping[str, Any]) -> None:
        """Set attributes (None values skipped; lists of dicts stored as JSON). A layer that joined
        another's span only fills in what is missing, plus what only the wire knows."""
        # The keys as a set: a miss in the SDK's attribute mapping raises and catches a KeyError.
        present = set() if self.owner else set(getattr(self.span, "attributes", None) or ())
        self.span.set_attributes(
            {
                key: _attribute_value(value)
                for key, value in attributes.items()
                if value is not None and (key not in present or key in _FROM_THE_WIRE)
            }
        )

    def fill(self, attributes: Mapping[str, Any]) -> None:
        """Set only what no layer has set yet: for a framework's layer above the openai client,
        whose instrumentor saw the wire and recorded the messages exactly as they were sent."""
        # The dict's keys meet the span's in C (a miss in the SDK's attribute mapping raises and
        # catches a KeyError); mostly none is shared, and the attributes go as they are.
        present = attributes.keys() & (getattr(self.span, "attributes", None) or ())
        self.record({key: value for key, value in attributes.items() if key not in present} if present else attributes)

    def record_request(
        self,
        messages: Sequence[Any] | None,
        *,
        tools: Sequence[Any] | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        self.record(
            {
                semconv.INPUT_MESSAGES: list(messages) if messages is not None else None,
                semconv.TOOL_DEFINITIONS: list(tools) if tools else None,
                **{semconv.REQUEST_PREFIX + name: value for name, value in (parameters or {}).items()},
            }
        )

    def record_response(
        self,
        messages: Sequence[Any] | None,
        *,
        model: str | None = None,
        response_id: str | None = None,
        finish_reasons: Sequence[str] | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cache_read_input_tokens: int | None = None,
        reasoning_output_tokens: int | None = None,
    ) -> None:
        """The reply; the cached and reasoning counts are parts of ``input_tokens`` and
        ``output_tokens``, as the conventions (and OpenAI's usage) count them."""
        self.record(
            {
                semconv.OUTPUT_MESSAGES: list(messages) if messages is not None else None,
                semconv.RESPONSE_MODEL: model,
                semconv.RESPONSE_ID: response_id,
                semconv.FINISH_REASONS: list(finish_reasons) if finish_reasons else None,
                semconv.USAGE_INPUT_TOKENS: input_tokens,
                semconv.USAGE_OUTPUT_TOKENS: output_tokens,
                semconv.USAGE_CACHE_READ_INPUT_TOKENS: cache_read_input_tokens,
                semconv.USAGE_REASONING_OUTPUT_TOKENS: reasoning_output_tokens,
            }
        )

    def record_token_ids(
        self,
        prompt_token_ids: Sequence[int] | None,
        response_token_ids: Sequence[int] | None,
        response_logprobs: Sequence[float] | None = None,
    ) -> None:
        self.record(
            {
                semconv.PROMPT_TOKEN_IDS: list(prompt_token_ids) if prompt_token_ids else None,
                semconv.RESPONSE_TOKEN_IDS: list(response_token_ids) if response_token_ids else None,
                semconv.RESPONSE_LOGPROBS: list(response_logprobs) if response_logprobs else None,
            }
        )

    def context(self, base: otel_context.Context | None = None) -> otel_context.Context:
        """The context to make current while the model call runs: the span, marked as the open LLM
        call so every layer below joins it. A joining layer gets ``base`` (or the current one) back."""
        base = base if base is not None else otel_context.get_current()
        if not self.owner:
            return base
        return otel_context.set_value(_OPEN_CALL, self.span, trace.set_span_in_context(self.span, base))

    def fail(self, why: str, error_type: str = OTHER_ERROR) -> None:
        """Mark the call failed where no exception says so: a reply the API itself reports failed
        (a Responses stream's ``response.failed`` or ``error`` event), which the client returns
        rather than raises. ``error_type`` is the provider's error code where it gives one (the
        conventions' ``error.type``). Only the owner marks it, as in `end`."""
        if self.owner:
            self.span.set_status(Status(StatusCode.ERROR, why))
            self.span.set_attribute(semconv.ERROR_TYPE, error_type)

    def end(self, error: BaseException | None = None) -> None:
        """End the span if this layer opened it. An error is recorded either way, but only the
        owner marks the span failed: the layer above may retry and succeed."""
        if error is not None:
            self.span.record_exception(error)
            if self.owner:
                self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
                self.span.set_attribute(semconv.ERROR_TYPE, exception_type(error))
        if self.owner:
            self.span.end()


def exception_type(error: BaseException) -> str:
    """An exception's class as the conventions' ``error.type`` wants it, fully qualified, and named
    as the SDK names the span's ``exception.type`` (builtins bare: ``TimeoutError``)."""
    kind = type(error)
    module = kind.__module__
    return f"{module}.{kind.__qualname__}" if module and module != "builtins" else kind.__qualname__


def start_llm_call(
    model: str,
    *,
    provider: str | None = None,
    agent_name: str | None = None,
    tracer: trace.Tracer | None = None,
    server: Mapping[str, Any] | None = None,
) -> LlmCall:
    """Join the open LLM span or start one ("chat {model}", not made current); call `LlmCall.end`.
    ``server``: ``server.address`` and ``server.port``, which the conventions want at the span's
    start (samplers decide on them); a joining layer records them, as only the wire knows them.

    For streams, whose span outlives the call that started it. Use `llm_call` otherwise."""
    joined = open_llm_span()
    if joined is not None:
        call = LlmCall(joined, owner=False)
        if server:
            call.record(server)
        return call
    tracer = tracer or agl_tracer()
    attributes: dict[str, Any] = {semconv.LLM_CALL: True, semconv.OPERATION_NAME: "chat", semconv.REQUEST_MODEL: model}
    if server:
        attributes.update(server)
    if provider:
        attributes[semconv.PROVIDER_NAME] = provider
    if agent_name:
        attributes[semconv.AGENT_NAME] = agent_name
    span = tracer.start_span(f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes)
    return LlmCall(span, owner=True)


@contextmanager
def llm_call(
    model: str, *, provider: str | None = None, agent_name: str | None = None, tracer: trace.Tracer | None = None
) -> Iterator[LlmCall]:
    """The LLM-call span around a block, current inside it (so a layer below joins it)."""
    call = start_llm_call(model, provider=provider, agent_name=agent_name, tracer=tracer)
    token = otel_context.attach(call.context()) if call.owner else None
    try:
        yield call
    except BaseException as error:
        call.end(error)
        raise
    else:
        call.end()
    finally:
        if token is not None:
            otel_context.detach(token)


_SCALARS = (str, bool, int, float)


def _attribute_value(value: Any) -> Any:
    """OpenTelemetry holds scalars and lists of one scalar type; anything richer is stored as JSON text."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, list | tuple):
        if not value:
            return []
        kind = type(value[0])
        if kind in _SCALARS and all(type(v) is kind for v in value):  # one cheap pass: lists of token ids are long
            return list(value)
    return json_text(value)
