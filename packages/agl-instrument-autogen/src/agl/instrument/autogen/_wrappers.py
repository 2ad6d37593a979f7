"""The patches, listed once in `PATCHER` (applied by `activate`, removed by `deactivate`), and
what each patched call records.

Three kinds of patch:

- a method of one class (`Patch`): ``BaseGroupChat.run_stream``, ``BaseTool.run_json``,
  ``BaseStreamTool.run_json_stream``, ``FunctionTool.run``, autogen-ext's ``McpWorkbench.call_tool``;
- a method of a whole class family (`FamilyPatch`): ``create``/``create_stream`` of every
  ``ChatCompletionClient`` and ``on_messages``/``on_messages_stream`` of every ``BaseChatAgent``,
  wherever a class defines them: the classes that exist when the module is patched, and every
  subclass defined later (through ``__init_subclass__``), so custom clients and agents count;
- a module-level function replaced (`Replacement`): AutoGen's own ``trace_tool_span`` in
  ``autogen_core.tools._base`` and in autogen-ext's MCP workbench module, so that a tool call makes
  one ``execute_tool`` span, not two.

Every wrapper keeps the user's call intact: recording errors are logged and swallowed, the user's
own exceptions pass through unchanged (and are recorded on the span), and a wrapper left in place
after `deactivate` (another library wrapped over it) only passes through.
"""

from __future__ import annotations

import copy
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from agl.core.tracing import semconv
from agl.core.tracing.chat import request_parameters
from agl.core.tracing.context import run_in_context
from agl.core.tracing.jsontext import json_text
from agl.core.tracing.llm import LlmCall, start_llm_call
from agl.core.tracing.patching import FamilyPatch, Patch, Patcher, Replacement

logger = logging.getLogger("agl.instrument.autogen")


@dataclass
class _Config:
    active: bool = False
    tracer: trace.Tracer | None = None


_config = _Config()

# Carried in the OpenTelemetry context: the agent whose turn is running (its name labels the LLM
# calls made inside), a mark of the agent or team object (`_running_mark`: a nested call of the
# same object opens no second span), and the tool span whose ``trace_tool_span`` AutoGen is about
# to open.
_AGENT_NAME = otel_context.create_key("agl-autogen-agent-name")
_RUNNING = otel_context.create_key("agl-autogen-running")
_TOOL_SPAN = otel_context.create_key("agl-autogen-tool-span")

_warned = False


def _recording_failed(what: str) -> None:
    """Log and carry on: the user's call matters more than its record. A warning the first time, then debug."""
    global _warned
    logger.log(logging.DEBUG if _warned else logging.WARNING, "agl could not record %s", what, exc_info=True)
    _warned = True


def _tracer() -> trace.Tracer:
    return _config.tracer or trace.get_tracer("agl.instrument.autogen")


def _json(value: Any) -> str:
    return json_text(value)


# --- AutoGen's model types in the OpenAI chat shape ------------------------------------------


def _function_call(call: Any) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _user_content(content: Any) -> Any:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, str):
            parts.append({"type": "text", "text": part})
        else:  # an autogen_core.Image
            parts.append({"type": "image_url", "image_url": {"url": getattr(part, "data_uri", str(part))}})
    return parts


def chat_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """AutoGen's ``LLMMessage`` list as OpenAI chat messages (what an OpenAI-compatible server sees;
    a function-execution result becomes one ``tool`` message per result)."""
    converted: list[dict[str, Any]] = []
    for message in messages:
        kind = getattr(message, "type", None)
        if kind == "SystemMessage":
            converted.append({"role": "system", "content": message.content})
        elif kind == "UserMessage":
            converted.append({"role": "user", "content": _user_content(message.content), "name": message.source})
        elif kind == "AssistantMessage":
            if isinstance(message.content, str):
                converted.append({"role": "assistant", "content": message.content})
            else:
                calls = [_function_call(call) for call in message.content]
                converted.append({"role": "assistant", "content": message.thought, "tool_calls": calls})
        elif kind == "FunctionExecutionResultMessage":
            converted += [
                {"role": "tool", "tool_call_id": result.call_id, "content": result.content}
                for result in message.content
            ]
        else:  # an unknown message type: as pydantic dumps it
            dump = getattr(message, "model_dump", None)
            converted.append(dump(mode="json") if callable(dump) else {"content": str(message)})
    return converted


def chat_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """AutoGen tools (``Tool`` objects or ``ToolSchema`` dicts) as OpenAI function tools."""
    converted = []
    for tool in tools:
        schema = tool if isinstance(tool, Mapping) else tool.schema
        function = {"name": schema["name"], "description": schema.get("description", "")}
        function["parameters"] = schema.get("parameters", {})
        converted.append({"type": "function", "function": function})
    return converted


def assistant_message(result: Any) -> dict[str, Any]:
    """A ``CreateResult`` as the assistant message of a chat completion. Beside tool calls, AutoGen's
    ``thought`` is the text the model wrote as its content (the wire's, and the next request's, as
    `chat_messages` renders it); beside text, it is the model's reasoning."""
    content = result.content
    thought = getattr(result, "thought", None) or None
    if not isinstance(content, str):
        return {"role": "assistant", "content": thought, "tool_calls": [_function_call(call) for call in content]}
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thought:
        message["reasoning_content"] = thought
    return message


def _serving_client(client: Any) -> Any:
    """The client that talks to the model, whose model, provider and settings a call records:
    autogen-ext's ``ChatCompletionCache`` only wraps one (its ``client``)."""
    while type(client).__module__.startswith("autogen_ext.models.cache") and hasattr(client, "client"):
        client = client.client
    return client


def _client_settings(client: Any) -> Mapping[str, Any]:
    """The create arguments a client was configured with (autogen-ext's clients keep them here)."""
    settings = getattr(client, "_create_args", None)
    return settings if isinstance(settings, Mapping) else {}


def model_name(client: Any) -> str:
    """The model a client talks to: its configured ``model``, else its class name."""
    model = _client_settings(client).get("model")
    return model if isinstance(model, str) and model else type(client).__name__


# autogen-ext's clients whose module does not say the provider in OpenTelemetry's words: Azure
# OpenAI shares the ``openai`` module, Azure AI Inference is ``azure``, Bedrock shares ``anthropic``.
_PROVIDERS = {
    "AzureOpenAIChatCompletionClient": "azure.ai.openai",
    "AzureAIChatCompletionClient": "azure.ai.inference",
    "AnthropicBedrockChatCompletionClient": "aws.bedrock",
}


def provider_name(client: Any) -> str | None:
    """``autogen_ext.models.<provider>``'s clients are named after their module (but `_PROVIDERS`);
    others have none."""
    kind = type(client)
    parts = kind.__module__.split(".")
    if parts[:2] != ["autogen_ext", "models"] or len(parts) < 3:
        return None
    return _PROVIDERS.get(kind.__name__, parts[2])


def _request_attributes(client: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    messages = args[0] if args else kwargs.get("messages", ())
    settings = {**_client_settings(client), **(kwargs.get("extra_create_args") or {})}
    parameters = request_parameters(settings)
    tools = kwargs.get("tools") or ()
    return {
        semconv.INPUT_MESSAGES: chat_messages(messages),
        semconv.TOOL_DEFINITIONS: chat_tools(tools) if tools else None,
        **{semconv.REQUEST_PREFIX + name: value for name, value in parameters.items()},
    }


# AutoGen's finish reasons in OpenAI's words, as the messages are: it renames ``tool_calls``, and
# says ``unknown`` where the model gave none (or one it does not know), which is no reason.
_FINISH_REASONS = {"function_calls": "tool_calls", "unknown": None}


def _usage_attributes(usage: Any) -> dict[str, Any]:
    """The token counts, none where AutoGen reports 0 and 0: its placeholder for a reply that came
    with no usage (a stream not asked for it), not a call that cost nothing."""
    prompt, completion = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
    if not prompt and not completion:
        return {}
    return {semconv.USAGE_INPUT_TOKENS: prompt, semconv.USAGE_OUTPUT_TOKENS: completion}


def _result_attributes(result: Any) -> dict[str, Any]:
    """A ``CreateResult``'s attributes. A ``ChatCompletionCache`` hit (``cached``) sent no request:
    it is marked ``agl.llm.cached`` and has no usage, though AutoGen hands back the first call's."""
    finish = getattr(result, "finish_reason", None)
    finish = _FINISH_REASONS.get(finish, finish)
    logprobs = getattr(result, "logprobs", None) or ()
    cached = getattr(result, "cached", False) is True
    return {
        semconv.OUTPUT_MESSAGES: [assistant_message(result)],
        semconv.FINISH_REASONS: [finish] if finish else None,
        **({semconv.LLM_CACHED: True} if cached else _usage_attributes(getattr(result, "usage", None))),
        semconv.RESPONSE_LOGPROBS: [float(entry.logprob) for entry in logprobs] or None,
    }


@dataclass
class _StreamedReply:
    """What a model stream yielded: text chunks, then the final ``CreateResult``. Until that arrives
    (a stream closed early, or failing midway) the text stands in for the reply, as the openai
    instrumentor records an unfinished stream."""

    text: list[str] = field(default_factory=list)
    result: Any = None

    def add(self, item: Any) -> None:
        if isinstance(item, str):
            self.text.append(item)
        elif type(item).__name__ == "CreateResult":
            self.result = item

    def attributes(self) -> dict[str, Any]:
        if self.result is not None:
            return _result_attributes(self.result)
        if not self.text:
            return {}
        return {semconv.OUTPUT_MESSAGES: [{"role": "assistant", "content": "".join(self.text)}]}


def _record(
    call: LlmCall,
    client: Any,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    reply: Callable[[], Mapping[str, Any]] | None = None,
) -> None:
    """The request, and the reply's attributes when there is one, in one write to the span; a part
    that cannot be read is logged and the rest still recorded."""
    attributes: dict[str, Any] = {}
    try:
        attributes.update(_request_attributes(client, args, kwargs))
    except Exception:
        _recording_failed("an AutoGen model request")
    if reply is not None:
        try:
            attributes.update(reply())
        except Exception:
            _recording_failed("an AutoGen model result")
    _safely("an AutoGen model call", call.fill, attributes)


def _safely(what: str, record: Callable[..., None], *args: Any) -> None:
    try:
        record(*args)
    except Exception:
        _recording_failed(what)


# --- model clients ----------------------------------------------------------------------------


def _agent_name() -> str | None:
    name = otel_context.get_value(_AGENT_NAME)
    return name if isinstance(name, str) else None


async def _create(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``ChatCompletionClient.create``: one canonical LLM span (joined by the openai layer below)."""
    if not _config.active:
        return await wrapped(*args, **kwargs)
    try:
        client = _serving_client(instance)
        call = start_llm_call(
            model_name(client), provider=provider_name(client), agent_name=_agent_name(), tracer=_config.tracer
        )
        token = otel_context.attach(call.context()) if call.owner else None  # current while the call runs
    except Exception:
        _recording_failed("the start of an AutoGen model call")
        return await wrapped(*args, **kwargs)
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as error:
        _record(call, client, args, kwargs)
        _end_call(call, token, error)
        raise
    _record(call, client, args, kwargs, lambda: _result_attributes(result))
    _end_call(call, token, None)
    return result


def _end_call(call: LlmCall, token: object | None, error: BaseException | None) -> None:
    """End the call's span (when this layer opened it) and give the caller its context back."""
    try:
        call.end(error)
    except Exception:
        _recording_failed("the end of an AutoGen model call")
    finally:
        if token is not None:
            otel_context.detach(token)


def _create_stream(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``ChatCompletionClient.create_stream``: the span opens when the stream is first stepped, since
    the request goes out only then (the openai instrumentor opens it with the request too): a
    stream made and dropped, or closed unstepped, is no model call. It lasts until the stream ends,
    fails or is closed."""
    if not _config.active:
        return wrapped(*args, **kwargs)
    return _stream(lambda: wrapped(*args, **kwargs), lambda: _model_stream_scope(instance, args, kwargs))


@dataclass
class _ModelStreamScope:
    """One streamed model call: its span (opened or joined), the reply as it streams, and the
    request, recorded with the reply when the stream ends."""

    call: LlmCall
    context: otel_context.Context
    client: Any
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    reply: _StreamedReply = field(default_factory=_StreamedReply)

    def add(self, item: Any) -> None:
        self.reply.add(item)

    def end(self, error: BaseException | None) -> None:
        _record(self.call, self.client, self.args, self.kwargs, self.reply.attributes)
        _safely("the end of an AutoGen model stream", self.call.end, error)


def _model_stream_scope(client: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _ModelStreamScope | None:
    try:
        client = _serving_client(client)
        call = start_llm_call(
            model_name(client), provider=provider_name(client), agent_name=_agent_name(), tracer=_config.tracer
        )
    except Exception:
        _recording_failed("the start of an AutoGen model stream")
        return None
    return _ModelStreamScope(call, call.context(), client, args, kwargs)


class _StreamScope(Protocol):
    """What a stream records under: the context its steps run in, each item, and its end."""

    context: otel_context.Context

    def add(self, item: Any) -> None: ...

    def end(self, error: BaseException | None) -> None: ...


def _stream(make: Callable[[], Any], open_scope: Callable[[], _StreamScope | None]) -> Any:
    """``make()``'s stream, its scope opened by ``open_scope()`` when the stream is first stepped:
    an async generator runs nothing until then, and one dropped or closed unstepped never runs
    (so a span opened with it would never end). A layer below that the stream steps (a client
    handing over another client's stream) runs inside the scope and joins it. If making the
    stream raises, the scope opens and ends at once with that error."""
    try:
        stream = make()
    except BaseException as error:
        scope = open_scope()
        if scope is not None:
            scope.end(error)
        raise
    return _stepped(stream, open_scope)


async def _stepped(stream: Any, open_scope: Callable[[], _StreamScope | None]) -> AsyncIterator[Any]:
    """Iterate ``stream`` with its scope's context current while it computes each item, and only
    then: the consumer between items keeps its own context (an async generator otherwise leaks its
    span into the caller, or detaches a token in the wrong context). What the stream makes current
    itself (a span it holds open across its ``yield``) stays current for its next step. The scope
    ends with the stream's error, if any, once the stream is exhausted, fails or is closed. With no
    scope (it could not be opened) the stream is stepped in the context of its first step."""
    scope = open_scope() or _Scope(None, False, otel_context.get_current())
    context = scope.context
    iterator = stream.__aiter__()
    error: BaseException | None = None
    try:
        while True:
            token = otel_context.attach(context)
            try:
                item = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except BaseException as raised:
                error = raised
                raise
            finally:
                context = otel_context.get_current()
                otel_context.detach(token)
            scope.add(item)
            yield item
    finally:
        try:
            if error is None:
                await _close(iterator, context)
        except BaseException as raised:
            error = raised
            raise
        finally:
            scope.end(error)


async def _close(iterator: Any, context: otel_context.Context) -> None:
    """Close a stream left unfinished (a no-op on an exhausted one) in its own context."""
    close = getattr(iterator, "aclose", None)
    if close is None:
        return
    token = otel_context.attach(context)
    try:
        await close()
    finally:
        otel_context.detach(token)


# --- agents and teams -------------------------------------------------------------------------


def _span_failed(span: trace.Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


@dataclass
class _Scope:
    """The span of one agent turn or team run: opened here, or AutoGen's own joined."""

    span: trace.Span | None
    owner: bool
    context: otel_context.Context
    on_item: Callable[[Any], None] | None = None
    """What a stream run in this scope records of each item (a streaming tool's result)."""

    def add(self, item: Any) -> None:
        if self.on_item is not None:
            self.on_item(item)

    def end(self, error: BaseException | None) -> None:
        if self.span is None:
            return
        try:
            if error is not None and self.owner:
                _span_failed(self.span, error)
            if self.owner:
                self.span.end()
        except Exception:
            _recording_failed("the end of an AutoGen span")


def _running_mark(running: Any) -> Any:
    """How the context marks the agent or team whose turn runs: by a weak reference. The object
    itself would be held by every asyncio task the turn starts, and AutoGen's cancellation token
    links those tasks back to the agent: a reference cycle that left each finished agent, its model
    client and messages to the garbage collector instead of freeing them at once."""
    try:
        return weakref.ref(running)
    except TypeError:  # a class without weak references: the object itself
        return running


def _is_running(candidate: Any, context: otel_context.Context) -> bool:
    mark = otel_context.get_value(_RUNNING, context)
    return mark is candidate or (isinstance(mark, weakref.ref) and mark() is candidate)


def _agent_scope(agent: Any) -> _Scope | None:
    """The span of ``agent``'s turn: None when this very agent's turn is already traced (its
    ``on_messages`` calls its ``on_messages_stream``). AutoGen's own ``invoke_agent`` span (its
    ``run`` and team containers open one when a global tracer provider is set) is joined and
    labelled rather than doubled."""
    current = otel_context.get_current()
    if _is_running(agent, current):
        return None
    try:
        name = str(agent.name)
        parent = trace.get_current_span(current)
        attributes = getattr(parent, "attributes", None) or {}
        native = (
            parent.is_recording()
            and attributes.get(semconv.OPERATION_NAME) == semconv.INVOKE_AGENT
            and attributes.get(semconv.GEN_AI_AGENT_NAME) == name
            and semconv.AGENT_NAME not in attributes
        )
        if native:
            parent.set_attribute(semconv.AGENT_NAME, name)
            span, owner = parent, False
        else:
            span = _tracer().start_span(
                f"{semconv.INVOKE_AGENT} {name}",
                context=current,
                attributes={
                    semconv.OPERATION_NAME: semconv.INVOKE_AGENT,
                    semconv.AGENT_NAME: name,
                    semconv.GEN_AI_AGENT_NAME: name,
                },
            )
            owner = True
        context = trace.set_span_in_context(span, current) if owner else current
        context = otel_context.set_value(_AGENT_NAME, name, context)
        return _Scope(span, owner, otel_context.set_value(_RUNNING, _running_mark(agent), context))
    except Exception:
        _recording_failed("the start of an AutoGen agent turn")
        return _Scope(None, False, otel_context.set_value(_RUNNING, _running_mark(agent), current))


def _team_scope(team: Any) -> _Scope | None:
    """The span of a team run. Its group chat manager's own model calls (a selector picking the
    next speaker) are nobody's turn: they carry the team's name as their agent, not that of an
    agent whose turn runs the team (``SocietyOfMindAgent``, ``TeamTool``), whose training data
    they are not; each participant's turn sets its own name."""
    current = otel_context.get_current()
    if _is_running(team, current):
        return None
    try:
        name = str(getattr(team, "name", None) or type(team).__name__)
        span = _tracer().start_span(
            f"{semconv.INVOKE_WORKFLOW} {name}",
            context=current,
            attributes={semconv.OPERATION_NAME: semconv.INVOKE_WORKFLOW},
        )
        context = otel_context.set_value(_AGENT_NAME, name, trace.set_span_in_context(span, current))
        context = otel_context.set_value(_RUNNING, _running_mark(team), context)
        return _Scope(span, True, context)
    except Exception:
        _recording_failed("the start of an AutoGen team run")
        return None


async def _in_scope(scope: _Scope, run: Callable[[], Any]) -> Any:
    token = otel_context.attach(scope.context)
    try:
        result = await run()
    except BaseException as error:
        scope.end(error)
        raise
    finally:
        otel_context.detach(token)
    scope.end(None)
    return result


async def _on_messages(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    scope = _agent_scope(instance) if _config.active else None
    if scope is None:
        return await wrapped(*args, **kwargs)
    return await _in_scope(scope, lambda: wrapped(*args, **kwargs))


def _on_messages_stream(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """The turn's span, opened when its stream is first stepped (`_stream`); nothing when this
    agent's turn is traced already (its ``on_messages`` calls this), decided when called."""
    if not _config.active or _is_running(instance, otel_context.get_current()):
        return wrapped(*args, **kwargs)
    return _stream(lambda: wrapped(*args, **kwargs), lambda: _agent_scope(instance))


def _run_stream(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``BaseGroupChat.run_stream`` (``run`` goes through it): the run's span, opened when its
    stream is first stepped."""
    if not _config.active or _is_running(instance, otel_context.get_current()):
        return wrapped(*args, **kwargs)
    return _stream(lambda: wrapped(*args, **kwargs), lambda: _team_scope(instance))


# --- tools ------------------------------------------------------------------------------------


def _tool_scope(tool: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _Scope | None:
    """The ``execute_tool`` span of ``tool.run_json(args, cancellation_token, call_id=None)`` (or
    ``run_json_stream``, same arguments); None if it cannot be opened."""
    try:
        arguments = args[0] if args else kwargs.get("args")
        call_id = kwargs.get("call_id", args[2] if len(args) > 2 else None)
        return _open_tool_scope(str(tool.name), arguments, call_id)
    except Exception:
        _recording_failed("the start of an AutoGen tool call")
        return None


def _open_tool_scope(name: str, arguments: Any, call_id: Any) -> _Scope:
    """An ``execute_tool`` span with the arguments as JSON, current in the scope's context and
    marked there as the span AutoGen's ``trace_tool_span`` for this tool is to yield."""
    attributes: dict[str, Any] = {
        semconv.OPERATION_NAME: semconv.EXECUTE_TOOL,
        semconv.TOOL_NAME: name,
        semconv.TOOL_CALL_ARGUMENTS: _json(dict(arguments) if isinstance(arguments, Mapping) else arguments),
    }
    if call_id is not None:
        attributes[semconv.TOOL_CALL_ID] = str(call_id)
    span = _tracer().start_span(f"{semconv.EXECUTE_TOOL} {name}", attributes=attributes)
    context = otel_context.set_value(_TOOL_SPAN, (span, name), trace.set_span_in_context(span))
    return _Scope(span, True, context)


def _record_tool_result(scope: _Scope, tool: Any, result: Any) -> None:
    try:
        if scope.span is not None:
            scope.span.set_attribute(semconv.TOOL_CALL_RESULT, tool.return_value_as_string(result))
    except Exception:
        _recording_failed("an AutoGen tool result")


async def _run_json(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``BaseTool.run_json``: the ``execute_tool`` span, with the arguments and the result as text;
    current while the tool runs."""
    scope = _tool_scope(instance, args, kwargs) if _config.active else None
    if scope is None:
        return await wrapped(*args, **kwargs)

    async def run() -> Any:
        result = await wrapped(*args, **kwargs)
        _record_tool_result(scope, instance, result)
        return result

    return await _in_scope(scope, run)


def _run_json_stream(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``BaseStreamTool.run_json_stream``: how AutoGen's workbench runs a streaming tool (an agent
    or a team as a tool, ``AgentTool``/``TeamTool``), never through ``run_json``. The same span,
    for as long as the stream runs (from its first step); the result is the item of the tool's
    return type (the last)."""
    if not _config.active:
        return wrapped(*args, **kwargs)
    return _stream(lambda: wrapped(*args, **kwargs), lambda: _tool_stream_scope(instance, args, kwargs))


def _tool_stream_scope(tool: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _Scope | None:
    scope = _tool_scope(tool, args, kwargs)
    if scope is None:
        return None

    def on_item(item: Any) -> None:
        try:
            returned = isinstance(item, tool.return_type())
        except Exception:
            returned = False
        if returned:
            _record_tool_result(scope, tool, item)

    scope.on_item = on_item
    return scope


async def _mcp_call_tool(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``McpWorkbench.call_tool(name, arguments=None, cancellation_token=None, call_id=None)``: how
    an agent calls an MCP server's tool, never through ``run_json``. The same ``execute_tool`` span
    as other tools, AutoGen's own for the call being this one; the result is the text the model
    gets (``ToolResult.to_text()``), and a result the workbench reports as an error (the server's
    ``isError``, or a call that failed, which it returns rather than raises) marks the span failed."""
    scope = _mcp_tool_scope(args, kwargs) if _config.active else None
    if scope is None:
        return await wrapped(*args, **kwargs)

    async def run() -> Any:
        result = await wrapped(*args, **kwargs)
        _record_tool_result_text(scope, result)
        return result

    return await _in_scope(scope, run)


def _mcp_tool_scope(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _Scope | None:
    try:
        name = args[0] if args else kwargs["name"]
        arguments = args[1] if len(args) > 1 else kwargs.get("arguments")
        call_id = args[3] if len(args) > 3 else kwargs.get("call_id")
        return _open_tool_scope(str(name), arguments or {}, call_id)
    except Exception:
        _recording_failed("the start of an MCP tool call")
        return None


def _record_tool_result_text(scope: _Scope, result: Any) -> None:
    """A workbench's ``ToolResult``: its text on the span, and its error flag as the span's status."""
    try:
        if scope.span is None:
            return
        text = result.to_text()
        scope.span.set_attribute(semconv.TOOL_CALL_RESULT, text)
        if result.is_error:
            scope.span.set_status(Status(StatusCode.ERROR, text))
    except Exception:
        _recording_failed("an MCP tool result")


def _trace_tool_span(original: Callable[..., Any]) -> Callable[..., Any]:
    """AutoGen's ``trace_tool_span``, which yields the ``execute_tool`` span that `_run_json` (or
    `_run_json_stream`) just opened for the same call instead of opening a second one."""

    @contextmanager
    def trace_tool_span(tool_name: str, **kwargs: Any) -> Iterator[trace.Span]:
        ours = otel_context.get_value(_TOOL_SPAN) if _config.active else None
        if isinstance(ours, tuple) and ours == (trace.get_current_span(), tool_name):
            yield ours[0]
            return
        with original(tool_name, **kwargs) as span:
            yield span

    return trace_tool_span


async def _function_tool_run(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``FunctionTool.run`` runs a sync function with ``loop.run_in_executor``, which does not
    carry context variables to the worker thread: spans opened inside the tool would lose their
    parent (and their rollout). Run it on a copy of the tool whose function is bound to the
    caller's context."""
    function = getattr(instance, "_func", None)
    if not _config.active or function is None or _is_async(function):
        return await wrapped(*args, **kwargs)
    try:
        bound = copy.copy(instance)
        bound._func = run_in_context(function)
        original = wrapped.__func__  # the function itself, to call with the copy as ``self``
    except Exception:
        _recording_failed("the context of an AutoGen tool")
        return await wrapped(*args, **kwargs)
    return await original(bound, *args, **kwargs)


def _is_async(function: Any) -> bool:
    return inspect.iscoroutinefunction(function)


# --- the patches ----------------------------------------------------------------------------

_MCP_WORKBENCH = "autogen_ext.tools.mcp._workbench"

PATCHER = Patcher(
    (
        FamilyPatch(
            "autogen_core.models._model_client",
            "ChatCompletionClient",
            {"create": _create, "create_stream": _create_stream},
        ),
        FamilyPatch(
            "autogen_agentchat.agents._base_chat_agent",
            "BaseChatAgent",
            {"on_messages": _on_messages, "on_messages_stream": _on_messages_stream},
        ),
        Patch("autogen_agentchat.teams._group_chat._base_group_chat", "BaseGroupChat", "run_stream", _run_stream),
        Patch("autogen_core.tools._base", "BaseTool", "run_json", _run_json),
        Patch("autogen_core.tools._base", "BaseStreamTool", "run_json_stream", _run_json_stream),
        Replacement("autogen_core.tools._base", "trace_tool_span", _trace_tool_span),
        Patch(_MCP_WORKBENCH, "McpWorkbench", "call_tool", _mcp_call_tool),
        Replacement(_MCP_WORKBENCH, "trace_tool_span", _trace_tool_span),  # imported there by name
        Patch("autogen_core.tools._function_tool", "FunctionTool", "run", _function_tool_run),
    ),
    logger,
)


def activate(tracer: trace.Tracer) -> None:
    """Patch AutoGen's classes now or when they are imported: AutoGen itself is not imported here."""
    _config.tracer, _config.active = tracer, True
    PATCHER.activate()


def deactivate() -> None:
    _config.active = False
    PATCHER.deactivate()
