"""The patches, listed once in `PATCHER` (applied by `activate`, removed by `deactivate`), and
what each patched call records.

Every wrapper keeps the user's call intact: recording errors are logged and swallowed, the
user's own exceptions pass through unchanged (and are recorded on the span), and a wrapper left
in place after `deactivate` (because another library wrapped it over ours) only passes through.

Spans are made current around the work they cover, and streams attach their span around each
step only (never across a ``yield``), so contexts copied into threads and tasks (LangChain's
``run_in_executor``, LangGraph's executors, ``asyncio`` tasks) carry the right parent.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import json
import logging
import operator
import sys
import urllib.parse
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from agl.core.tracing import semconv
from agl.core.tracing.jsontext import json_text
from agl.core.tracing.llm import LlmCall, start_llm_call
from agl.core.tracing.patching import Patch, Patcher

logger = logging.getLogger("agl.instrument.langchain")

UNKNOWN_MODEL = "unknown"
DEFAULT_GRAPH_NAME = "LangGraph"
# Modules whose model node is an agent made by a factory (``create_react_agent``, ``create_agent``):
# such a node's agent is the graph's name, not the node's generic one ("agent", "model").
_PREBUILT_AGENT_MODULES = ("langgraph.prebuilt", "langchain.agents")


@dataclass
class _Config:
    active: bool = False
    tracer: trace.Tracer | None = None


_config = _Config()

# The enclosing LangGraph graph and agent, for the spans started below them.
_graph: contextvars.ContextVar[str | None] = contextvars.ContextVar("agl_langchain_graph", default=None)
_agent: contextvars.ContextVar[str | None] = contextvars.ContextVar("agl_langchain_agent", default=None)


# --- recording helpers ----------------------------------------------------------------------

_warned = False


def _recording_failed(what: str) -> None:
    """Log and carry on: the user's call matters more than its record. A warning the first time, then debug."""
    global _warned
    logger.log(logging.DEBUG if _warned else logging.WARNING, "agl could not record %s", what, exc_info=True)
    _warned = True


def _json(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json_text(value, default=_dump)


def _dump(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else str(value)


def _tracer() -> trace.Tracer:
    return _config.tracer or trace.get_tracer("agl.instrument.langchain")


def _end(span: Span, error: BaseException | None = None) -> None:
    try:
        if error is not None and not _bubbles_up(error):
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()
    except Exception:
        _recording_failed("the end of a span")


def _bubbles_up(error: BaseException) -> bool:
    """Whether ``error`` is LangGraph's control flow rather than a failure: an interrupt (the graph
    pauses for input and returns), a ``Command`` for the parent graph, a drain."""
    errors = sys.modules.get("langgraph.errors")
    return errors is not None and isinstance(error, errors.GraphBubbleUp)


@dataclass
class _Scope:
    """A span current for a while, with the graph and agent it stands for (each may be None)."""

    span: Span
    graph: str | None = None
    agent: str | None = None

    def enter(self) -> tuple[object, object | None, object | None]:
        tokens = (
            otel_context.attach(trace.set_span_in_context(self.span)),
            _graph.set(self.graph) if self.graph is not None else None,
            _agent.set(self.agent) if self.agent is not None else None,
        )
        return tokens

    @staticmethod
    def leave(tokens: tuple[object, object | None, object | None]) -> None:
        span_token, graph_token, agent_token = tokens
        if agent_token is not None:
            _agent.reset(agent_token)  # type: ignore[arg-type]
        if graph_token is not None:
            _graph.reset(graph_token)  # type: ignore[arg-type]
        otel_context.detach(span_token)  # type: ignore[arg-type]

    def fail(self, error: BaseException) -> None:
        """End the span of a call that raised ``error``; a tool's span whose error a ToolNode may
        answer for stays open until the ToolNode is done (`_ToolNodeCall`)."""
        handling = _tool_node_call.get()
        if handling is None or not handling.keep_open(self.span, error):
            _end(self.span, error)

    collects = False
    """Whether a stream's items are kept for `finish` (a model's chunks are its reply; a graph's are not recorded)."""

    def finish(self, items: list[Any] | None, error: BaseException | None = None) -> None:
        """End the span of a stream that yielded ``items`` (kept if `collects`)."""
        _end(self.span, error)


def _run_in(scope: _Scope | None, wrapped: Callable[..., Any], args: Any, kwargs: Any, record: Any = None) -> Any:
    """``wrapped(*args, **kwargs)`` with ``scope`` current; the span ends with the call."""
    if scope is None:
        return wrapped(*args, **kwargs)
    tokens = scope.enter()
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as error:
        scope.fail(error)
        raise
    finally:
        _Scope.leave(tokens)
    _record_then_end(scope.span, record, result)
    return result


async def _arun_in(
    scope: _Scope | None, wrapped: Callable[..., Any], args: Any, kwargs: Any, record: Any = None
) -> Any:
    if scope is None:
        return await wrapped(*args, **kwargs)
    tokens = scope.enter()
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as error:
        scope.fail(error)
        raise
    finally:
        _Scope.leave(tokens)
    _record_then_end(scope.span, record, result)
    return result


def _record_then_end(span: Span, record: Callable[[Span, Any], None] | None, result: Any) -> None:
    if record is not None:
        try:
            record(span, result)
        except Exception:
            _recording_failed("a result")
    _end(span)


def _traced_iterator(scope: _Scope | None, iterator: Iterator[Any]) -> Iterator[Any]:
    """Each step of ``iterator`` with ``scope`` current (never across a yield); the scope is
    finished when the iterator is exhausted, fails or is closed."""
    if scope is None:
        yield from iterator
        return
    items: list[Any] | None = [] if scope.collects else None
    try:
        while True:
            tokens = scope.enter()
            try:
                item = next(iterator)
            except StopIteration:
                break
            finally:
                scope.leave(tokens)
            if items is not None:
                items.append(item)
            yield item
    except GeneratorExit:
        try:
            _close(iterator)
        finally:
            scope.finish(items)
        raise
    except BaseException as error:
        scope.finish(items, error)
        raise
    scope.finish(items)


def _close(iterator: Iterator[Any]) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


class _AsyncStream:
    """An async stream's items, each step with its scope current; the scope opens on the first
    step (``open_scope()``, None: no span) and is finished when the stream is exhausted, fails, is
    closed (``aclose`` closes the framework's stream too), or is dropped unfinished.

    A class, not an async generator, so that the event loop sees only the framework's own
    generators, as without agl: at shutdown it closes every async generator it has seen at once,
    and a wrapper generator closing the one inside it meanwhile made asyncio log "aclose():
    asynchronous generator is already running" (and left the span open)."""

    def __init__(self, stream: AsyncIterator[Any], open_scope: Callable[[], _Scope | None]) -> None:
        self._stream = stream
        self._open_scope: Callable[[], _Scope | None] | None = open_scope
        self._scope: _Scope | None = None
        self._items: list[Any] | None = None

    def __aiter__(self) -> _AsyncStream:
        return self

    async def __anext__(self) -> Any:
        if self._open_scope is not None:
            self._scope, self._open_scope = self._open_scope(), None
            self._items = [] if self._scope is not None and self._scope.collects else None
        scope = self._scope
        if scope is None:
            return await self._stream.__anext__()
        tokens = scope.enter()
        try:
            item = await self._stream.__anext__()
        except StopAsyncIteration:
            self._finish()
            raise
        except BaseException as error:
            self._finish(error)
            raise
        finally:
            scope.leave(tokens)
        if self._items is not None:
            self._items.append(item)
        return item

    async def aclose(self) -> None:
        self._open_scope = None  # closed before its first step: no span
        try:
            aclose = getattr(self._stream, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._finish()

    def __del__(self) -> None:
        if not sys.is_finalizing():  # at exit there is nothing left to record into
            self._finish()

    def _finish(self, error: BaseException | None = None) -> None:
        scope, self._scope = self._scope, None
        if scope is not None:
            scope.finish(self._items, error)


# --- chat models ----------------------------------------------------------------------------

# Invocation parameters under their ``gen_ai.request.*`` names (the first of synonyms wins).
_PARAMETERS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "max_output_tokens": "max_tokens",
    "seed": "seed",
    "stop": "stop_sequences",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "n": "choice.count",
}
_ORDER = {argument: index for index, argument in enumerate(_PARAMETERS)}


# ``json.dumps(value, ensure_ascii=False)``, as LangChain writes a tool call's arguments, without
# building a new encoder on each call (json.dumps does unless every option is the default): -110
# Python opcodes per fake-agent run.
_arguments_json = json.JSONEncoder(ensure_ascii=False).encode

_ROLES: dict[type, str] = {}
"""The usual message classes (exactly these, not subclasses) and their OpenAI roles; filled
on first use, since this module does not import LangChain."""


def _openai_messages(messages: Any) -> list[dict[str, Any]]:
    """LangChain messages as OpenAI chat messages, as ``convert_to_openai_messages`` makes them.
    Plain ones (text content, one of the four usual classes) are converted here, to the same dicts
    (a test holds the two equal), because that function's generality costs several times more and
    every model call converts its whole conversation; anything else goes through it. One difference:
    tool calls whose arguments are not JSON are kept here, as the model wrote them."""
    messages = list(messages)
    if not _ROLES:
        from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage

        _ROLES.update(
            {
                HumanMessage: "user",
                AIMessage: "assistant",
                AIMessageChunk: "assistant",  # a streamed reply, merged
                SystemMessage: "system",
                ToolMessage: "tool",
            }
        )
    converted = []
    for message in messages:
        plain = _plain_message(message)
        if plain is None:
            from langchain_core.messages import convert_to_openai_messages

            general = convert_to_openai_messages(messages)
            return [general] if isinstance(general, dict) else list(general)
        converted.append(plain)
    return converted


def _plain_message(message: Any) -> dict[str, Any] | None:
    """One plain message in OpenAI's format, or None if it is not plain."""
    role = _ROLES.get(type(message))
    if role is None or not isinstance(message.content, str):
        return None
    extra = message.additional_kwargs
    if role == "system" and "__openai_role__" in extra:
        return None
    converted: dict[str, Any] = {"role": role}
    if message.name:
        converted["name"] = message.name
    if role == "assistant" and (message.tool_calls or message.invalid_tool_calls):
        converted["tool_calls"] = _tool_calls_made(message)
    if extra.get("refusal"):
        converted["refusal"] = extra["refusal"]
    if role == "tool":
        converted["tool_call_id"] = message.tool_call_id
    converted["content"] = message.content
    return converted


def _tool_calls_made(message: Any) -> list[dict[str, Any]]:
    """An AI message's tool calls in OpenAI's format. Arguments that are not JSON stay as the model
    wrote them: LangChain's converter drops such calls, but the model made them and chat models send
    them back (ChatOpenAI does)."""
    return [_tool_call(call["id"], call["name"], _arguments_json(call["args"])) for call in message.tool_calls] + [
        _tool_call(call["id"], call["name"], call["args"]) for call in message.invalid_tool_calls
    ]


def _tool_calls_streamed(reply: Any) -> list[dict[str, Any]]:
    """A streamed reply's tool calls as the model streamed them, recorded as the same reply not
    streamed records them. Its ``tool_calls`` will not do: LangChain completes cut-off JSON there
    (``{"a": 17, "b": `` read as ``{"a": 17}``), which the model never wrote."""
    return [
        _tool_call(chunk["id"], chunk["name"], _streamed_arguments(chunk["args"])) for chunk in reply.tool_call_chunks
    ]


def _tool_call(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    return {"type": "function", "id": call_id, "function": {"name": name, "arguments": arguments}}


def _streamed_arguments(streamed: str | None) -> str:
    """Streamed arguments as a reply not streamed records them: JSON as LangChain rewrites it (``{}``
    for none), anything else as the model wrote it."""
    try:
        parsed = json.loads(streamed, strict=False) if streamed else {}
    except ValueError:
        return str(streamed)
    return _arguments_json(parsed) if isinstance(parsed, dict) else str(streamed)


def _tool_definitions(tools: Any) -> list[Any] | None:
    if not tools:
        return None
    definitions: list[Any] = []
    for tool in tools:
        if isinstance(tool, Mapping) and tool.get("type") == "function" and "function" in tool:
            definitions.append(tool)  # already in OpenAI's format (``bind_tools`` converts): as sent
            continue
        from langchain_core.utils.function_calling import convert_to_openai_tool

        try:
            definitions.append(convert_to_openai_tool(tool))
        except Exception:  # a provider-specific tool (a built-in search tool): as given
            definitions.append(tool if isinstance(tool, Mapping) else str(tool))
    return definitions


def _model_of(model: Any, ls_params: Mapping[str, Any]) -> str:
    name = ls_params.get("ls_model_name")
    if isinstance(name, str) and name:
        return name
    fields = getattr(type(model), "model_fields", {})
    for attribute in ("model_name", "model"):
        # Asked only of a model that has it: a miss on a pydantic model raises and formats an error inside.
        if attribute in fields or hasattr(type(model), attribute):
            name = getattr(model, attribute, None)
            if isinstance(name, str) and name:
                return name
    try:
        return str(model._llm_type)
    except Exception:
        return UNKNOWN_MODEL


# A chat model's setting for its server's URL, by the names providers give it (after any field
# aliased ``base_url``, as most take it): ``ChatOllama``'s, ``ChatOpenAI``'s, ``ChatAnthropic``'s…
_URL_SETTINGS = (
    "base_url",
    "openai_api_base",
    "azure_endpoint",
    "anthropic_api_url",
    "api_base",
    "endpoint",
    "endpoint_url",
    "api_endpoint",
)
_DEFAULT_PORTS = {"https": 443, "http": 80}

_url_settings: weakref.WeakKeyDictionary[type, tuple[str, ...]] = weakref.WeakKeyDictionary()
"""A chat model class -> its base-URL settings, found once: the hot path only reads their values."""


def _server_of(model: Any) -> Mapping[str, Any] | None:
    """``server.address`` and ``server.port`` from the model's first base-URL setting that is set;
    none for a model that sets none (its client's default host is not guessed; an openai layer
    underneath records the server it reached, over this)."""
    try:
        kind = type(model)
        settings = _url_settings.get(kind)
        if settings is None:
            settings = _url_settings[kind] = _url_settings_of(kind)
        for setting in settings:
            url = getattr(model, setting, None)
            if url and (isinstance(url, str) or hasattr(url, "host")):  # or httpx's, pydantic's URL
                return _server_at(str(url))
    except Exception:
        _recording_failed("a chat model's server")
    return None


def _url_settings_of(kind: type) -> tuple[str, ...]:
    fields = getattr(kind, "model_fields", None) or {}
    aliased = [name for name, field in fields.items() if getattr(field, "alias", None) == "base_url"]
    known = [name for name in _URL_SETTINGS if name in fields or hasattr(kind, name)]
    return tuple(dict.fromkeys(aliased + known))


@functools.lru_cache(maxsize=64)
def _server_at(url: str) -> Mapping[str, Any] | None:
    """A base URL's host and port (the scheme's default port if it names none); None if it names
    no host or an invalid port. A URL without a scheme (``gpu-box:11434``) is read as a host."""
    parts = urllib.parse.urlsplit(url if "//" in url else f"//{url}")
    try:
        host, port = parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if not host:
        return None
    return {semconv.SERVER_ADDRESS: host, semconv.SERVER_PORT: port} if port else {semconv.SERVER_ADDRESS: host}


def _ls_params(model: Any, stop: Any, options: Mapping[str, Any], run_manager: Any) -> Mapping[str, Any]:
    """The call's LangSmith parameters (provider, model name, temperature, max tokens). LangChain
    computed them for this very call and put them in the run's metadata (a stream has no run yet):
    asking the model again costs more than the rest of the request's record. The metadata is
    returned as it is, only read: its other keys are never looked at."""
    metadata = getattr(run_manager, "metadata", None)
    if isinstance(metadata, Mapping) and "ls_provider" in metadata:
        return metadata
    try:
        return model._get_ls_params(stop=stop, **options)
    except Exception:
        return {}


def _parameters(invocation: Mapping[str, Any], options: Mapping[str, Any], stop: Any) -> dict[str, Any]:
    """The request's ``gen_ai.request.*`` parameters: per-call options over the model's invocation
    parameters, the ``stop`` argument over both. Only the arguments given are looked at (a model's
    invocation parameters hold a few of the eleven), in the table's order: the first of synonyms wins."""
    parameters: dict[str, Any] = {}
    given = _PARAMETERS.keys() & (options.keys() | invocation.keys() | {"stop"})
    for argument in sorted(given, key=_ORDER.__getitem__):
        name = _PARAMETERS[argument]
        value = options.get(argument, invocation.get(argument))
        if argument == "stop":
            value = stop or value
        if value is not None and name not in parameters:
            parameters[name] = [value] if name == "stop_sequences" and isinstance(value, str) else value
    return parameters


_invocations: weakref.WeakKeyDictionary[Any, Mapping[str, Any]] = weakref.WeakKeyDictionary()
"""A chat model run's manager -> the invocation parameters LangChain computed for that very call
and handed to ``on_chat_model_start``; read once by `_start_chat`, gone with the run. Asking the
model again costs as much again (mostly its deprecation-warning guard)."""


def _remember_invocation(managers: Any, kwargs: Mapping[str, Any]) -> None:
    parameters = kwargs.get("invocation_params")
    if _config.active and isinstance(parameters, Mapping):
        for manager in managers or ():
            _invocations[manager] = parameters


def _chat_run_started(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``CallbackManager.on_chat_model_start``: its run managers, with the call's invocation parameters noted."""
    managers = wrapped(*args, **kwargs)
    try:
        _remember_invocation(managers, kwargs)
    except Exception:
        _recording_failed("a chat model's invocation parameters")
    return managers


async def _achat_run_started(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    managers = await wrapped(*args, **kwargs)
    try:
        _remember_invocation(managers, kwargs)
    except Exception:
        _recording_failed("a chat model's invocation parameters")
    return managers


def _invocation_params(model: Any, stop: Any, options: Mapping[str, Any], run_manager: Any) -> Mapping[str, Any]:
    """The call's invocation parameters: as LangChain computed them for its run, else from the model."""
    if run_manager is not None:
        noted = _invocations.pop(run_manager, None)
        if noted is not None:
            return noted
    try:
        return model._get_invocation_params(stop=stop, **options)
    except Exception:
        return {}


def _start_chat(
    model: Any, messages: Any, stop: Any, options: Mapping[str, Any], run_manager: Any = None
) -> LlmCall | None:
    """The call's span (joined or opened), with the request recorded; None if that failed."""
    try:
        ls_params = _ls_params(model, stop, options, run_manager)
        token = _attach_batch_parent(run_manager) if _batch_parents else None  # the hot path: one test
        try:
            call = start_llm_call(
                _model_of(model, ls_params),
                provider=ls_params.get("ls_provider"),
                agent_name=_agent.get(),
                tracer=_config.tracer,
                server=_server_of(model),
            )
        finally:
            if token is not None:
                otel_context.detach(token)
    except Exception:
        _recording_failed("the start of a chat model call")
        return None
    try:
        parameters = _parameters(_invocation_params(model, stop, options, run_manager), options, stop)
        if "temperature" not in parameters and isinstance(ls_params.get("ls_temperature"), int | float):
            parameters["temperature"] = ls_params["ls_temperature"]
        if "max_tokens" not in parameters and isinstance(ls_params.get("ls_max_tokens"), int):
            parameters["max_tokens"] = ls_params["ls_max_tokens"]
        call.record_request(
            _openai_messages(messages), tools=_tool_definitions(options.get("tools")), parameters=parameters
        )
    except Exception:
        _recording_failed("a chat model request")
    return call


def _record_messages(
    call: LlmCall, messages: list[Any], generation_info: list[Mapping[str, Any]], streamed: Any = None
) -> None:
    """The reply messages (AIMessages) of one call: content, tool calls, model, usage (the cached and
    reasoning parts too), finish reason.
    Filled in, not overwritten: an openai layer underneath recorded the reply as the wire carried it
    (reasoning, tool calls LangChain could not parse), which LangChain's messages may have lost."""
    first = messages[0] if messages else None
    metadata: Mapping[str, Any] = getattr(first, "response_metadata", None) or {}
    usage: Mapping[str, Any] = getattr(first, "usage_metadata", None) or {}
    finish = [info.get("finish_reason") for info in generation_info if info.get("finish_reason")]
    finish = finish or [m.response_metadata["finish_reason"] for m in messages if _finish_reason(m)]
    call.fill(
        {
            semconv.OUTPUT_MESSAGES: _reply_messages(messages, streamed) if messages else None,
            semconv.RESPONSE_MODEL: metadata.get("model_name") or metadata.get("model"),
            semconv.FINISH_REASONS: [str(reason) for reason in finish] or None,
            semconv.USAGE_INPUT_TOKENS: usage.get("input_tokens"),
            semconv.USAGE_OUTPUT_TOKENS: usage.get("output_tokens"),
            semconv.USAGE_CACHE_READ_INPUT_TOKENS: _usage_part(usage, "input_token_details", "cache_read"),
            semconv.USAGE_REASONING_OUTPUT_TOKENS: _usage_part(usage, "output_token_details", "reasoning"),
        }
    )


_NO_DETAILS: Mapping[str, Any] = {}


def _usage_part(usage: Mapping[str, Any], details: str, part: str) -> int | None:
    """A count from LangChain's usage breakdown (``input_token_details["cache_read"]``…): a part of
    the input or output tokens, as the conventions count it; None where the model reported none."""
    value = (usage.get(details) or _NO_DETAILS).get(part)
    return value if type(value) is int else None


def _reply_messages(messages: list[Any], streamed: Any = None) -> list[dict[str, Any]]:
    """The reply messages in OpenAI's format, a streamed one's tool calls as streamed (``streamed``:
    the first reply as streamed inside the call, when LangChain returned it merged)."""
    converted = _openai_messages(messages)
    for index, (message, reply) in enumerate(zip(messages, converted, strict=False)):
        source = streamed if streamed is not None and index == 0 else message
        if getattr(source, "tool_call_chunks", None) and reply.get("role") == "assistant":
            reply["tool_calls"] = _tool_calls_streamed(source)
    return converted


def _finish_reason(message: Any) -> Any:
    return (getattr(message, "response_metadata", None) or {}).get("finish_reason")


def _record_chat_result(call: LlmCall, result: Any, streamed: Any = None) -> None:
    """``streamed``: the reply as the model streamed it inside the call, if it did (its tool calls as streamed)."""
    generations = list(getattr(result, "generations", None) or ())
    _record_messages(
        call,
        [generation.message for generation in generations],
        [generation.generation_info or {} for generation in generations],
        streamed,
    )


_streamed: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
"""A chat model run's manager -> the chunks the model streamed to it (``on_llm_new_token``). A call
that streams inside ``invoke`` (``streaming=True``, LangGraph's ``stream_mode="messages"``) returns
the reply LangChain merged, whose tool calls are LangChain's completion of the streamed JSON; these
chunks keep them as streamed. Empty unless a model streams; gone with the run."""


def _token_streamed(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``CallbackManagerForLLMRun.on_llm_new_token(token, *, chunk=None, ...)``: the chunk noted for
    the call's record."""
    _note_chunk(instance, kwargs.get("chunk"))
    return wrapped(*args, **kwargs)


async def _atoken_streamed(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    _note_chunk(instance, kwargs.get("chunk"))
    return await wrapped(*args, **kwargs)


def _note_chunk(run_manager: Any, chunk: Any) -> None:
    if _config.active and chunk is not None:
        try:
            _streamed.setdefault(run_manager, []).append(chunk)
        except Exception:
            _recording_failed("a streamed chunk")


def _streamed_reply(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """The reply a ``_generate_with_cache(messages, stop, run_manager, ...)`` call streamed to its run
    manager, merged; None if it streamed no AI message chunks."""
    from langchain_core.messages import AIMessageChunk

    run_manager = kwargs.get("run_manager", args[2] if len(args) > 2 else None)
    chunks = _streamed.pop(run_manager, None) if run_manager is not None else None
    messages = [getattr(chunk, "message", None) for chunk in chunks or ()]
    if not messages or not all(isinstance(message, AIMessageChunk) for message in messages):
        return None
    return _merged(messages)


def _record_chunks(call: LlmCall, chunks: list[Any]) -> None:
    if chunks:
        _record_messages(call, [_merged(chunks)], [])


def _merged(chunks: list[Any]) -> Any:
    """A stream's reply from its chunks, merged at once as LangChain merges them: merged pairwise,
    each chunk copied the reply so far (a 16,000-token stream took 0.6 s to record, not 0.03 s)."""
    from langchain_core.messages import AIMessageChunk

    first, rest = chunks[0], chunks[1:]
    if rest and all(isinstance(chunk, AIMessageChunk) for chunk in chunks):
        return first + rest
    return functools.reduce(operator.add, chunks)  # other chunk classes add only pairwise


def _finish_call(call: LlmCall, record: Callable[[], None] | None, error: BaseException | None = None) -> None:
    if record is not None:
        try:
            record()
        except Exception:
            _recording_failed("a chat model response")
    try:
        call.end(error)
    except Exception:
        _recording_failed("the end of a chat model call")


def _generation_request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, dict[str, Any], Any]:
    """``_generate_with_cache(messages, stop=None, run_manager=None, **kwargs)``'s arguments:
    messages, stop, the other options, run manager."""
    options = dict(kwargs)
    messages = args[0] if args else options.pop("messages", None)
    stop = args[1] if len(args) > 1 else options.pop("stop", None)
    return messages, stop, options, options.pop("run_manager", None)


def _attach_call(call: LlmCall) -> object | None:
    return otel_context.attach(call.context()) if call.owner else None


def _detach(token: object | None) -> None:
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]


def _generate(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not _config.active:
        return wrapped(*args, **kwargs)
    call = _start_chat(instance, *_generation_request(args, kwargs))
    if call is None:
        return wrapped(*args, **kwargs)
    token = _attach_call(call)
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as error:
        _finish_call(call, None, error)
        raise
    finally:
        _detach(token)
    _finish_call(call, lambda: _record_chat_result(call, result, _streamed_reply(args, kwargs) if _streamed else None))
    return result


async def _agenerate(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not _config.active:
        return await wrapped(*args, **kwargs)
    call = _start_chat(instance, *_generation_request(args, kwargs))
    if call is None:
        return await wrapped(*args, **kwargs)
    token = _attach_call(call)
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as error:
        _finish_call(call, None, error)
        raise
    finally:
        _detach(token)
    _finish_call(call, lambda: _record_chat_result(call, result, _streamed_reply(args, kwargs) if _streamed else None))
    return result


def _stream_request(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LlmCall | None:
    """``stream(input, config=None, *, stop=None, **kwargs)``: the span, started with the request."""
    try:
        given = args[0] if args else kwargs.get("input")
        messages = instance._convert_input(given).to_messages()
        options = {key: value for key, value in kwargs.items() if key not in ("input", "config", "stop")}
    except Exception:
        _recording_failed("a chat model stream's input")
        return None
    return _start_chat(instance, messages, kwargs.get("stop"), options)


class _CallScope(_Scope):
    """An LLM call's span as a stream's scope: current only if this layer opened it, and then marked
    as the open call (`LlmCall.context`), so a layer below joins it even past spans others opened in
    between, as in a call that does not stream."""

    collects = True

    def __init__(self, call: LlmCall) -> None:
        super().__init__(call.span)
        self.call = call

    def enter(self) -> tuple[object, object | None, object | None]:
        if self.call.owner:
            return (otel_context.attach(self.call.context()), None, None)
        return (None, None, None)

    @staticmethod
    def leave(tokens: tuple[object, object | None, object | None]) -> None:
        if tokens[0] is not None:
            _Scope.leave(tokens)

    def finish(self, items: list[Any] | None, error: BaseException | None = None) -> None:
        _finish_call(self.call, lambda: _record_chunks(self.call, items or []), error)


def _call_scope(call: LlmCall | None) -> _CallScope | None:
    return _CallScope(call) if call is not None else None


def _stream(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not _config.active:
        return wrapped(*args, **kwargs)
    return _lazy_stream(wrapped, instance, args, kwargs)


def _lazy_stream(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The span starts when the stream is first iterated, as the model call does."""
    call = _stream_request(instance, args, kwargs)
    yield from _traced_iterator(_call_scope(call), wrapped(*args, **kwargs))


def _astream(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not _config.active:
        return wrapped(*args, **kwargs)
    return _AsyncStream(wrapped(*args, **kwargs), lambda: _call_scope(_stream_request(instance, args, kwargs)))


# --- tools, retrievers, chains --------------------------------------------------------------


def _start_span(
    name: str,
    attributes: Mapping[str, Any],
    *,
    graph: str | None = None,
    agent: str | None = None,
    parent: otel_context.Context | None = None,
) -> _Scope | None:
    """A span under ``parent`` (None: the current context), not yet current."""
    try:
        return _Scope(_tracer().start_span(name, context=parent, attributes=attributes), graph, agent)
    except Exception:
        _recording_failed(f"the start of {name}")
        return None


def _tool_scope(tool: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _Scope | None:
    """``BaseTool.run(tool_input, ..., tool_call_id=None, ...)``: "execute_tool {name}"."""
    try:
        name = str(tool.name)
        attributes: dict[str, Any] = {semconv.OPERATION_NAME: semconv.EXECUTE_TOOL, semconv.TOOL_NAME: name}
        tool_input = args[0] if args else kwargs.get("tool_input")
        if tool_input is not None:
            attributes[semconv.TOOL_CALL_ARGUMENTS] = _json(_model_arguments(tool, tool_input))
        call_id = kwargs.get("tool_call_id")
        if call_id:
            attributes[semconv.TOOL_CALL_ID] = str(call_id)
        agent = _agent.get()
        if agent:
            attributes[semconv.AGENT_NAME] = agent
        description = getattr(tool, "description", None)
        if isinstance(description, str) and description:
            attributes["gen_ai.tool.description"] = description
    except Exception:
        _recording_failed("a tool call")
        return None
    return _start_span(f"{semconv.EXECUTE_TOOL} {name}", attributes, parent=_batch_parent(kwargs.get("callbacks")))


@dataclass
class _ToolNodeCall:
    """One tool call a LangGraph ``ToolNode`` runs (its id), and the call's span if the tool failed.
    That span stays open until the ToolNode is done, since the ToolNode may answer the model with an
    error message instead of raising (``handle_tool_errors``): the span's result. So may a
    ``wrap_tool_call`` around the run (LangChain's agent middleware): ``outer``, the handling of
    that wrapped run, gets the span if the run raises."""

    call_id: Any
    outer: _ToolNodeCall | None = None
    failed: Span | None = None

    def keep_open(self, span: Span, error: BaseException) -> bool:
        """Whether ``span``, failing with ``error``, is this call's tool span, kept open (failed) for
        the ToolNode's answer. Not a span of other work in the tool, nor LangGraph's control flow."""
        attributes = getattr(span, "attributes", None) or {}
        if (
            self.call_id is None  # a call without an id cannot be told from other tools run inside it
            or _bubbles_up(error)
            or attributes.get(semconv.OPERATION_NAME) != semconv.EXECUTE_TOOL
            or attributes.get(semconv.TOOL_CALL_ID) != self.call_id
        ):
            return False
        try:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        except Exception:
            _recording_failed("a tool's error")
        self.hold(span)
        return True

    def hold(self, span: Span) -> None:
        """Keep the failed ``span`` for the answer, which is not for an earlier failed one: that ends now."""
        self.end_failed()
        self.failed = span

    def end_failed(self) -> None:
        if self.failed is not None:
            _end(self.failed)
            self.failed = None

    def release(self) -> None:
        """The run raised: its failed span goes to the wrapped run around it, which may still answer
        the error, else ends."""
        span, self.failed = self.failed, None
        if span is not None and self.outer is not None and self.outer.call_id == self.call_id:
            self.outer.hold(span)
        elif span is not None:
            _end(span)


_tool_node_call: contextvars.ContextVar[_ToolNodeCall | None] = contextvars.ContextVar(
    "agl_langchain_tool_node_call", default=None
)


_shown_fields: weakref.WeakKeyDictionary[type, frozenset[str]] = weakref.WeakKeyDictionary()
"""A tool's argument schema -> the fields its model is shown (LangChain's ``tool_call_schema``),
found once: LangChain's own memo of that schema costs more per call than the rest of the tool's span."""


def _model_arguments(tool: Any, tool_input: Any) -> Any:
    """The arguments as the model gave them: without those LangGraph injects (the graph's state, a
    ``ToolRuntime``, the store), which LangChain leaves out of its own callbacks too. Recorded, they
    made each tool call carry the whole conversation. Asking LangChain costs a schema walk, so a call
    whose keys are all among those the model is shown skips it."""
    if not isinstance(tool_input, dict):
        return tool_input
    try:
        if tool_input.keys() <= _fields_shown(tool):
            return tool_input
        return tool._filter_injected_args(tool_input)
    except Exception:
        _recording_failed("a tool's injected arguments")
        return tool_input


def _fields_shown(tool: Any) -> frozenset[str]:
    """The fields of ``tool``'s arguments the model is shown; none known for a schema given as JSON."""
    schema = tool.args_schema
    if not isinstance(schema, type):
        return frozenset()
    shown = _shown_fields.get(schema)
    if shown is None:
        shown = _shown_fields[schema] = frozenset(getattr(tool.tool_call_schema, "model_fields", ()))
    return shown


ScopeOf = Callable[[Any, tuple[Any, ...], Mapping[str, Any]], _Scope | None]


def _scoped_wrappers(
    scope_of: ScopeOf, record: Callable[[Span, Any], None] | None = None
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The sync and async wrappers of a method whose call is one span: ``scope_of(instance, args,
    kwargs)`` opens it (None: no span), ``record(span, result)`` adds the result before it ends."""

    def sync(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not _config.active:
            return wrapped(*args, **kwargs)
        return _run_in(scope_of(instance, args, kwargs), wrapped, args, kwargs, record)

    async def asynchronous(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not _config.active:
            return await wrapped(*args, **kwargs)
        return await _arun_in(scope_of(instance, args, kwargs), wrapped, args, kwargs, record)

    return sync, asynchronous


def _record_tool_result(span: Span, result: Any) -> None:
    content = getattr(result, "content", result) if type(result).__name__ in ("ToolMessage", "Command") else result
    span.set_attribute(semconv.TOOL_CALL_RESULT, _json(content))
    if getattr(result, "status", None) == "error":
        span.set_status(Status(StatusCode.ERROR, _json(content)[:200]))


_tool, _atool = _scoped_wrappers(_tool_scope, _record_tool_result)


def _tool_error_handled(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``_handle_tool_error(e, *, flag)`` (and ``_handle_validation_error``): a tool that handles its
    error answers with a message instead of raising, and says so only in a ``ToolMessage``, which a
    call without a tool-call id does not return; its span (current here) fails with the error."""
    if _config.active:
        try:
            _fail_tool_span(args[0] if args else kwargs["e"])
        except Exception:
            _recording_failed("a tool's handled error")
    return wrapped(*args, **kwargs)


def _fail_tool_span(error: BaseException) -> None:
    span = trace.get_current_span()
    attributes = getattr(span, "attributes", None) or {}
    if span.is_recording() and attributes.get(semconv.OPERATION_NAME) == semconv.EXECUTE_TOOL:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def _tool_node_run(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``ToolNode._execute_tool_sync(request, input_type, config)``: one tool call, whose failed
    span gets the error message the ToolNode answers the model with."""
    if not _config.active:
        return wrapped(*args, **kwargs)
    return _answered_run(_requested_call_id(args, kwargs), wrapped, args, kwargs)


async def _atool_node_run(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if not _config.active:
        return await wrapped(*args, **kwargs)
    return await _aanswered_run(_requested_call_id(args, kwargs), wrapped, args, kwargs)


def _wrapped_tool_run(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``ToolNode._run_one(call, input_type, tool_runtime)``: a tool call through the ToolNode's
    ``wrap_tool_call`` (LangChain's agent middleware), which may catch the tool's error and answer
    the model with an error message itself: the failed span's result, as the ToolNode's own."""
    if not _config.active or not _wraps_tool_calls(instance):
        return wrapped(*args, **kwargs)
    return _answered_run(_called_id(args, kwargs), wrapped, args, kwargs)


async def _awrapped_tool_run(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if not _config.active or not _wraps_tool_calls(instance):
        return await wrapped(*args, **kwargs)
    return await _aanswered_run(_called_id(args, kwargs), wrapped, args, kwargs)


def _wraps_tool_calls(tool_node: Any) -> bool:
    return getattr(tool_node, "_wrap_tool_call", None) is not None or (
        getattr(tool_node, "_awrap_tool_call", None) is not None
    )


def _answered_run(call_id: Any, wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``wrapped``, a run of the tool call ``call_id`` that answers the model: a failed tool span of
    that call ends with the answer."""
    with _tool_node_handling(call_id) as handling:
        answer = wrapped(*args, **kwargs)
    if handling.failed is not None:
        _end_failed_tool(handling.failed, answer)
    return answer


async def _aanswered_run(
    call_id: Any, wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    with _tool_node_handling(call_id) as handling:
        answer = await wrapped(*args, **kwargs)
    if handling.failed is not None:
        _end_failed_tool(handling.failed, answer)
    return answer


@contextlib.contextmanager
def _tool_node_handling(call_id: Any) -> Iterator[_ToolNodeCall]:
    """The ToolNode call in this context; a failed tool span it kept open is released if the run raises."""
    handling = _ToolNodeCall(call_id, outer=_tool_node_call.get())
    if handling.outer is not None and handling.outer.call_id == call_id:
        handling.outer.end_failed()  # a new attempt at the call: the answer will not be for the last one
    token = _tool_node_call.set(handling)
    try:
        yield handling
    except BaseException:
        handling.release()
        raise
    finally:
        _tool_node_call.reset(token)


def _requested_call_id(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    return _id_of(getattr(args[0] if args else kwargs.get("request"), "tool_call", None))


def _called_id(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    return _id_of(args[0] if args else kwargs.get("call"))


def _id_of(call: Any) -> Any:
    call_id = call.get("id") if isinstance(call, Mapping) else None
    return str(call_id) if call_id else None  # as the tool's span records it


def _end_failed_tool(span: Span, answer: Any) -> None:
    """End the span of a tool that failed under a ToolNode, with the error message the ToolNode
    answered the model with (``answer``: a ``ToolMessage`` with status "error") as its result."""
    try:
        if type(answer).__name__ == "ToolMessage" and getattr(answer, "status", None) == "error":
            span.set_attribute(semconv.TOOL_CALL_RESULT, _json(answer.content))
    except Exception:
        _recording_failed("a tool's error message")
    _end(span)


RETRIEVE = "retrieve"


def _retriever_scope(retriever: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _Scope | None:
    """``BaseRetriever.invoke(input, config=None, **kwargs)``: "retrieve {name}"."""
    try:
        name = retriever.get_name()
        query = args[0] if args else kwargs.get("input")
        attributes: dict[str, Any] = {semconv.OPERATION_NAME: RETRIEVE, semconv.OPERATION_INPUT: _json(query)}
        config = args[1] if len(args) > 1 else kwargs.get("config")
        parent = _batch_parent((config or {}).get("callbacks"))
    except Exception:
        _recording_failed("a retriever call")
        return None
    return _start_span(f"{RETRIEVE} {name}", attributes, parent=parent)


def _record_documents(span: Span, documents: Any) -> None:
    found = [{"page_content": d.page_content, "metadata": d.metadata} for d in documents or ()]
    span.set_attribute(semconv.OPERATION_OUTPUT, _json(found))


_retriever, _aretriever = _scoped_wrappers(_retriever_scope, _record_documents)


CHAIN = "chain"


def _chain_scope(chain: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _Scope | None:
    """``RunnableSequence.invoke(input, config=None, **kwargs)`` (and ``transform``): "chain {name}"."""
    return _chain_run_scope(chain, args[1] if len(args) > 1 else kwargs.get("config"))


def _chain_run_scope(chain: Any, config: Any) -> _Scope | None:
    """The span ``chain {run name}`` of one run of ``chain`` with ``config`` (in a batch, its input's)."""
    try:
        config = config or {}
        name = config.get("run_name") or chain.get_name()
        parent = _batch_parent(config.get("callbacks"))
    except Exception:
        _recording_failed("a chain call")
        return None
    return _start_span(f"{CHAIN} {name}", {semconv.OPERATION_NAME: CHAIN}, parent=parent)


_chain, _achain = _scoped_wrappers(_chain_scope)


def _chain_transform(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``RunnableSequence.transform`` (what ``stream`` runs, and a sequence nested in a stream):
    the chain's span covers the whole iteration, current around each step only."""
    if not _config.active:
        return wrapped(*args, **kwargs)
    return _lazy_chain_stream(wrapped, instance, args, kwargs)


def _lazy_chain_stream(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    yield from _traced_iterator(_chain_scope(instance, args, kwargs), wrapped(*args, **kwargs))


def _chain_atransform(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not _config.active:
        return wrapped(*args, **kwargs)
    return _AsyncStream(wrapped(*args, **kwargs), lambda: _chain_scope(instance, args, kwargs))


# --- chains run as a batch --------------------------------------------------------------------
#
# ``RunnableSequence.batch`` runs each step once for all inputs (``step.batch``, in LangChain's
# executor threads), so no context of the caller's can carry one input's span to that input's
# work. LangChain tells the inputs apart by their root run: each input's steps get callbacks whose
# ``parent_run_id`` is that run. The batch names each input's run (``config["run_id"]``, from
# LangChain's own generator, where the caller gave none), and the spans its steps open find their
# parent here by that id. Work nested inside a step (a lambda's model call) is found by a marker
# handler (`_BatchInput`) in the input's callbacks, which LangChain hands down to every run under it.

_batch_parents: dict[Any, otel_context.Context] = {}
"""A batched chain input's root run id -> the context with that input's chain span; empty but
during a batch, so a model call checks it at the cost of one truth test."""


def _batch_parent(callbacks: Any) -> otel_context.Context | None:
    """The batched chain input whose work runs under ``callbacks`` (a callback or run manager, or a
    config's list of handlers), as the parent of that work's span; None outside a batch."""
    if not _batch_parents or callbacks is None:
        return None
    direct = _batch_parents.get(getattr(callbacks, "parent_run_id", None))
    return direct if direct is not None else _nested_batch_parent(callbacks)


def _nested_batch_parent(callbacks: Any) -> otel_context.Context | None:
    """The batched chain input whose work nested inside a step (a lambda's model call) runs under
    ``callbacks``, found by the input's marker among its handlers (the innermost batch's first).
    Only where the batch's caller's span is still current: that work runs in LangChain's threads
    with the caller's context; work under a span of its own (a chain's) stays under that span."""
    handlers = callbacks if isinstance(callbacks, list) else getattr(callbacks, "handlers", None)
    if not handlers:
        return None
    marker, current = _batch_input_class(), trace.get_current_span()
    for handler in reversed(handlers):
        if isinstance(handler, marker) and handler.caller is current:
            return handler.parent
    return None


@functools.cache
def _batch_input_class() -> type:
    """`_BatchInput`, made on first use: this module does not import LangChain."""
    from langchain_core.callbacks import BaseCallbackHandler

    class _BatchInput(BaseCallbackHandler):
        """A callback handler marking the runs of one batched chain input: LangChain hands it down
        to every run under the input. It asks for no event."""

        run_inline = True
        ignore_llm = ignore_chain = ignore_agent = ignore_retriever = True
        ignore_chat_model = ignore_retry = ignore_custom_event = True

        def __init__(self, parent: otel_context.Context, caller: Span) -> None:
            self.parent, self.caller = parent, caller

    return _BatchInput


def _with_marker(config: Any, marker: Any) -> None:
    """``config``'s callbacks with ``marker`` handed down to every run under them."""
    callbacks = config.get("callbacks")
    if callbacks is None or isinstance(callbacks, list):
        config["callbacks"] = [*(callbacks or ()), marker]
    else:  # a callback manager, perhaps shared by the batch's configs
        callbacks = callbacks.copy()
        callbacks.add_handler(marker, inherit=True)
        config["callbacks"] = callbacks


def _attach_batch_parent(run_manager: Any) -> object | None:
    """The span of the batched chain input a model call is a step of, made current; None if none."""
    parent = _batch_parent(run_manager)
    return otel_context.attach(parent) if parent is not None else None


@dataclass
class _Batch:
    """One chain batch: each input's config (with its run id) and span."""

    configs: list[Any]
    scopes: list[_Scope | None]

    def __enter__(self) -> _Batch:
        for config, scope in zip(self.configs, self.scopes, strict=True):
            if scope is not None:
                _batch_parents[config["run_id"]] = trace.set_span_in_context(scope.span)
        return self

    def __exit__(self, *exc: object) -> None:
        for config in self.configs:
            _batch_parents.pop(config["run_id"], None)

    def finish(self, outputs: Any, error: BaseException | None = None) -> None:
        """Each input's span ends with its own outcome (``return_exceptions``: its exception)."""
        for index, scope in enumerate(self.scopes):
            if scope is not None:
                _end(scope.span, error if error is not None else _error_at(outputs, index))


def _error_at(outputs: Any, index: int) -> BaseException | None:
    """The exception ``batch(..., return_exceptions=True)`` returned for input ``index``, if any."""
    try:
        output = outputs[index]
    except Exception:
        _recording_failed("a chain batch's outputs")
        return None
    return output if isinstance(output, Exception) else None


def _start_batch(chain: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[_Batch | None, Any, Any]:
    """``batch(inputs, config=None, *, return_exceptions=False, **kwargs)``: the batch with a span
    per input, and the arguments to call it with (the configs, as LangChain lists them, with a run id each)."""
    try:
        from langchain_core.runnables.config import get_config_list
        from langchain_core.utils.uuid import uuid7

        inputs = args[0] if args else kwargs["inputs"]
        try:
            configs = get_config_list(args[1] if len(args) > 1 else kwargs.get("config"), len(inputs))
        except ValueError:  # as many configs as inputs, or a single one: LangChain says so itself
            return None, args, kwargs
        for config in configs:
            config["run_id"] = config.get("run_id") or uuid7()
        batch = _Batch(configs, [_chain_run_scope(chain, config) for config in configs])
        caller = trace.get_current_span()
        for config, scope in zip(configs, batch.scopes, strict=True):
            if scope is not None:
                _with_marker(config, _batch_input_class()(trace.set_span_in_context(scope.span), caller))
    except Exception:
        _recording_failed("a chain batch")
        return None, args, kwargs
    kwargs = {key: value for key, value in kwargs.items() if key not in ("inputs", "config")}
    return batch, (inputs, configs), kwargs


def _chain_batch(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``RunnableSequence.batch``: a "chain {name}" span per input, as ``invoke`` gives each, with
    the spans of that input's steps under it."""
    if not _config.active:
        return wrapped(*args, **kwargs)
    batch, args, kwargs = _start_batch(instance, args, kwargs)
    if batch is None:
        return wrapped(*args, **kwargs)
    with batch:
        try:
            outputs = wrapped(*args, **kwargs)
        except BaseException as error:
            batch.finish(None, error)
            raise
    batch.finish(outputs)
    return outputs


async def _chain_abatch(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if not _config.active:
        return await wrapped(*args, **kwargs)
    batch, args, kwargs = _start_batch(instance, args, kwargs)
    if batch is None:
        return await wrapped(*args, **kwargs)
    with batch:
        try:
            outputs = await wrapped(*args, **kwargs)
        except BaseException as error:
            batch.finish(None, error)
            raise
    batch.finish(outputs)
    return outputs


# --- LangGraph ------------------------------------------------------------------------------


def _graph_scope(graph: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _Scope | None:
    """A graph run (``Pregel.invoke(input, config=None, ...)``, its async and stream forms):
    "invoke_workflow {run name}", the run named as LangGraph names its own (`_run_name`). The graph's
    name stays what its agents are named after: a run's name labels one run, not the agent."""
    try:
        name = str(getattr(graph, "name", None) or DEFAULT_GRAPH_NAME)
        config = args[1] if len(args) > 1 else kwargs.get("config")
        run_name = _run_name(config, graph) or name
        parent = _batch_parent(config.get("callbacks")) if isinstance(config, Mapping) else None
    except Exception:
        _recording_failed("a graph run")
        return None
    return _start_span(
        f"{semconv.INVOKE_WORKFLOW} {run_name}",
        {semconv.OPERATION_NAME: semconv.INVOKE_WORKFLOW},
        graph=name,
        parent=parent,
    )


def _run_name(config: Any, graph: Any) -> str | None:
    """``config["run_name"]``, the call's over the graph's own (``with_config(run_name=...)``), as
    LangGraph names the run for LangChain's callbacks; None when neither names it. LangGraph drops
    a run name before handing a config to a node, so a subgraph is named by its graph as before."""
    for given in (config, getattr(graph, "config", None)):
        name = given.get("run_name") if isinstance(given, Mapping) else None
        if name:
            return str(name)
    return None


# The graph whose ``invoke``/``ainvoke`` runs and has not yet called its own ``stream``/``astream``.
_invoking: contextvars.ContextVar[object | None] = contextvars.ContextVar("agl_langchain_invoking", default=None)


def _graph_invoke(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``Pregel.invoke`` runs its own ``stream`` to the end and hands no step to its caller, so the
    graph's span is current around the whole call: entered once, not once per step of the stream."""
    if not _config.active:
        return wrapped(*args, **kwargs)
    scope = _graph_scope(instance, args, kwargs)
    token = _invoking.set(instance if scope is not None else None)
    try:
        return _run_in(scope, wrapped, args, kwargs)
    finally:
        _invoking.reset(token)


async def _graph_ainvoke(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if not _config.active:
        return await wrapped(*args, **kwargs)
    scope = _graph_scope(instance, args, kwargs)
    token = _invoking.set(instance if scope is not None else None)
    try:
        return await _arun_in(scope, wrapped, args, kwargs)
    finally:
        _invoking.reset(token)


def _invoked_stream(graph: Any) -> bool:
    """Whether this is the stream ``invoke`` runs on the same graph (its span already open)."""
    if _invoking.get() is not graph:
        return False
    _invoking.set(None)  # only that first call: a node may stream the same graph again
    return True


def _graph_stream(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not _config.active or _invoked_stream(instance):
        return wrapped(*args, **kwargs)
    return _lazy_graph_stream(wrapped, instance, args, kwargs)


def _lazy_graph_stream(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    yield from _traced_iterator(_graph_scope(instance, args, kwargs), wrapped(*args, **kwargs))


def _graph_astream(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not _config.active or _invoked_stream(instance):
        return wrapped(*args, **kwargs)
    return _AsyncStream(wrapped(*args, **kwargs), lambda: _graph_scope(instance, args, kwargs))


def _node_agent(task: Any) -> str | None:
    """The agent a LangGraph task (one node run) stands for, or None for nodes that are not
    agents: LangGraph's own (``__start__``…) and tool nodes (their tools get their own spans)."""
    name = str(task.name)
    if name.startswith("__"):
        return None
    steps = getattr(task.proc, "steps", None) or [task.proc]
    bound = steps[0]
    if type(bound).__name__ == "ToolNode":
        return None
    graph = _graph.get()
    function = getattr(bound, "func", None) or getattr(bound, "afunc", None)
    if (
        graph
        and graph != DEFAULT_GRAPH_NAME
        and str(getattr(function, "__module__", "")).startswith(_PREBUILT_AGENT_MODULES)
    ):
        return graph
    return name


def _node_scope(function: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _Scope | None:
    """``run_with_retry(task, ...)``: "invoke_agent {agent}" for a node that stands for an agent."""
    try:
        task = args[0] if args else kwargs["task"]
        agent = _node_agent(task)
        if agent is None:
            return None
        attributes = _agent_attributes(agent, task)
    except Exception:
        _recording_failed("a graph node")
        return None
    return _start_span(f"{semconv.INVOKE_AGENT} {agent}", attributes, agent=agent)


def _agent_attributes(agent: str, task: Any) -> dict[str, Any]:
    return {
        semconv.OPERATION_NAME: semconv.INVOKE_AGENT,
        semconv.AGENT_NAME: agent,
        semconv.GEN_AI_AGENT_NAME: agent,
        semconv.LANGGRAPH_NODE: str(task.name),
    }


_node_run, _anode_run = _scoped_wrappers(_node_scope)


# A node with a retry policy: LangGraph's ``run_with_retry`` runs ``task.proc`` once per attempt,
# throwing a failed attempt's writes away. Each attempt gets its own agent span, numbered
# (``langgraph.node.attempt``, as LangGraph's ``node_attempt``), a failed one ending in error, so
# the model calls of a failed attempt sit under a failed span, apart from those of the attempt
# whose output the graph kept.


def _retried_task(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    """``run_with_retry(task, retry_policy, ...)``'s arguments with the task's runnable opening a span
    per attempt; None for a node without a retry policy or not an agent (one span, or none, as before)."""
    try:
        task = args[0] if args else kwargs["task"]
        retry_policy = args[1] if len(args) > 1 else kwargs.get("retry_policy")
        if not (task.retry_policy or retry_policy):
            return None
        agent = _node_agent(task)
        if agent is None:
            return None
        proc = _Attempts(task.proc, agent, _agent_attributes(agent, task))
        retried = dataclasses.replace(task, proc=proc)
    except Exception:
        _recording_failed("a graph node's retries")
        return None
    return (retried, *args[1:]) if args else None


class _Attempts:
    """A node's runnable whose every run, one attempt of LangGraph's retry loop, is an agent span."""

    def __init__(self, proc: Any, agent: str, attributes: dict[str, Any]) -> None:
        self._proc, self._agent, self._attributes = proc, agent, attributes
        self._count = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._proc, name)

    def _next_attempt(self) -> _Scope | None:
        self._count += 1
        attributes = {**self._attributes, semconv.LANGGRAPH_NODE_ATTEMPT: self._count}
        return _start_span(f"{semconv.INVOKE_AGENT} {self._agent}", attributes, agent=self._agent)

    def invoke(self, *args: Any, **kwargs: Any) -> Any:
        return _run_in(self._next_attempt(), self._proc.invoke, args, kwargs)

    async def ainvoke(self, *args: Any, **kwargs: Any) -> Any:
        return await _arun_in(self._next_attempt(), self._proc.ainvoke, args, kwargs)

    def astream(self, *args: Any, **kwargs: Any) -> Any:
        return _AsyncStream(self._proc.astream(*args, **kwargs), self._next_attempt)


def _node(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``run_with_retry``: an agent span per node run, or per attempt under a retry policy."""
    if _config.active:
        retried = _retried_task(args, kwargs)
        if retried is not None:
            return wrapped(*retried, **kwargs)
    return _node_run(wrapped, instance, args, kwargs)


async def _anode(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _config.active:
        retried = _retried_task(args, kwargs)
        if retried is not None:
            return await wrapped(*retried, **kwargs)
    return await _anode_run(wrapped, instance, args, kwargs)


# --- the patches ----------------------------------------------------------------------------


_CALLBACKS = "langchain_core.callbacks.manager"
_CHAT = "langchain_core.language_models.chat_models"
_TOOLS = "langchain_core.tools.base"
_RETRIEVERS = "langchain_core.retrievers"
_RUNNABLES = "langchain_core.runnables.base"
_PREGEL = "langgraph.pregel.main"
_RUNNER = "langgraph.pregel._runner"  # calls run_with_retry by its global name, once per node run
_TOOL_NODE = "langgraph.prebuilt.tool_node"

PATCHER = Patcher(
    (
        Patch(_CALLBACKS, "CallbackManager", "on_chat_model_start", _chat_run_started),
        Patch(_CALLBACKS, "AsyncCallbackManager", "on_chat_model_start", _achat_run_started),
        Patch(_CALLBACKS, "CallbackManagerForLLMRun", "on_llm_new_token", _token_streamed),
        Patch(_CALLBACKS, "AsyncCallbackManagerForLLMRun", "on_llm_new_token", _atoken_streamed),
        Patch(_CHAT, "BaseChatModel", "_generate_with_cache", _generate),
        Patch(_CHAT, "BaseChatModel", "_agenerate_with_cache", _agenerate),
        Patch(_CHAT, "BaseChatModel", "stream", _stream),
        Patch(_CHAT, "BaseChatModel", "astream", _astream),
        Patch(_TOOLS, "BaseTool", "run", _tool),
        Patch(_TOOLS, "BaseTool", "arun", _atool),
        Patch(_TOOLS, None, "_handle_tool_error", _tool_error_handled),
        Patch(_TOOLS, None, "_handle_validation_error", _tool_error_handled),
        Patch(_RETRIEVERS, "BaseRetriever", "invoke", _retriever),
        Patch(_RETRIEVERS, "BaseRetriever", "ainvoke", _aretriever),
        Patch(_RUNNABLES, "RunnableSequence", "invoke", _chain),
        Patch(_RUNNABLES, "RunnableSequence", "ainvoke", _achain),
        Patch(_RUNNABLES, "RunnableSequence", "transform", _chain_transform),
        Patch(_RUNNABLES, "RunnableSequence", "atransform", _chain_atransform),
        Patch(_RUNNABLES, "RunnableSequence", "batch", _chain_batch),
        Patch(_RUNNABLES, "RunnableSequence", "abatch", _chain_abatch),
        Patch(_PREGEL, "Pregel", "invoke", _graph_invoke),
        Patch(_PREGEL, "Pregel", "ainvoke", _graph_ainvoke),
        Patch(_PREGEL, "Pregel", "stream", _graph_stream),
        Patch(_PREGEL, "Pregel", "astream", _graph_astream),
        Patch(_RUNNER, None, "run_with_retry", _node),
        Patch(_RUNNER, None, "arun_with_retry", _anode),
        Patch(_TOOL_NODE, "ToolNode", "_execute_tool_sync", _tool_node_run),
        Patch(_TOOL_NODE, "ToolNode", "_execute_tool_async", _atool_node_run),
        Patch(_TOOL_NODE, "ToolNode", "_run_one", _wrapped_tool_run),
        Patch(_TOOL_NODE, "ToolNode", "_arun_one", _awrapped_tool_run),
    ),
    logger,
)


def activate(tracer: trace.Tracer) -> None:
    """Patch LangChain's and LangGraph's classes now or when they are imported: neither is imported here."""
    _config.tracer, _config.active = tracer, True
    PATCHER.activate()


def deactivate() -> None:
    _config.active = False
    PATCHER.deactivate()
