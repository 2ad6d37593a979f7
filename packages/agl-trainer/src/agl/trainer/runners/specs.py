"""Naming things across a process boundary: an agent as ``module:object``, a store as a URL.

A child process or a Ray actor cannot receive a live agent or store; it imports the one and
opens the other by name.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from agl.core.agent import FunctionAgent, LitAgent
from agl.core.store.base import LightningStore


def load_object(spec: str) -> Any:
    """Import ``module:attribute.path``; the current directory counts, as it does for ``python -m``."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected module:attribute, not {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    found: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        found = getattr(found, part)
    return found


def load_agent(spec: str) -> LitAgent:
    found = load_object(spec)
    if not isinstance(found, LitAgent):
        raise TypeError(f"{spec} is a {type(found).__name__}, not an agent (LitAgent or @rollout function)")
    return found


def as_agent(agent: LitAgent | str | None) -> LitAgent:
    """The agent object for runners in this process (a spec is imported here)."""
    if agent is None:
        raise ValueError("this runner mode needs an agent (pass it to fit or to Trainer)")
    return load_agent(agent) if isinstance(agent, str) else agent


def agent_spec(agent: LitAgent | str) -> str:
    """The ``module:name`` under which another process can import ``agent``: a module-level
    agent is found in its module; anything else (a local, ``__main__``) must be named by the caller."""
    if isinstance(agent, str):
        return agent
    home = agent.function.__module__ if isinstance(agent, FunctionAgent) else type(agent).__module__
    module = sys.modules.get(home)
    if home != "__main__" and module is not None:
        for name, value in vars(module).items():
            if value is agent:
                return f"{home}:{name}"
    raise ValueError(
        f"cannot name {agent!r} for another process: pass the agent as 'module:object' "
        "(an importable module, not __main__)"
    )


def remote_agent_spec(agent: LitAgent | str | None, mode: str) -> str:
    """`agent_spec` for runners of ``mode`` in other processes, which need an agent; a spec is
    imported once here, so that an import error shows now rather than in every child."""
    if agent is None:
        raise ValueError(f"runner_mode={mode!r} needs an agent, as 'module:object' or a module-level agent")
    if isinstance(agent, str):
        if agent.partition(":")[0] == "__main__":  # the children's __main__ is the worker, not this script
            raise ValueError(
                f"runner_mode={mode!r} cannot import {agent!r} in another process: "
                "move the agent to an importable module and name it as 'module:object'"
            )
        load_agent(agent)
    return agent_spec(agent)


def shared_store_url(store: LightningStore) -> str | None:
    """A URL another process on this machine can open for the same store; ``None`` for an in-memory one."""
    from agl.core.store.http import HttpLightningStore
    from agl.core.store.sqlite import SqliteLightningStore

    if isinstance(store, SqliteLightningStore):
        return f"sqlite:///{store.path.resolve()}"
    if isinstance(store, HttpLightningStore):
        return store.url
    return None


def shared_store_token(store: LightningStore) -> str | None:
    """The token a process opening `shared_store_url` needs: a store server client's own (which may
    have been given in code, not in ``$AGL_STORE_TOKEN``); ``None`` for any other store."""
    from agl.core.store.http import HttpLightningStore

    return store.token if isinstance(store, HttpLightningStore) else None


def child_python_path() -> str:
    """``PYTHONPATH`` for a child interpreter that must import what this one imports (the agent's
    module may live in a test folder or the current directory rather than in site-packages)."""
    entries = [os.path.abspath(entry or os.curdir) for entry in sys.path]
    return os.pathsep.join(dict.fromkeys(entries))
