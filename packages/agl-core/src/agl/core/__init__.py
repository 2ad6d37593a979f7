"""agl core: the data model, the stores, the tracing runtime.

    from agl.core import open_store
    store = open_store()            # $AGL_STORE, else sqlite:///.agl/store.db
    store = open_store_sync()       # the same store, with blocking calls (no event loop needed)

Names are imported on first use (PEP 562), so importing a submodule (the tracing runtime at
interpreter start-up, say) does not pay for pydantic models and stores it does not use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from agl.core.version import __version__

_ERRORS = (
    "AglError",
    "AttemptNotFound",
    "InvalidInput",
    "InvalidTransition",
    "MissingResource",
    "NotFound",
    "ResourcesNotFound",
    "RolloutNotFound",
    "StoreUnavailable",
    "StoreUrlError",
)
_STORE = ("LightningStore", "Page", "SyncStore", "open_store", "open_store_sync")
_AGENTS = ("LitAgent", "rollout")
_TYPES = (
    "LLM",
    "Attempt",
    "AttemptStatus",
    "AttemptedRollout",
    "NamedResources",
    "PromptTemplate",
    "ProxyLLM",
    "Resource",
    "ResourcesUpdate",
    "Rollout",
    "RolloutConfig",
    "RolloutMode",
    "RolloutRequest",
    "RolloutStatus",
    "Span",
    "SpanEvent",
    "SpanLink",
    "SpanResource",
    "SpanStatus",
    "Triplet",
    "Worker",
    "WorkerStatus",
)
_EXPORTS = {
    **dict.fromkeys(_ERRORS, "agl.core.errors"),
    **dict.fromkeys(_STORE, "agl.core.store"),
    **dict.fromkeys(_TYPES, "agl.core.types"),
    **dict.fromkeys(_AGENTS, "agl.core.agent"),
    "Runner": "agl.core.runner",
}
__all__ = ["__version__", *_ERRORS, *_STORE, *_TYPES, *_AGENTS, "Runner"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agl.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # the names for type checkers and IDEs; at run time __getattr__ serves them
    from agl.core.agent import LitAgent, rollout
    from agl.core.errors import (
        AglError,
        AttemptNotFound,
        InvalidInput,
        InvalidTransition,
        MissingResource,
        NotFound,
        ResourcesNotFound,
        RolloutNotFound,
        StoreUnavailable,
        StoreUrlError,
    )
    from agl.core.runner import Runner
    from agl.core.store import LightningStore, Page, SyncStore, open_store, open_store_sync
    from agl.core.types import (
        LLM,
        Attempt,
        AttemptedRollout,
        AttemptStatus,
        NamedResources,
        PromptTemplate,
        ProxyLLM,
        Resource,
        ResourcesUpdate,
        Rollout,
        RolloutConfig,
        RolloutMode,
        RolloutRequest,
        RolloutStatus,
        Span,
        SpanEvent,
        SpanLink,
        SpanResource,
        SpanStatus,
        Triplet,
        Worker,
        WorkerStatus,
    )
