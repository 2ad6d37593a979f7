"""Agents a runner can run: subclass `LitAgent`, or decorate a function with `@rollout`.

An agent gets one task, the resources of the rollout (model endpoints, prompts) and the rollout
itself, and returns a reward (``float``) or ``None`` when it reports rewards itself. The runner,
not the agent, deals with the store, tracing context, timeouts and attempt status.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, overload

from agl.core.errors import MissingResource
from agl.core.types import LLM, AttemptedRollout, NamedResources, PromptTemplate, ProxyLLM

AgentFunction = Callable[..., Any]
"""A function whose parameters are named ``task``, ``llm``, ``prompt_template``, ``rollout``,
``resources`` or a resource key; it returns ``float | None`` (or an awaitable of one)."""


_TYPED_PARAMETERS: dict[str, type] = {"llm": LLM, "prompt_template": PromptTemplate}
"""Parameters filled by the kind of resource, not only by the key: never with another kind."""


TASK_HINT = "; the rollout's input is passed only to a parameter named 'task'"
"""Added when an agent has no ``task`` parameter: it likely named its input otherwise."""


class LitAgent:
    """Override `rollout` (sync: the runner calls it in a worker thread) or `rollout_async`.

    ``resources`` are exactly what the store holds: a `ProxyLLM` there is a template, so pass it
    through `resolve_llm` to get the endpoint routed to this rollout and attempt.
    """

    def __init_subclass__(cls, **options: Any) -> None:
        """Refuse ``async def rollout`` when the class is defined: the runner calls `rollout` in a
        thread, so it would get a coroutine that nothing awaits instead of a reward."""
        super().__init_subclass__(**options)
        if inspect.iscoroutinefunction(cls.__dict__.get("rollout")):
            raise TypeError(f"{cls.__name__}.rollout is async: name it rollout_async (rollout is for sync agents)")

    def __init__(self, name: str | None = None) -> None:
        if not self.is_async and type(self).rollout is LitAgent.rollout:
            raise TypeError(f"{type(self).__name__} must override rollout() or rollout_async()")
        self.name = name or type(self).__name__

    @property
    def name(self) -> str:
        """The agent's name (its class's unless given): also set for a subclass whose own
        ``__init__`` does not call ``super().__init__()``, which every runner would otherwise trip on."""
        return self.__dict__.get("_name") or type(self).__name__

    @name.setter
    def name(self, value: str) -> None:
        self.__dict__["_name"] = value

    @property
    def is_async(self) -> bool:
        """Whether the runner awaits `rollout_async` (several may run at once on its loop)."""
        return type(self).rollout_async is not LitAgent.rollout_async

    def rollout(self, task: Any, resources: NamedResources, rollout: AttemptedRollout) -> float | None:
        raise NotImplementedError

    async def rollout_async(self, task: Any, resources: NamedResources, rollout: AttemptedRollout) -> float | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def resolve_llm(llm: LLM, rollout: AttemptedRollout) -> LLM:
    """A `ProxyLLM` as a plain `LLM` whose endpoint routes (and attributes) calls to this attempt."""
    if not isinstance(llm, ProxyLLM):
        return llm
    return LLM(
        endpoint=llm.base_url(rollout.rollout_id, rollout.attempt.attempt_id),
        model=llm.model,
        api_key=llm.api_key,
        sampling_parameters=llm.sampling_parameters,
    )


class FunctionAgent(LitAgent):
    """A function as an agent; its arguments are chosen by parameter name (see `rollout`)."""

    def __init__(self, function: AgentFunction, name: str | None = None) -> None:
        self.function = function
        self.parameters = _check_parameters(function)
        self._is_async = _is_coroutine_function(function)
        super().__init__(name or _name_of(function))

    @property
    def is_async(self) -> bool:
        return self._is_async

    def rollout(self, task: Any, resources: NamedResources, rollout: AttemptedRollout) -> float | None:
        result: float | None = self.function(**self._arguments(task, resources, rollout))
        return result

    async def rollout_async(self, task: Any, resources: NamedResources, rollout: AttemptedRollout) -> float | None:
        result: float | None = await self.function(**self._arguments(task, resources, rollout))
        return result

    def _arguments(self, task: Any, resources: NamedResources, rollout: AttemptedRollout) -> dict[str, Any]:
        resolved = {
            key: resolve_llm(value, rollout) if isinstance(value, LLM) else value for key, value in resources.items()
        }
        available: dict[str, Any] = {"task": task, "rollout": rollout, "resources": resolved}
        for name, kind in _TYPED_PARAMETERS.items():
            chosen = resolved.get(name)
            if not isinstance(chosen, kind):
                chosen = next((value for value in resolved.values() if isinstance(value, kind)), None)
            if chosen is not None:
                available[name] = chosen
        arguments = {}
        for parameter in self.parameters:
            if parameter.name in available:
                arguments[parameter.name] = available[parameter.name]
            elif parameter.name in resolved and parameter.name not in _TYPED_PARAMETERS:
                arguments[parameter.name] = resolved[parameter.name]
            elif parameter.default is inspect.Parameter.empty:
                raise MissingResource(self._missing(parameter.name, resources))
        return arguments

    def _missing(self, parameter: str, resources: NamedResources) -> str:
        """Why ``parameter`` has nothing to fill it; a resource of its name but of another kind
        (a prompt keyed ``llm``) is named, since passing it would fail later, far from the cause."""
        kind = _TYPED_PARAMETERS.get(parameter)
        if kind is not None and parameter in resources:
            return (
                f"agent {self.name!r} parameter {parameter!r} needs a resource of type {kind.__name__}, but "
                f"the resource {parameter!r} is a {type(resources[parameter]).__name__} and none is of that type"
            )
        hint = "" if any(each.name == "task" for each in self.parameters) else TASK_HINT
        return (
            f"agent {self.name!r} parameter {parameter!r} needs a resource that this rollout's "
            f"resources do not have (they have: {', '.join(resources) or 'nothing'}){hint}"
        )


def _unwrapped(function: AgentFunction) -> AgentFunction:
    while isinstance(function, functools.partial):
        function = function.func
    return function


def _is_coroutine_function(function: AgentFunction) -> bool:
    """`inspect.iscoroutinefunction` that also sees, through partials, an object whose ``__call__``
    is async (called in a thread, it would return a coroutine that nothing awaits)."""
    called = _unwrapped(function)
    called = called if inspect.isroutine(called) else called.__call__
    if inspect.isasyncgenfunction(called) or inspect.isgeneratorfunction(called):
        raise TypeError(
            f"agent {_name_of(function)!r} is a generator; an agent returns its reward (a float or None) "
            "and emits anything else with the agl.core.tracing emitters"
        )
    return inspect.iscoroutinefunction(called)


def _name_of(function: AgentFunction) -> str:
    """The function's name, through partials; a callable object's class name."""
    function = _unwrapped(function)
    return getattr(function, "__name__", None) or type(function).__name__


def _check_parameters(function: AgentFunction) -> list[inspect.Parameter]:
    """Arguments are passed by name, so every parameter must be nameable."""
    parameters = list(inspect.signature(function).parameters.values())
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD, parameter.POSITIONAL_ONLY):
            raise TypeError(f"agent parameter {parameter.name!r} must be passable by name (no *args, **kwargs or /)")
    return parameters


@overload
def rollout(function: AgentFunction, /) -> FunctionAgent: ...
@overload
def rollout(*, name: str | None = None) -> Callable[[AgentFunction], FunctionAgent]: ...
def rollout(
    function: AgentFunction | None = None, /, *, name: str | None = None
) -> FunctionAgent | Callable[[AgentFunction], FunctionAgent]:
    """Turn a sync or async function into a `LitAgent`; use as ``@rollout`` or ``@rollout(name=...)``.

    Each parameter is filled by its name: ``task`` (the rollout's input), ``rollout`` (the
    `AttemptedRollout`), ``resources`` (all of them), ``llm`` (the resource named ``llm``, else
    the first model endpoint; a `ProxyLLM` arrives routed to this attempt), ``prompt_template``
    (likewise for prompts), or any resource key. A required parameter with nothing to fill it
    fails the rollout with an error naming it; one with a default keeps its default.
    """

    def decorate(function: AgentFunction) -> FunctionAgent:
        return FunctionAgent(function, name)

    return decorate(function) if function is not None else decorate
