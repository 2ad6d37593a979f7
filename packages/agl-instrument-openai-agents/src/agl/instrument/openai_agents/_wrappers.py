"""The patches, listed once in `PATCHER` (applied by `activate`, removed by `deactivate`), the
`Model` boundary that records the canonical LLM span, and the registration of the processor.

- ``SpanImpl.start``/``finish`` and ``TraceImpl.start``/``finish``: when the SDK makes one of its
  spans (or traces) current, the matching OpenTelemetry span becomes current too, in the same
  context, and stops being current when the SDK resets it. So spans opened inside a tool body, a
  guardrail or a handoff callback (``emit_reward``, an openai call, a nested agent) nest under the
  right span.
- ``ReattachedTrace.start``/``finish``: the trace of a run resumed in its own process (after a tool
  approval), which the SDK never reports to processors, gets its workflow span here.
- ``AgentRunner.run_streamed``: the result of a streamed run, noted for the trace it owns, so the
  workflow span of a run past its max turns is failed when that trace ends (the SDK raises only
  later, to the consumer of ``stream_events()``).
- ``ToolContext.from_agent_context``: made inside the SDK's function span; gives the tool call id.
- ``ItemHelpers.tool_call_output_item``: the SDK's conversion of a tool's result into what the
  model gets, made inside the function span; the span records the result as converted.
- every `Model` subclass's ``get_response`` and ``stream_response`` (those defined before
  instrumenting, found through ``__subclasses__``, and later ones, through a
  ``Model.__init_subclass__`` hook): one `llm_call` per physical call.

Every wrapper keeps the user's call intact: recording errors are logged and swallowed, the
user's own exceptions pass through unchanged (and are recorded on the span).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from agl.core.tracing import semconv
from agl.core.tracing.jsontext import json_text
from agl.core.tracing.llm import LlmCall, start_llm_call
from agl.core.tracing.patching import FamilyPatch, Patch, Patcher
from agl.instrument.openai_agents._processor import AglTracingProcessor, Node, logger, recording_failed

UNKNOWN_MODEL = "unknown"


@dataclass
class _Config:
    active: bool = False
    tracer: trace.Tracer | None = None
    processor: AglTracingProcessor | None = None


_config = _Config()
_current_call: contextvars.ContextVar[LlmCall | None] = contextvars.ContextVar("agl_openai_agents_call", default=None)


@functools.cache
def _scope() -> Any:
    """The SDK's `Scope`, imported on first use (this module imports nothing of the SDK): an import
    statement in a function costs ~8 k instructions on every call, and seven ran per agent run."""
    from agents.tracing.scope import Scope

    return Scope


@functools.cache
def _converter() -> Any:
    """The SDK's chat-completions `Converter`, imported on first use (see `_scope`)."""
    from agents.models.chatcmpl_converter import Converter

    return Converter


@functools.cache
def _reply_types() -> tuple[type, type]:
    """openai's output message and function call classes, imported on first use (see `_scope`)."""
    from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage

    return ResponseOutputMessage, ResponseFunctionToolCall


def _nodes() -> dict[str, Node]:
    processor = _config.processor
    return processor.nodes if processor is not None else {}


# --- OpenTelemetry context follows the SDK's current span ---------------------------------------


def _sdk_delivers(instance: Any) -> bool:
    """Whether the SDK hands this span's events to our processor itself. It may not: OpenInference's
    instrumentor replaces every registered processor with its own by default, and a user may call
    ``set_trace_processors``; the start and finish hooks then deliver them, so agl keeps recording."""
    registered = getattr(getattr(instance, "_processor", None), "_processors", None)
    if registered is None:
        return True
    seen, delivers = _delivery
    if registered is not seen:  # the SDK replaces the tuple when its processors change
        delivers = any(p is _config.processor for p in registered)
        _delivery[:] = [registered, delivers]
    return bool(delivers)


_delivery: list[Any] = [None, True]
"""The SDK's last seen tuple of processors, and whether ours is among them (asked on every span)."""


RESUMED = "resumed trace"
"""The kind of the node of a `ReattachedTrace`: the SDK's trace of a run resumed in the process that
started it (after a tool approval), which the SDK never reports to its processors."""


def _start_wrapper(key: str, resumed: bool = False) -> Callable[..., Any]:
    """``resumed``: for `ReattachedTrace`, whose workflow span the hook opens itself."""
    spans = key == "span_id"
    started = "started_at" if spans else "_started"

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not _config.active:
            return wrapped(*args, **kwargs)
        was_started = getattr(instance, started, None)
        result = wrapped(*args, **kwargs)
        processor = _config.processor
        if was_started or processor is None:
            return result
        try:
            sdk_id = getattr(instance, key)
            node = processor.nodes.get(sdk_id)
            if resumed:  # a node already: the resumed run's trace is still open, its spans go there
                node = None if node is not None else _open_resumed(processor, instance)
            elif node is None and not _sdk_delivers(instance):  # a node means the SDK delivered the start
                (processor.on_span_start if spans else processor.on_trace_start)(instance)
                node = processor.nodes.get(sdk_id)
            marked = kwargs["mark_as_current"] if "mark_as_current" in kwargs else args and args[0]
            if node is not None and marked:
                _make_current(node)
        except Exception:
            recording_failed("the current span")
        return result

    return wrapper


def _open_resumed(processor: AglTracingProcessor, sdk_trace: Any) -> Node | None:
    processor.on_trace_start(sdk_trace)
    node = processor.nodes.get(sdk_trace.trace_id)
    if node is not None:
        node.kind = RESUMED
    return node


def _make_current(node: Node) -> None:
    """Attach the span that goes with an SDK span the SDK made current: its own, or for a kind we do
    not map its nearest mapped ancestor's (inside our model call, the SDK's model spans get the LLM
    span). Re-attaching matters beside another processor that makes its own spans current
    (OpenInference's): our tree stays the current one, and the openai call below still finds and
    joins the LLM span."""
    span = node.span
    if span is None:
        call = _current_call.get() if node.kind in ("generation", "response") else None
        span = call.span if call is not None else node.nearest_span()
        # Not attached when already current (an unmapped kind inside its mapped parent, mostly).
        # A mapped span skips this test: it was opened just now, so it cannot be current yet.
        if span is None or span is trace.get_current_span():
            return
    node.token = otel_context.attach(trace.set_span_in_context(span))


def _finish_wrapper(key: str, resumed: bool = False) -> Callable[..., Any]:
    """``resumed``: for `ReattachedTrace`, whose workflow span the hook ends itself (only one it
    opened: the run it resumes may still be open, under the same trace id)."""
    spans = key == "span_id"

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        processor = _config.processor
        if processor is None:
            return wrapped(*args, **kwargs)
        sdk_id = getattr(instance, key, None)
        node = processor.nodes.get(sdk_id) if sdk_id else None
        if node is None or (resumed and node.kind != RESUMED):  # not ours: the resumed run's own trace
            return wrapped(*args, **kwargs)
        if node.token is not None:  # first: our context sits on top of any other processor's
            token, node.token = node.token, None
            try:
                _detach(token)
            except Exception:
                recording_failed("the current span")
        try:
            return wrapped(*args, **kwargs)
        finally:
            try:
                # Still there only if the SDK did not deliver the end (it pops the node).
                if resumed or (sdk_id in processor.nodes and not _sdk_delivers(instance)):
                    (processor.on_span_end if spans else processor.on_trace_end)(instance)
            except Exception:
                recording_failed("the end of an Agents SDK span")

    return wrapper


def _detach(token: Any) -> None:
    """Detach, quietly where the token belongs to another context. The SDK finishes a span or trace
    whose ``with`` block sat in an abandoned async generator from whichever task closes it, and
    skips its own reset there (nothing can be undone from that task); OpenTelemetry's ``detach``
    would log an error with a traceback instead, on the user's behalf."""
    var = getattr(token, "var", None)
    if not isinstance(var, contextvars.ContextVar):  # another runtime context than OpenTelemetry's default
        otel_context.detach(token)
        return
    with contextlib.suppress(ValueError):  # created in another context
        var.reset(token)


def _tool_context_wrapper(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    tool_context = wrapped(*args, **kwargs)
    if _config.active:
        try:
            current = _scope().get_current_span()
            node = _nodes().get(getattr(current, "span_id", None) or "")
            call_id = getattr(tool_context, "tool_call_id", None)
            if node is not None and node.kind == "function" and node.span is not None and call_id:
                node.call_id = str(call_id)
                node.span.set_attribute(semconv.TOOL_CALL_ID, node.call_id)
        except Exception:
            recording_failed("a tool call id")
    return tool_context


def _tool_output_wrapper(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``ItemHelpers.tool_call_output_item``: the SDK turning a tool's return value into what the
    model gets (``str()`` of most values, JSON under a declared output schema, content parts for
    images and files), inside the tool's function span. The span's result is recorded as converted
    here, not as the value the SDK hands its span (the model never saw ``{"a": 1}`` as JSON)."""
    item = wrapped(*args, **kwargs)
    if _config.active:
        try:
            _note_tool_result(item)
        except Exception:
            recording_failed("a tool result")
    return item


def _note_tool_result(item: Any) -> None:
    node = _nodes().get(getattr(_scope().get_current_span(), "span_id", None) or "")
    if node is None or node.kind != "function" or not isinstance(item, Mapping):
        return
    if node.call_id is not None and item.get("call_id") != node.call_id:
        return  # another call's output, made while this tool runs
    output = item.get("output")
    node.result = output if isinstance(output, str) else json_text(output)


def _run_streamed_wrapper(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """The run's trace starts and ends in its background task, which has not run yet."""
    result = wrapped(*args, **kwargs)
    if _config.active:
        try:
            _note_streamed_run(result)
        except Exception:
            recording_failed("a streamed run")
    return result


def _note_streamed_run(result: Any) -> None:
    """A run inside the user's own trace owns none (``trace`` None): the user's ``with`` sees the error."""
    trace_id = getattr(getattr(result, "trace", None), "trace_id", None)
    processor = _config.processor
    if trace_id and processor is not None:
        processor.streamed[trace_id] = result


# --- the Model boundary: the canonical LLM span ----------------------------------------------


_REQUEST = ("system_instructions", "input", "model_settings", "tools", "output_schema", "handoffs")
_SETTINGS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "max_tokens",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}


_LEAVES = (str, int, float, bool, type(None))
_SENTINELS = frozenset({"NotGiven", "Omit"})


def _plain(value: Any) -> Any:
    """JSON-ready: pydantic models dumped, iterables as lists, openai's "not given" sentinels dropped.

    Plain leaves, dicts and lists are tested first, by concrete type: they are nearly all a request
    holds, and the abstract `Mapping`/`Iterable` checks cost several times more per value."""
    if isinstance(value, _LEAVES):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if type(v).__name__ not in _SENTINELS}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json", exclude_none=True)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if type(v).__name__ not in _SENTINELS}
    if isinstance(value, Iterable) and not isinstance(value, bytes):
        return [_plain(item) for item in value]
    return value


def _model_name(model: Any) -> str:
    name = getattr(model, "model", None)
    return name if isinstance(name, str) and name else type(model).__name__ or UNKNOWN_MODEL


def _provider(model: Any) -> str | None:
    module = type(model).__module__
    if module.startswith("agents.models.openai"):
        return "openai"
    if module.startswith("agents.extensions.models.litellm"):
        return "litellm"
    return None


def _current_agent() -> str | None:
    """The agent whose turn calls the model: the SDK's current span's agent (a ``turn`` or ``agent`` span)."""
    current = _scope().get_current_span()
    if current is None:
        return None
    node = _nodes().get(getattr(current, "span_id", None) or "")
    if node is not None:
        return node.agent
    # No node: tracing is disabled (a no-op span still carries its data) or its start failed to record.
    data = getattr(current, "span_data", None)
    return getattr(data, "name", None) if getattr(data, "type", None) == "agent" else getattr(data, "agent_name", None)


def _request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Mapping[str, Any]:
    """The model call's arguments by name (only those in `_REQUEST` are read)."""
    if not args:  # the SDK passes them all by keyword
        return kwargs
    return {**dict(zip(_REQUEST, args, strict=False)), **kwargs}


def _json_default(value: Any) -> Any:
    """What `_json` does with a value the JSON encoder does not know (what `_plain` does, lazily)."""
    if type(value).__name__ in _SENTINELS:
        return None
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json", exclude_none=True)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Iterable) and not isinstance(value, bytes):
        return list(value)
    return str(value)


def _json(value: Any) -> str:
    """JSON text of a conversation: the encoder walks the plain dicts and lists the converter
    builds, Python sees only the rare pydantic model or iterable (cheaper than `_plain` first)."""
    return json_text(value, default=_json_default)


def _messages(system: str | None, items: Any) -> list[Any]:
    """The conversation in the chat format, as `OpenAIChatCompletionsModel` renders it."""
    messages = _chat_messages(items)
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return messages


_definitions: dict[int, tuple[weakref.ref[Any], Any]] = {}
"""id(tool or handoff) -> (a weak reference to it, its chat tool definition): an agent sends the
same tools on every call. Keyed by id because the SDK's tools are unhashable dataclasses; the
entry goes when the tool does."""


def _definition(tool: Any, handoff: bool) -> Any:
    key = id(tool)
    cached = _definitions.get(key)
    if cached is not None and cached[0]() is tool:
        return cached[1]
    if handoff:
        definition = _plain(_converter().convert_handoff_tool(tool))
    else:
        try:
            definition = _plain(_converter().tool_to_openai(tool))
        except Exception:  # a hosted tool has no chat-completions form
            definition = {"type": getattr(tool, "type", None) or type(tool).__name__, "name": tool.name}
    with contextlib.suppress(TypeError):  # not weakly referenceable: converted each time
        _definitions[key] = (weakref.ref(tool, lambda _, key=key: _definitions.pop(key, None)), definition)
    return definition


def _tool_definitions(tools: Any, handoffs: Any) -> list[Any]:
    return [_definition(tool, False) for tool in tools or ()] + [_definition(h, True) for h in handoffs or ()]


def _request_attributes(request: Mapping[str, Any]) -> dict[str, Any]:
    settings = request.get("model_settings")
    attributes: dict[str, Any] = {
        semconv.INPUT_MESSAGES: _json(_messages(request.get("system_instructions"), request.get("input") or [])),
        semconv.TOOL_DEFINITIONS: _tool_definitions(request.get("tools"), request.get("handoffs")) or None,
    }
    for name, key in _SETTINGS.items():
        value = getattr(settings, name, None)
        if value is not None:
            attributes[semconv.REQUEST_PREFIX + key] = value
    return attributes


def _direct_reply(output: list[Any]) -> list[dict[str, Any]] | None:
    """The usual replies in the chat format, built as the SDK's converter builds them from
    ``to_input_items()``: only text messages (one assistant message each, its texts joined by
    newlines), or only function calls (one assistant message holding them all). None for any other
    reply (a refusal, a mix, a subclass), which goes through the converter. Dumping each item and
    setting up the converter cost ~55 k instructions per model call."""
    message_type, call_type = _reply_types()
    kinds = {type(item) for item in output}
    if kinds == {call_type}:
        calls = [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments or "{}"},
            }
            for call in output
        ]
        return [{"role": "assistant", "content": None, "tool_calls": calls}]
    if kinds != {message_type}:
        return None
    replies: list[dict[str, Any]] = []
    for message in output:
        texts = [part.text for part in message.content if part.type == "output_text"]
        if len(texts) != len(message.content):
            return None
        replies.append({"role": "assistant", "content": "\n".join(texts) if texts else None})
    return replies


def _reply(response: Any) -> list[Any]:
    """A `ModelResponse`'s output in the chat format."""
    direct = _direct_reply(response.output)
    return direct if direct is not None else _chat_messages(response.to_input_items())


def _chat_messages(items: Any) -> list[Any]:
    """Items in the chat format, as the SDK's converter renders them. The converter refuses the
    whole list over one item it has no chat form for (a hosted tool's call, such as
    ``web_search_call``, an ``item_reference``): the conversation is then rendered run by run, and
    each such item is kept as it is, in its place, rather than losing the whole record."""
    if not items:
        return []
    try:
        return list(_converter().items_to_messages(items))
    except Exception:
        if isinstance(items, str):
            raise
    messages: list[Any] = []
    run: list[Any] = []
    for item in items:
        if _renders(item):
            run.append(item)
            continue
        messages += _converter().items_to_messages(run) if run else []
        messages.append(_plain(item))
        run = []
    return messages + (_converter().items_to_messages(run) if run else [])


def _renders(item: Any) -> bool:
    """Whether the SDK's converter has a chat form for this item."""
    try:
        _converter().items_to_messages([item])
    except Exception:
        return False
    return True


def _output_attributes(messages: list[Any], usage: Any, response_id: Any, finish: str | None = None) -> dict[str, Any]:
    """``finish``: the reason a response did not complete, if it did not."""
    for message in messages:
        if "role" in message:  # not an item kept as it is
            message.setdefault("content", None)
    tool_calls = any(message.get("tool_calls") for message in messages)
    return {
        semconv.OUTPUT_MESSAGES: _json(messages),
        semconv.FINISH_REASONS: [finish or ("tool_calls" if tool_calls else "stop")],
        semconv.RESPONSE_ID: response_id if isinstance(response_id, str) else None,
        semconv.USAGE_INPUT_TOKENS: getattr(usage, "input_tokens", None) or None,
        semconv.USAGE_OUTPUT_TOKENS: getattr(usage, "output_tokens", None) or None,
    }


def _start(model: Any) -> LlmCall | None:
    try:
        return start_llm_call(
            _model_name(model), provider=_provider(model), agent_name=_current_agent(), tracer=_config.tracer
        )
    except Exception:
        recording_failed("the start of a model call")
        return None


def _end(
    call: LlmCall, request: Mapping[str, Any], error: BaseException | None, output: Callable[[], Mapping[str, Any]]
) -> None:
    """Record the request and ``output()`` (in one pass over the span's attributes), then end the span."""
    attributes: dict[str, Any] = {}
    for part in (lambda: _request_attributes(request), output):
        try:
            attributes.update(part())
        except Exception:
            recording_failed("a model call")
    try:
        call.fill(attributes)
    except Exception:
        recording_failed("a model call")
    try:
        call.end(error)
    except Exception:
        recording_failed("the end of a model call")


async def _get_response(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if not _config.active:
        return await wrapped(*args, **kwargs)
    call = _start(instance)
    if call is None:
        return await wrapped(*args, **kwargs)
    request = _request(args, kwargs)
    token = otel_context.attach(call.context()) if call.owner else None
    current = _current_call.set(call)
    try:
        response = await wrapped(*args, **kwargs)
    except BaseException as error:
        _end(call, request, error, dict)
        raise
    finally:
        _current_call.reset(current)
        if token is not None:
            otel_context.detach(token)
    _end(
        call,
        request,
        None,
        lambda: _output_attributes(_reply(response), response.usage, response.response_id),
    )
    return response


def _stream_response(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not _config.active:
        return wrapped(*args, **kwargs)
    return _observed_stream(wrapped, instance, args, kwargs)


async def _observed_stream(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> AsyncIterator[Any]:
    """The model's events, passed on; the span is current only while the model works on the next
    event (never while the consumer holds one), and ends with the stream."""
    stream = wrapped(*args, **kwargs)
    call = _start(instance)
    if call is None:
        async for event in stream:
            yield event
        return
    request = _request(args, kwargs)
    final: list[Any] = []
    failure: str | None = _UNFINISHED
    error: BaseException | None = None
    try:
        while True:
            token = otel_context.attach(call.context()) if call.owner else None
            current = _current_call.set(call)
            try:
                event = await stream.__anext__()
            except StopAsyncIteration:
                break
            finally:
                _current_call.reset(current)
                if token is not None:
                    otel_context.detach(token)
            kind = getattr(event, "type", None)
            if kind in ("response.completed", "response.incomplete", "response.failed"):
                final[:] = [event.response]
            if kind == "response.completed":
                failure = None
            elif kind in _FAILURES:
                failure = _failure(event)
            yield event
    except GeneratorExit:
        raise
    except BaseException as caught:
        error = caught
        raise
    finally:
        closer = getattr(stream, "aclose", None)
        if closer is not None and error is None:
            try:
                await closer()
            except Exception:
                recording_failed("the close of a model stream")

        def output() -> Mapping[str, Any]:
            if not final:
                return {}
            response = final[0]
            items = [item.model_dump(mode="json", exclude_none=True) for item in response.output or ()]
            usage, response_id = getattr(response, "usage", None), getattr(response, "id", None)
            return _output_attributes(_chat_messages(items), usage, response_id, _unfinished_reason(response))

        if error is None and failure is not None:
            _mark_failed(call, failure)
        _end(call, request, error, output)


_FAILURES = frozenset({"response.incomplete", "response.failed", "error", "response.error"})
"""Stream events on which the SDK raises instead of taking the reply."""
_UNFINISHED = "the model stream ended without response.completed"


def _failure(event: Any) -> str:
    """What a failure event says went wrong."""
    response = getattr(event, "response", None)
    detail = (
        getattr(event, "message", None)
        or getattr(getattr(response, "error", None), "message", None)
        or getattr(getattr(response, "incomplete_details", None), "reason", None)
    )
    return f"{event.type}: {detail}" if detail else str(event.type)


def _unfinished_reason(response: Any) -> str | None:
    """Why a response did not complete (``max_output_tokens``, ``failed``); None if it did."""
    status = getattr(response, "status", None)
    if status in (None, "completed"):
        return None
    return getattr(getattr(response, "incomplete_details", None), "reason", None) or str(status)


def _mark_failed(call: LlmCall, why: str) -> None:
    """A stream that ended without its reply is a failed call, as the SDK treats it (it raises), so
    its span says so (status ERROR), whatever partial output it keeps."""
    try:
        call.fail(why)
    except Exception:
        recording_failed("a model call")


# --- the patches ----------------------------------------------------------------------------


_SPANS = "agents.tracing.spans"
_TRACES = "agents.tracing.traces"
_registered: list[Any] = []
"""The trace provider our processor was added to."""


def _register_processor(module: ModuleType) -> None:
    """Add ours beside the user's processors (never in place of them)."""
    try:
        if _config.processor is not None and not _registered:
            module.add_trace_processor(_config.processor)
            _registered.append(module.get_trace_provider())
    except Exception:
        logger.warning("agl could not add its Agents SDK trace processor", exc_info=True)


PATCHER = Patcher(
    (
        Patch(_SPANS, "SpanImpl", "start", _start_wrapper("span_id")),
        Patch(_SPANS, "SpanImpl", "finish", _finish_wrapper("span_id")),
        Patch(_TRACES, "TraceImpl", "start", _start_wrapper("trace_id")),
        Patch(_TRACES, "TraceImpl", "finish", _finish_wrapper("trace_id")),
        Patch(_TRACES, "ReattachedTrace", "start", _start_wrapper("trace_id", resumed=True)),
        Patch(_TRACES, "ReattachedTrace", "finish", _finish_wrapper("trace_id", resumed=True)),
        Patch("agents.run", "AgentRunner", "run_streamed", _run_streamed_wrapper),
        Patch("agents.tool_context", "ToolContext", "from_agent_context", _tool_context_wrapper),
        Patch("agents.items", "ItemHelpers", "tool_call_output_item", _tool_output_wrapper),
        FamilyPatch(
            "agents.models.interface", "Model", {"get_response": _get_response, "stream_response": _stream_response}
        ),
    ),
    logger,
    on_import={"agents.tracing": _register_processor},
)


def activate(tracer: trace.Tracer) -> None:
    """Patch the SDK now or when its modules are imported (the SDK itself is not imported here),
    and add our processor to its trace provider."""
    _config.tracer = tracer
    _config.processor = AglTracingProcessor(tracer)
    _delivery[:] = [None, True]
    _config.active = True
    PATCHER.activate()


def deactivate() -> None:
    """Remove our processor and every patch."""
    _config.active = False
    processor = _config.processor
    if processor is not None:
        processor.active = False
    for provider in _registered:
        try:
            multi = provider._multi_processor
            with multi._lock:
                multi._processors = tuple(p for p in multi._processors if p is not processor)
        except Exception:
            logger.warning("agl could not remove its Agents SDK trace processor", exc_info=True)
    _registered.clear()
    PATCHER.deactivate()
