"""The agl data model (pydantic v2, frozen: change things through the store)."""

from agl.core.types.resources import LLM, NamedResources, PromptTemplate, ProxyLLM, Resource, ResourcesUpdate
from agl.core.types.rollouts import (
    ATTEMPT_STATUSES,
    ROLLOUT_STATUSES,
    TERMINAL_ATTEMPT_STATUSES,
    TERMINAL_ROLLOUT_STATUSES,
    Attempt,
    AttemptedRollout,
    AttemptStatus,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutRequest,
    RolloutStatus,
)
from agl.core.types.spans import Span, SpanEvent, SpanLink, SpanResource, SpanStatus
from agl.core.types.triplets import Triplet
from agl.core.types.workers import Worker, WorkerStatus

__all__ = [
    "ATTEMPT_STATUSES",
    "LLM",
    "ROLLOUT_STATUSES",
    "TERMINAL_ATTEMPT_STATUSES",
    "TERMINAL_ROLLOUT_STATUSES",
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
]
