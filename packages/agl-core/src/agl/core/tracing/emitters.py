"""Signals an agent emits by hand: rewards, messages, objects, exceptions, annotations, operations.

    from agl.core.tracing.emitters import emit_reward, operation

    with operation("plan", inputs=task) as op:
        op.set_output(plan)
    emit_reward({"correct": 1.0, "brevity": 0.4}, primary="correct")

Each emitter writes one short span (``agl.span.kind`` says which) under the current span, so it
lands in the rollout's span tree in order. Without agl tracing in the process there is nowhere for
the span to go: the emitter does nothing and logs one warning (per emitter, per process) instead
of failing the agent. Values that are not JSON become strings; an emitter never raises for them.

Imported by agents at start-up, so this module needs only the OpenTelemetry API; the SDK is looked
at only once it is loaded.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import numbers
import sys
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, TypeVar, cast, overload

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from agl.core.tracing import semconv
from agl.core.tracing.context import current_rollout, rollouts_open
from agl.core.tracing.llm import agl_tracer

F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger(__name__)

# Attributes of emitted spans that semconv.py does not name yet.

_SCALARS = (str, bool, int, float)
_warned: set[str] = set()
_warned_lock = threading.Lock()


def emit_reward(value: float | Mapping[str, float], *, primary: str | None = None) -> None:
    """Record a reward: a number, or named dimensions (``agl.reward.<name>`` each).

    ``agl.reward`` holds the reward that training uses: the number itself, else the dimension
    named by ``primary``, else the only dimension. Several dimensions and no ``primary`` leave it
    unset (no silent pick); adapters then see a reward span without a primary value. ``primary``
    is ignored for a plain number. A value that is not a number, or a ``primary`` that names no
    dimension, or no dimension at all, raises at once, even outside a rollout: a lost reward would
    otherwise go unnoticed.
    NaN or infinity raises too (`ValueError`): a store keeps neither, and the runner refuses both.
    """
    attributes: dict[str, Any] = {semconv.SPAN_KIND: "reward"}
    if isinstance(value, Mapping):
        dimensions = {str(name): _number(score) for name, score in value.items()}
        if not dimensions:  # a reward span with no value: the reward would be lost without a word
            raise ValueError("a reward of named dimensions needs at least one dimension")
        if primary is not None and primary not in dimensions:
            raise ValueError(f"primary reward {primary!r} is not one of {sorted(dimensions)}")
        attributes.update({semconv.REWARD_PREFIX + name: score for name, score in dimensions.items()})
        if primary is None and len(dimensions) == 1:
            primary = next(iter(dimensions))
        if primary is not None:
            attributes[semconv.REWARD] = dimensions[primary]
    else:
        attributes[semconv.REWARD] = _number(value)
    _emit("emit_reward", "agl.reward", attributes)


def emit_message(message: str, *, role: str | None = None) -> None:
    """Record a line of text (a log line, a user turn) in the rollout's span tree."""
    attributes = {
        semconv.SPAN_KIND: "message",
        semconv.MESSAGE: message if isinstance(message, str) else _text(message),
    }
    if role is not None:
        attributes[semconv.MESSAGE_ROLE] = role
    _emit("emit_message", "agl.message", attributes)


def emit_object(value: Any) -> None:
    """Record any value as JSON text (``agl.object``); what JSON cannot hold is written as a string."""
    _emit("emit_object", "agl.object", {semconv.SPAN_KIND: "object", semconv.OBJECT: _to_json(value)})


def emit_exception(error: BaseException) -> None:
    """Record an error that the agent handled (or is about to re-raise): an ERROR span with the
    standard ``exception`` event (type, message, stack trace)."""
    tracer = _tracer("emit_exception")
    if tracer is None:
        return
    span = tracer.start_span("agl.exception", attributes={semconv.SPAN_KIND: "exception"})
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end()


def emit_annotation(**attributes: Any) -> None:
    """Record attributes of the agent's own (a tag, a score breakdown) as one span. Scalars and
    lists of one scalar type are kept as they are, anything else as JSON; None values are skipped.
    Use ``**{"dotted.name": value}`` for namespaced keys."""
    values = {key: _attribute(value) for key, value in attributes.items() if value is not None}
    _emit("emit_annotation", "agl.annotation", {**values, semconv.SPAN_KIND: "annotation"})


class Operation(AbstractContextManager["Operation"]):
    """A named step of the agent as a span, current while it runs, so LLM calls and emitters
    inside it become its children. Inputs and output are stored as JSON; an exception marks the
    span ERROR and propagates.

    As a context manager it is single-use; as a decorator it opens a fresh span per call."""

    def __init__(self, name: str | None = None, *, inputs: Any = None) -> None:
        self.name = name
        self.inputs = inputs
        self.span: trace.Span | None = None
        self._scope: AbstractContextManager[trace.Span] | None = None

    def __enter__(self) -> Operation:
        tracer = _tracer("operation")
        if tracer is not None:
            attributes: dict[str, Any] = {semconv.SPAN_KIND: "operation"}
            if self.inputs is not None:
                attributes[semconv.OPERATION_INPUT] = _to_json(self.inputs)
            self._scope = tracer.start_as_current_span(self.name or "operation", attributes=attributes)
            self.span = self._scope.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._scope is not None:
            self._scope.__exit__(*exc_info)

    def set_output(self, value: Any) -> None:
        """Record the step's result (JSON)."""
        if self.span is not None:
            self.span.set_attribute(semconv.OPERATION_OUTPUT, _to_json(value))

    def __call__(self, function: F) -> F:
        """Wrap a sync or async function: its arguments are the inputs, its return value the output."""
        if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
            raise TypeError(
                f"operation cannot wrap the generator {function.__qualname__!r}: its span would end before the "
                "first item; use `with operation(...)` inside it"
            )
        name = self.name or function.__qualname__
        inputs = _arguments_of(function)
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with Operation(name, inputs=inputs(args, kwargs)) as op:
                    result = await function(*args, **kwargs)
                    op.set_output(result)
                    return result

            return cast(F, run_async)

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            with Operation(name, inputs=inputs(args, kwargs)) as op:
                result = function(*args, **kwargs)
                op.set_output(result)
                return result

        return cast(F, run)


@overload
def operation(name: F, /) -> F: ...
@overload
def operation(name: str | None = None, /, *, inputs: Any = None) -> Operation: ...
def operation(name: str | Callable[..., Any] | None = None, /, *, inputs: Any = None) -> Any:
    """``with operation("plan", inputs=...) as op:``, ``@operation``, ``@operation("plan")``.

    A decorated function's span is named after the function unless a name is given; its inputs
    are the call's arguments (``self``/``cls`` left out), so ``inputs=`` is for the ``with`` form."""
    if callable(name):
        return Operation()(name)
    return Operation(name, inputs=inputs)


def agl_tracing_active() -> bool:
    """Whether spans started now reach agl: the global provider is an SDK ``TracerProvider``
    with agl's `RolloutSpanProcessor` (added by `setup_tracing`, the ``agl`` configurator, or
    by hand). Looks at the provider's processors, not at a flag, so every set-up path counts."""
    if "opentelemetry.sdk.trace" not in sys.modules:  # no SDK loaded: no SDK provider exists
        return False
    from opentelemetry.sdk.trace import TracerProvider

    from agl.core.tracing.processor import has_rollout_processor

    provider = trace.get_tracer_provider()
    return isinstance(provider, TracerProvider) and has_rollout_processor(provider)


def _tracer(emitter: str) -> trace.Tracer | None:
    if agl_tracing_active():
        if current_rollout() is None and rollouts_open():
            _warn_once(
                f"{emitter} outside",
                "agl %s ran outside any rollout while rollouts run in this process, so it is filed under the "
                "process's own rollout: a thread started before the rollout (a long-lived worker) does not "
                "carry it; hand it the work through agl.core.tracing.run_in_context (threads and thread-pool "
                "tasks started inside the rollout, asyncio tasks and asyncio.to_thread carry it already).",
                emitter,
            )
        return agl_tracer()
    _warn_once(
        emitter,
        "agl %s did nothing: agl tracing is not set up in this process. Run the agent through an agl "
        "runner or `opentelemetry-instrument`, or call agl.core.tracing.setup_tracing() first.",
        emitter,
    )
    return None


def _warn_once(key: str, message: str, *arguments: Any) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message, *arguments)


def _emit(emitter: str, name: str, attributes: Mapping[str, Any]) -> None:
    tracer = _tracer(emitter)
    if tracer is not None:
        tracer.start_span(name, attributes=attributes).end()


def is_reward_number(value: object) -> bool:
    """A real number: numpy scalars too, and, as True is a reward of 1.0, numpy's booleans (what
    comparing numpy values gives), which are no `numbers.Real`."""
    kind = type(value)
    return isinstance(value, numbers.Real) or (kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_"))


def _number(value: Any) -> float:
    if not is_reward_number(value):
        raise TypeError(f"a reward must be a number, not {type(value).__name__}: {_text(value)!r}")
    try:
        number = float(value)
    except OverflowError:  # an int past float's range
        number = math.inf
    if not math.isfinite(number):  # stored as null: the reward would be silently lost
        raise ValueError(f"a reward must be a finite number, not {_text(value)[:40]}")
    return number


def _arguments_of(function: Callable[..., Any]) -> Callable[[tuple[Any, ...], dict[str, Any]], dict[str, Any]]:
    """How to name a call's arguments (``self``/``cls`` left out: they are not inputs)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have no signature
        return lambda args, kwargs: {"args": list(args), **kwargs}

    def named(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        try:
            bound = signature.bind_partial(*args, **kwargs)
        except TypeError:  # a bad call: the function itself will say so
            return {"args": list(args), **kwargs}
        return {key: value for key, value in bound.arguments.items() if key not in ("self", "cls")}

    return named


def _attribute(value: Any) -> Any:
    """OpenTelemetry holds scalars and lists of one scalar type; anything else goes in as JSON."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, list | tuple) and len({type(item) for item in value}) == 1 and isinstance(value[0], _SCALARS):
        return list(value)
    return _to_json(value)


def _to_json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=_text)
    except Exception:  # a cycle, keys that are not strings: keep what can be said
        return json.dumps(_text(value), ensure_ascii=False)


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"
