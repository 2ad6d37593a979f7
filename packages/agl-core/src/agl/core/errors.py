"""Typed errors raised by agl; each carries the offending value so callers (and the
store server) can answer with a precise one-line message."""

from __future__ import annotations

from typing import Any


class AglError(Exception):
    """Base of every error agl raises on purpose."""


class InvalidInput(AglError, ValueError):
    """A value given to agl is malformed: a bad status, an oversized span, an unknown sort key."""


class StoreUrlError(InvalidInput):
    """A store URL that names no known backend or cannot be parsed."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"invalid store URL {url!r}: {reason}")
        self.url = url


class StoreUnavailable(AglError):
    """The store server could not be reached or kept failing within the retry budget."""


class NotFound(AglError, LookupError):
    """An id that names nothing in the store."""

    kind = "object"

    def __init__(self, object_id: str) -> None:
        super().__init__(f"{self.kind} {object_id!r} not found")
        self.object_id = object_id


class RolloutNotFound(NotFound):
    kind = "rollout"


class AttemptNotFound(NotFound):
    kind = "attempt"


class ResourcesNotFound(NotFound):
    kind = "resources"


class WorkerNotFound(NotFound):
    kind = "worker"


class MissingResource(AglError, LookupError):
    """An agent asked (by parameter name) for a resource the rollout's resources do not hold."""


class InvalidTransition(AglError):
    """A status change the state machine forbids, such as leaving a terminal state."""

    def __init__(self, kind: str, object_id: str, current: Any, requested: Any) -> None:
        super().__init__(f"{kind} {object_id!r} cannot go from {current!r} to {requested!r}")
        self.kind = kind
        self.object_id = object_id
        self.current = current
        self.requested = requested
