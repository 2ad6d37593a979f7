"""The patches, listed once in `PATCHER` (applied by `activate`, removed by `deactivate`), and
what each patched call records.

Crews, flows, tasks, agents and tools are plain methods patched on their classes. Model calls are
different: every `BaseLLM` subclass (CrewAI's own providers and the user's) defines its own
``call``/``acall``, so each subclass's methods are wrapped, those already defined when CrewAI is
imported and those defined later (through ``BaseLLM.__init_subclass__``).

Every wrapper keeps the user's call intact: recording errors are logged and swallowed, the
user's own exceptions pass through unchanged (and are recorded on the span), and a wrapper left
in place after `deactivate` (because another library wrapped it over ours) only passes through.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from agl.core.tracing import semconv
from agl.core.tracing.jsontext import json_text
from agl.core.tracing.llm import LlmCall, open_llm_span, start_llm_call
from agl.core.tracing.patching import FamilyPatch, Patch, Patcher

logger = logging.getLogger("agl.instrument.crewai")

UNKNOWN_MODEL = "unknown"
TASK_SPAN = "task"
# Attributes of CrewAI's own objects, which the GenAI conventions do not name.
CREW_NAME = "crewai.crew.name"
CREW_INPUTS = "crewai.crew.inputs"
CREW_OUTPUT = "crewai.crew.output"
TASK_NAME = "crewai.task.name"
TASK_DESCRIPTION = "crewai.task.description"
TASK_EXPECTED_OUTPUT = "crewai.task.expected_output"
TASK_AGENT = "crewai.task.agent"
TASK_OUTPUT = "crewai.task.output"
AGENT_GOAL = "crewai.agent.goal"
AGENT_OUTPUT = "crewai.agent.output"
FLOW_METHOD_SPAN = "flow_method"
FLOW_NAME = "crewai.flow.name"
FLOW_ID = "crewai.flow.id"
"""The flow's state id (``Flow.flow_id``), under which CrewAI persists, restores and resumes it; the
name CrewAI's own tracing gives it. Read when the run ends: ``inputs["id"]`` or a fork sets it."""
FLOW_INPUTS = "crewai.flow.inputs"
FLOW_OUTPUT = "crewai.flow.output"
FLOW_METHOD = "crewai.flow.method"
FLOW_METHOD_OUTPUT = "crewai.flow.method.output"
FLOW_ROUTER = "crewai.flow.method.router"
FLOW_ROUTE = "crewai.flow.route"
FLOW_FEEDBACK = "crewai.flow.feedback"
AGENT_ATTEMPT = semconv.CREWAI_AGENT_ATTEMPT
"""The number of an agent's try at a task (from 1) that CrewAI retried or that is a retry
(``max_retry_limit``); absent on an agent's only try."""
FLOW_ASK_SPAN = "flow_ask"
FLOW_ASK_MESSAGE = "crewai.flow.ask.message"
FLOW_ASK_RESPONSE = "crewai.flow.ask.response"
FLOW_STOPPED = "crewai.flow.stopped"
"""Why a flow or flow method ended without failing and without its result: "paused" (it waits for
human feedback) or "cancelled" (a listener racing in an ``or_`` that another one won)."""
TASK_NAME_LENGTH = 48  # characters of a task's description in its span name
_CHAT_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")


@dataclass
class _Config:
    active: bool = False
    tracer: trace.Tracer | None = None


_config = _Config()

# The spans this instrumentor has open in this context, so that a method calling another patched
# one for the same object (Tool.run -> BaseTool.run, akickoff -> kickoff) opens one span, not two.
_open: contextvars.ContextVar[frozenset[tuple[str, Any]]] = contextvars.ContextVar(
    "agl_crewai_open", default=frozenset()
)
# The role of the agent running now: the LLM span's agent when CrewAI does not pass ``from_agent``.
_agent_role: contextvars.ContextVar[str | None] = contextvars.ContextVar("agl_crewai_agent", default=None)


@dataclass
class _AgentTry:
    """One agent span open in this context. When a try at a task fails and CrewAI runs
    ``execute_task`` again (``max_retry_limit``), from inside the failed one, the failed try's span
    ends there, in error, and the retry's span opens beside it (same parent), so that the model calls
    of a try CrewAI threw away are not mistaken for the retry's."""

    key: tuple[str, Any]
    span: Span
    parent: otel_context.Context
    number: int
    failed: bool = False
    """Ended in error, and CrewAI retries it: the next span for the same agent is the retry."""


_agent_try: contextvars.ContextVar[_AgentTry | None] = contextvars.ContextVar("agl_crewai_try", default=None)


def _recording_failed(what: str) -> None:
    logger.warning("agl could not record %s", what, exc_info=True)


def _json(value: Any) -> str:
    return json_text(_plain(value))


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready data: mappings and sequences walked, pydantic models dumped."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        try:
            return dump(mode="json")
        except Exception:
            return str(value)
    return value


def _text(value: Any) -> str:
    """A result as text: strings as they are, CrewAI's outputs by their ``raw`` text, the rest as JSON."""
    if isinstance(value, str):
        return value
    raw = getattr(value, "raw", None)
    if isinstance(raw, str):
        return raw
    return _json(value)


def _has_text(value: Any) -> bool:
    """A string, or one of CrewAI's outputs (``CrewOutput``, ``TaskOutput``, ``LiteAgentOutput``) with its text."""
    return isinstance(value, str) or isinstance(getattr(value, "raw", None), str)


def _argument(args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str) -> Any:
    """A call's argument given by position (``index`` after ``self``) or by name."""
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


# --- crews, tasks, agents, tools -------------------------------------------------------------


@dataclass(frozen=True)
class Opening:
    """What a patched call's span starts with."""

    name: str
    attributes: dict[str, Any]
    key: tuple[str, Any]
    """Identifies the span among the open ones (see `_open`)."""
    agent_role: str | None = None
    """Set as the running agent while the span is open."""


class _Kind:
    """One kind of span (crew, task, agent, tool): how it opens and what its result adds."""

    def opening(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Opening | None:
        """None for a call that only hands its work to another patched call, which opens the span."""
        raise NotImplementedError

    def result(self, span: Span, result: Any) -> None:
        pass

    def finished(self, span: Span, instance: Any) -> None:
        """What the call's object holds once the call ended, whatever its outcome."""

    def stopped(self, error: BaseException) -> str | None:
        """Why ``error`` is control flow rather than a failure, or None for a failure."""
        return None


def _workflow_opening(kind: str, instance: Any, name: str, keys: tuple[str, str], inputs: Any) -> Opening:
    """The ``invoke_workflow {name}`` span of a crew or flow run, with its name and its inputs (if
    any) under ``keys``."""
    name_key, inputs_key = keys
    attributes: dict[str, Any] = {semconv.OPERATION_NAME: semconv.INVOKE_WORKFLOW, name_key: name}
    if inputs:
        attributes[inputs_key] = _json(inputs)
    return Opening(f"{semconv.INVOKE_WORKFLOW} {name}", attributes, (kind, id(instance)))


class _Crew(_Kind):
    def opening(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Opening | None:
        if getattr(instance, "stream", False) is True:
            return None  # returns a stream whose iteration runs ``kickoff`` again, with ``stream`` off
        name = getattr(instance, "name", None) or "crew"
        return _workflow_opening("crew", instance, name, (CREW_NAME, CREW_INPUTS), _argument(args, kwargs, 0, "inputs"))

    def result(self, span: Span, result: Any) -> None:
        if _has_text(result):
            span.set_attribute(CREW_OUTPUT, _text(result))


def task_title(task: Any) -> str:
    """A task's span name: ``task {name}``, else ``task {first line of the description}``, shortened."""
    title = getattr(task, "name", None) or (getattr(task, "description", None) or "").strip().split("\n")[0]
    if len(title) > TASK_NAME_LENGTH:
        title = title[: TASK_NAME_LENGTH - 1].rstrip() + "…"
    return f"{TASK_SPAN} {title}" if title else TASK_SPAN


class _Task(_Kind):
    def opening(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Opening:
        agent = _argument(args, kwargs, 0, "agent") or getattr(instance, "agent", None)
        attributes: dict[str, Any] = {
            semconv.OPERATION_NAME: TASK_SPAN,
            TASK_DESCRIPTION: getattr(instance, "description", None) or "",
            TASK_EXPECTED_OUTPUT: getattr(instance, "expected_output", None) or "",
        }
        if getattr(instance, "name", None):
            attributes[TASK_NAME] = instance.name
        role = getattr(agent, "role", None)
        if isinstance(role, str):
            attributes[TASK_AGENT] = role
        return Opening(task_title(instance), attributes, ("task", id(instance)))

    def result(self, span: Span, result: Any) -> None:
        if _has_text(result):
            span.set_attribute(TASK_OUTPUT, _text(result))


class _Agent(_Kind):
    def opening(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Opening:
        role = str(getattr(instance, "role", None) or "agent")
        attributes: dict[str, Any] = {
            semconv.OPERATION_NAME: semconv.INVOKE_AGENT,
            semconv.AGENT_NAME: role,
            semconv.GEN_AI_AGENT_NAME: role,
        }
        goal = getattr(instance, "goal", None)
        if isinstance(goal, str):
            attributes[AGENT_GOAL] = goal
        return Opening(f"{semconv.INVOKE_AGENT} {role}", attributes, ("agent", id(instance)), agent_role=role)

    def result(self, span: Span, result: Any) -> None:
        if _has_text(result):
            span.set_attribute(AGENT_OUTPUT, _text(result))


class _AgentKickoff(_Agent):
    """The sync ``Agent.kickoff``, which inside a running event loop (a flow, async code) only
    returns ``kickoff_async``'s coroutine: the span is that coroutine's, opened when it is awaited."""

    def opening(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Opening | None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return super().opening(instance, args, kwargs)
        return None


class _Tool(_Kind):
    """``BaseTool.run``/``arun`` (native tool calls, direct use) and ``CrewStructuredTool.invoke``/
    ``ainvoke`` (CrewAI's text tool calls): the tool's name, its arguments as JSON, its result."""

    def __init__(self, structured: bool) -> None:
        self.structured = structured

    def opening(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Opening:
        name = str(getattr(instance, "name", None) or type(instance).__name__)
        if self.structured:
            arguments: Any = _argument(args, kwargs, 0, "input")  # a dict, or the model's JSON text
        else:
            arguments = dict(kwargs) if not args else {"args": list(args), **kwargs}
        attributes = {
            semconv.OPERATION_NAME: semconv.EXECUTE_TOOL,
            semconv.TOOL_NAME: name,
            semconv.TOOL_CALL_ARGUMENTS: arguments if isinstance(arguments, str) else _json(arguments or {}),
        }
        return Opening(f"{semconv.EXECUTE_TOOL} {name}", attributes, ("tool", name))

    def result(self, span: Span, result: Any) -> None:
        span.set_attribute(semconv.TOOL_CALL_RESULT, _text(result))


class _ProviderTool(_Kind):
    """``BaseLLM._handle_tool_execution``: a function of ``available_functions`` that the provider
    runs inside the model call, returning its result in place of the model's reply. That reply was
    this tool call: it becomes the call's recorded output unless the wire (the openai layer) gave one."""

    def opening(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Opening:
        name = str(_argument(args, kwargs, 0, "function_name"))
        arguments = _json(_argument(args, kwargs, 1, "function_args") or {})
        _record_tool_reply(name, arguments)
        attributes = {
            semconv.OPERATION_NAME: semconv.EXECUTE_TOOL,
            semconv.TOOL_NAME: name,
            semconv.TOOL_CALL_ARGUMENTS: arguments,
        }
        return Opening(f"{semconv.EXECUTE_TOOL} {name}", attributes, ("tool", name))

    def result(self, span: Span, result: Any) -> None:
        if result is not None:  # None: the function is unknown or raised, which CrewAI logs and swallows
            span.set_attribute(semconv.TOOL_CALL_RESULT, _text(result))


class _Flow(_Kind):
    """``Flow.kickoff_async`` (``kickoff`` runs it in a new event loop, ``akickoff`` calls it): the
    whole flow run, under which each executed method has its span."""

    def opening(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Opening | None:
        if _is_internal(instance):
            return None
        if getattr(instance, "stream", False) is True:
            return None  # returns a stream whose iteration runs ``kickoff_async`` again, with ``stream`` off
        name = str(getattr(instance, "name", None) or type(instance).__name__)
        return _workflow_opening("flow", instance, name, (FLOW_NAME, FLOW_INPUTS), _argument(args, kwargs, 0, "inputs"))

    def result(self, span: Span, result: Any) -> None:
        if _is_human_feedback_pending(result):  # CrewAI returns the pause rather than raising it
            span.set_attribute(FLOW_STOPPED, "paused")
        elif result is not None:
            span.set_attribute(FLOW_OUTPUT, _text(result))

    def finished(self, span: Span, instance: Any) -> None:
        flow_id = getattr(instance, "flow_id", None)
        if isinstance(flow_id, str) and flow_id:
            span.set_attribute(FLOW_ID, flow_id)


class _FlowResume(_Flow):
    """``Flow.resume_async`` (``resume`` runs it in a new event loop): the rest of a flow paused for
    human feedback, a run of its own with the feedback it resumed with."""

    def opening(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Opening | None:
        opening = super().opening(instance, (), {})
        if opening is not None:
            opening.attributes[FLOW_FEEDBACK] = str(_argument(args, kwargs, 0, "feedback") or "")
        return opening


class _FlowAsk(_Kind):
    """``Flow.ask``: a flow method waits for a person's input (from the flow's input provider); the
    reply, None on a timeout or a provider's failure, goes on with the flow."""

    def opening(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Opening | None:
        if _is_internal(instance):
            return None
        attributes = {
            semconv.OPERATION_NAME: FLOW_ASK_SPAN,
            FLOW_ASK_MESSAGE: str(_argument(args, kwargs, 0, "message")),
        }
        return Opening(FLOW_ASK_SPAN, attributes, ("flow_ask", id(instance)))

    def result(self, span: Span, result: Any) -> None:
        if isinstance(result, str):
            span.set_attribute(FLOW_ASK_RESPONSE, result)


class _FlowMethod(_Kind):
    """``Flow._execute_method``, which runs every ``@start``/``@listen``/``@router`` method (a sync
    one in a thread, with the context copied) and returns ``(result, event id)``. Concurrent
    listeners each run it in their own asyncio task, so each has its own span current."""

    def opening(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Opening | None:
        if _is_internal(instance):
            return None
        method = str(_argument(args, kwargs, 0, "method_name"))
        attributes: dict[str, Any] = {semconv.OPERATION_NAME: FLOW_METHOD_SPAN, FLOW_METHOD: method}
        if _is_router(instance, method):
            attributes[FLOW_ROUTER] = True
        return Opening(f"{FLOW_METHOD_SPAN} {method}", attributes, ("flow_method", id(instance), method))

    def result(self, span: Span, result: Any) -> None:
        value = result[0] if isinstance(result, tuple) and result else result
        if (getattr(span, "attributes", None) or {}).get(FLOW_ROUTER):
            if value is not None:  # CrewAI's route: an enum's value, else the result as text
                span.set_attribute(FLOW_ROUTE, str(value.value if isinstance(value, enum.Enum) else value))
        elif _has_text(value):
            span.set_attribute(FLOW_METHOD_OUTPUT, _text(value))

    def stopped(self, error: BaseException) -> str | None:
        if _is_human_feedback_pending(error):
            return "paused"
        return "cancelled" if isinstance(error, asyncio.CancelledError) else None


def _is_internal(flow: Any) -> bool:
    """A flow CrewAI runs for itself (every agent's ``AgentExecutor``, memory's encoding and recall),
    whose steps are the agent's own and have their spans as such, not as flow methods."""
    return getattr(type(flow), "is_crewai_internal", False) is True


def _is_router(flow: Any, method: str) -> bool:
    try:
        return flow._is_router(method) is True
    except Exception:  # another CrewAI version: the method's span without its route
        return False


def _is_human_feedback_pending(value: Any) -> bool:
    """CrewAI's ``HumanFeedbackPending``: a flow paused for feedback, by design, not a failure."""
    return isinstance(value, BaseException) and type(value).__name__ == "HumanFeedbackPending"


def _record_tool_reply(name: str, arguments: str) -> None:
    """The open model call's reply as this tool call, where no reply is recorded yet (the first
    tool run in the call: CrewAI's providers run one)."""
    span = open_llm_span()
    if span is None or semconv.OUTPUT_MESSAGES in (getattr(span, "attributes", None) or {}):
        return
    call = {"id": None, "type": "function", "function": {"name": name, "arguments": arguments}}
    reply = {"role": "assistant", "content": None, "tool_calls": [call]}
    span.set_attribute(semconv.OUTPUT_MESSAGES, json_text([reply]))


def _start(
    kind: _Kind, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Span, list[Any], Any] | None:
    """Open ``kind``'s span and make it current; None when it is already open (unless this call is
    the retry of a failed agent try) or cannot be recorded."""
    try:
        opening = kind.opening(instance, args, kwargs)
        open_now = _open.get()
        retried = _retried_try(opening.key) if opening is not None else None
        if opening is None or (opening.key in open_now and retried is None) or _config.tracer is None:
            return None
        parent = otel_context.get_current() if retried is None else retried.parent
        number = 1 if retried is None else retried.number + 1
        attributes = opening.attributes if retried is None else {**opening.attributes, AGENT_ATTEMPT: number}
        span = _config.tracer.start_span(opening.name, context=parent, attributes=attributes)
        tokens: list[Any] = [
            otel_context.attach(trace.set_span_in_context(span, parent)),
            _open.set(open_now | {opening.key}),
        ]
        if opening.agent_role is not None:
            tokens.append(_agent_role.set(opening.agent_role))
            tokens.append(_agent_try.set(_AgentTry(opening.key, span, parent, number)))
        return span, tokens, instance
    except Exception:
        _recording_failed("the start of a CrewAI call")
        return None


def _retried_try(key: tuple[str, Any]) -> _AgentTry | None:
    """The failed try that a call opening ``key`` retries, if it is one."""
    current = _agent_try.get()
    return current if current is not None and current.failed and current.key == key else None


def _end(kind: _Kind, started: tuple[Span, list[Any], Any], result: Any, error: BaseException | None) -> None:
    span, tokens, instance = started
    current = _agent_try.get()
    retried = current is not None and current.span is span and current.failed
    _reset(tokens)
    if retried:  # ended when CrewAI retried it: the retry's result or error is not this try's
        return
    try:
        kind.finished(span, instance)
        if error is None:
            kind.result(span, result)
        elif (stopped := kind.stopped(error)) is not None:
            span.set_attribute(FLOW_STOPPED, stopped)
        else:
            _fail(span, error)
    except Exception:
        _recording_failed("the result of a CrewAI call")
    finally:
        span.end()


def _reset(tokens: list[Any]) -> None:
    """Restore the context a span's start changed (see `_start`)."""
    try:
        if len(tokens) > 2:
            _agent_try.reset(tokens[3])
            _agent_role.reset(tokens[2])
        _open.reset(tokens[1])
        otel_context.detach(tokens[0])
    except Exception:
        _recording_failed("the context of a CrewAI call")


def _fail(span: Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def _execution_error_checked(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``Agent._check_execution_error``, called when a try at a task raised: it raises when CrewAI
    gives up; when it returns, CrewAI runs ``execute_task`` again, so the failed try ends here."""
    result = wrapped(*args, **kwargs)
    if _config.active:
        _end_failed_try(instance, _argument(args, kwargs, 0, "e"))
    return result


def _end_failed_try(agent: Any, error: BaseException) -> None:
    try:
        current = _agent_try.get()
        if current is None or current.key != ("agent", id(agent)) or current.failed:
            return
        current.span.set_attribute(AGENT_ATTEMPT, current.number)
        _fail(current.span, error)
        current.span.end()
        current.failed = True  # last: a try that could not be ended stays open, and the retry inside it
    except Exception:
        _recording_failed("a CrewAI agent's failed try")


def _sync_wrapper(kind: _Kind) -> Callable[..., Any]:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not _config.active:
            return wrapped(*args, **kwargs)
        started = _start(kind, instance, args, kwargs)
        if started is None:
            return wrapped(*args, **kwargs)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            _end(kind, started, None, error)
            raise
        _end(kind, started, result, None)
        return result

    return wrapper


def _async_wrapper(kind: _Kind) -> Callable[..., Any]:
    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not _config.active:
            return await wrapped(*args, **kwargs)
        started = _start(kind, instance, args, kwargs)
        if started is None:
            return await wrapped(*args, **kwargs)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as error:
            _end(kind, started, None, error)
            raise
        _end(kind, started, result, None)
        return result

    return wrapper


# --- model calls -----------------------------------------------------------------------------

_PARAMETERS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "max_tokens",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "n": "choice.count",
}


def _chat_messages(messages: Any) -> list[Any] | None:
    """The messages of a ``BaseLLM.call`` in the chat shape (a string is one user message), copied
    now: CrewAI goes on appending to the list it passed."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, list | tuple):
        return None
    copied: list[Any] = []
    for message in messages:
        if isinstance(message, Mapping):
            copied.append({key: _plain(message[key]) for key in _CHAT_KEYS if key in message})
        else:
            copied.append(_plain(message))
    return copied


def _field(value: Any, name: str) -> Any:
    """A key of a dict or an attribute of an object: providers return tool calls as either."""
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)


def _tool_call(call: Any) -> dict[str, Any] | None:
    """A native tool call as a chat message carries it, in whichever shape CrewAI's provider returned
    it (OpenAI chat's, as an object or a dict; Gemini's ``function_call``; the Responses API's,
    Anthropic's and Bedrock's flat name with ``arguments`` or ``input``); None if it is none of them."""
    function = _field(call, "function") or _field(call, "function_call")
    if function is not None:
        arguments = _field(function, "arguments")
        arguments = _field(function, "args") if arguments is None else arguments
    else:
        function, arguments = call, _field(call, "arguments")
        arguments = _field(call, "input") if arguments is None else arguments
        if _field(call, "name") is None or arguments is None:
            return None
    call_id = _field(call, "call_id") or _field(call, "id") or _field(call, "toolUseId") or _field(function, "id")
    if not isinstance(arguments, str):
        arguments = _json(arguments or {})
    return {"id": call_id, "type": "function", "function": {"name": _field(function, "name"), "arguments": arguments}}


def _assistant_message(result: Any) -> dict[str, Any]:
    """What ``call`` returned as an assistant message: text, native tool calls, or a structured output as JSON."""
    if isinstance(result, list) and result:
        calls = [_tool_call(item) for item in result]
        if all(call is not None for call in calls):
            return {"role": "assistant", "content": None, "tool_calls": calls}
    return {"role": "assistant", "content": result if isinstance(result, str) or result is None else _text(result)}


def _provider(llm: Any) -> str | None:
    """CrewAI's provider for its own LLM classes, or when set by hand: ``provider`` defaults to
    "openai", which a custom model that never set it is not."""
    provider = getattr(llm, "provider", None)
    own = type(llm).__module__.startswith("crewai.")
    if isinstance(provider, str) and (own or provider in (getattr(llm, "model_fields_set", None) or ())):
        return provider
    return None


@dataclass
class _ModelRequest:
    """A model call's request, taken when it starts, recorded when it ends where the layer below
    (the openai client, which knows what went over the wire) recorded nothing."""

    messages: list[Any] | None
    tools: list[Any] | None
    parameters: dict[str, Any]


def _request(llm: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _ModelRequest:
    parameters = {name: getattr(llm, field, None) for field, name in _PARAMETERS.items()}
    try:
        stop = llm.stop_sequences  # CrewAI's per-call override, else the LLM's own list
    except Exception:
        stop = getattr(llm, "stop", None)
    if stop:
        parameters["stop_sequences"] = list(stop)
    tools = _argument(args, kwargs, 1, "tools")
    return _ModelRequest(
        _chat_messages(_argument(args, kwargs, 0, "messages")),
        _plain(tools) if isinstance(tools, list | tuple) and tools else None,
        {name: value for name, value in parameters.items() if value is not None},
    )


def _start_model_call(llm: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[LlmCall, Any, Any] | None:
    """Start (or join) the LLM span; None inside this LLM's own call already (a subclass calling
    ``super().call``), whose span is the outer call's."""
    try:
        open_now = _open.get()
        key = ("model", id(llm))
        if key in open_now:
            return None
        request = _request(llm, args, kwargs)  # first: a failure here leaves no span open
        agent = _argument(args, kwargs, 5, "from_agent")
        role = getattr(agent, "role", None)
        model = getattr(llm, "model", None)
        call = start_llm_call(
            model if isinstance(model, str) and model else UNKNOWN_MODEL,
            provider=_provider(llm),
            agent_name=role if isinstance(role, str) else _agent_role.get(),
            tracer=_config.tracer,
        )
        tokens = [otel_context.attach(call.context())] if call.owner else []
        return call, request, [*tokens, _open.set(open_now | {key})]
    except Exception:
        _recording_failed("the start of a CrewAI model call")
        return None


def _end_model_call(started: tuple[LlmCall, Any, Any], result: Any, error: BaseException | None) -> None:
    call, request, tokens = started
    try:
        _open.reset(tokens[-1])
        if len(tokens) > 1:
            otel_context.detach(tokens[0])
    except Exception:
        _recording_failed("the context of a CrewAI model call")
    try:
        present = getattr(call.span, "attributes", None) or {}
        attributes: dict[str, Any] = {}
        if semconv.INPUT_MESSAGES not in present:  # else the request as sent is there, parameters included
            attributes[semconv.INPUT_MESSAGES] = request.messages
            attributes[semconv.TOOL_DEFINITIONS] = request.tools
            attributes.update({semconv.REQUEST_PREFIX + name: value for name, value in request.parameters.items()})
        if error is None and semconv.OUTPUT_MESSAGES not in present:
            attributes[semconv.OUTPUT_MESSAGES] = [_assistant_message(result)]
        call.record(attributes)
    except Exception:
        _recording_failed("a CrewAI model call")
    try:
        call.end(error)
    except Exception:
        _recording_failed("the end of a CrewAI model call")


def _model_call(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not _config.active:
        return wrapped(*args, **kwargs)
    started = _start_model_call(instance, args, kwargs)
    if started is None:
        return wrapped(*args, **kwargs)
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as error:
        _end_model_call(started, None, error)
        raise
    _end_model_call(started, result, None)
    return result


async def _async_model_call(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if not _config.active:
        return await wrapped(*args, **kwargs)
    started = _start_model_call(instance, args, kwargs)
    if started is None:
        return await wrapped(*args, **kwargs)
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as error:
        _end_model_call(started, None, error)
        raise
    _end_model_call(started, result, None)
    return result


def _call_completed(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``BaseLLM._emit_call_completed_event``, where every CrewAI provider reports what only the
    response knows: the call's token usage, finish reason and response id. They go on the open
    LLM span where no layer below (the openai client's, which read them off the wire) set them."""
    if _config.active:
        _record_completion(args, kwargs)
    return wrapped(*args, **kwargs)


def _record_completion(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    try:
        span = open_llm_span()
        if span is None:
            return
        from crewai.types.usage_metrics import UsageMetrics  # loaded already: the caller's module imports it

        usage = UsageMetrics.from_provider_dict(_argument(args, kwargs, 5, "usage"))  # CrewAI's own count
        finish_reason = _argument(args, kwargs, 6, "finish_reason")
        response_id = _argument(args, kwargs, 7, "response_id")
        LlmCall(span, owner=False).fill(
            {
                semconv.USAGE_INPUT_TOKENS: usage.prompt_tokens if usage else None,
                semconv.USAGE_OUTPUT_TOKENS: usage.completion_tokens if usage else None,
                semconv.FINISH_REASONS: [finish_reason] if isinstance(finish_reason, str) else None,
                semconv.RESPONSE_ID: response_id if isinstance(response_id, str) else None,
            }
        )
    except Exception:
        _recording_failed("a CrewAI model call's usage")


# --- the patches ----------------------------------------------------------------------------


PATCHER = Patcher(
    (
        Patch("crewai.crew", "Crew", "kickoff", _sync_wrapper(_Crew())),
        Patch("crewai.crew", "Crew", "akickoff", _async_wrapper(_Crew())),
        Patch("crewai.task", "Task", "_execute_core", _sync_wrapper(_Task())),
        Patch("crewai.task", "Task", "_aexecute_core", _async_wrapper(_Task())),
        Patch("crewai.agent.core", "Agent", "execute_task", _sync_wrapper(_Agent())),
        Patch("crewai.agent.core", "Agent", "aexecute_task", _async_wrapper(_Agent())),
        Patch("crewai.agent.core", "Agent", "kickoff", _sync_wrapper(_AgentKickoff())),
        Patch("crewai.agent.core", "Agent", "kickoff_async", _async_wrapper(_Agent())),
        Patch("crewai.agent.core", "Agent", "akickoff", _async_wrapper(_Agent())),
        Patch("crewai.agent.core", "Agent", "_check_execution_error", _execution_error_checked),
        Patch("crewai.tools.base_tool", "BaseTool", "run", _sync_wrapper(_Tool(structured=False))),
        Patch("crewai.tools.base_tool", "BaseTool", "arun", _async_wrapper(_Tool(structured=False))),
        Patch("crewai.tools.base_tool", "Tool", "run", _sync_wrapper(_Tool(structured=False))),
        Patch("crewai.tools.base_tool", "Tool", "arun", _async_wrapper(_Tool(structured=False))),
        Patch("crewai.tools.structured_tool", "CrewStructuredTool", "invoke", _sync_wrapper(_Tool(structured=True))),
        Patch("crewai.tools.structured_tool", "CrewStructuredTool", "ainvoke", _async_wrapper(_Tool(structured=True))),
        Patch("crewai.llms.base_llm", "BaseLLM", "_handle_tool_execution", _sync_wrapper(_ProviderTool())),
        Patch("crewai.flow.runtime", "Flow", "kickoff_async", _async_wrapper(_Flow())),
        Patch("crewai.flow.runtime", "Flow", "resume_async", _async_wrapper(_FlowResume())),
        Patch("crewai.flow.runtime", "Flow", "_execute_method", _async_wrapper(_FlowMethod())),
        Patch("crewai.flow.runtime", "Flow", "ask", _sync_wrapper(_FlowAsk())),
        Patch("crewai.llms.base_llm", "BaseLLM", "_emit_call_completed_event", _call_completed),
        # Every `BaseLLM` subclass (CrewAI's providers and the user's) defines its own ``call``/``acall``.
        FamilyPatch("crewai.llms.base_llm", "BaseLLM", {"call": _model_call, "acall": _async_model_call}),
    ),
    logger,
)


def activate(tracer: trace.Tracer) -> None:
    """Patch CrewAI's classes now or when they are imported: CrewAI itself is not imported here."""
    _config.tracer, _config.active = tracer, True
    PATCHER.activate()


def deactivate() -> None:
    _config.active = False
    PATCHER.deactivate()
