"""The store's HTTP wire format, shared by the server and the ``http://`` client.

Request bodies are pydantic models (so the server's OpenAPI spec documents them); optional
update fields use "was the field sent" (``model_fields_set``) to keep the protocol's UNSET
meaning. Errors travel as `ErrorBody` and are raised again as the same typed `AglError`.
"""

from __future__ import annotations

import re
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from agl.core.errors import (
    AglError,
    AttemptNotFound,
    InvalidInput,
    InvalidTransition,
    NotFound,
    ResourcesNotFound,
    RolloutNotFound,
    WorkerNotFound,
)
from agl.core.store.base import UNSET
from agl.core.types import (
    AttemptStatus,
    NamedResources,
    RolloutConfig,
    RolloutMode,
    RolloutRequest,
    RolloutStatus,
    Span,
)
from agl.core.types.fields import Id

API_PREFIX = "/v1/agl"
LONG_POLL_MAX_SECONDS = 20.0
"""The longest one wait request holds; clients ask again until their own timeout."""

_UNSENDABLE = re.compile(r"[^\t\x20-\x7e]")
"""What a token must not hold: header values are visible ASCII, spaces and tabs (RFC 9110 §5.5)."""


def unsendable_token(token: str) -> str | None:
    """Why no HTTP header can carry ``token`` (None when one can), naming the kind of character,
    never the secret. The server refuses such a token at start-up and the client when opened: one
    read from a file with its line break failed every request with a bare 400 "Invalid HTTP
    request", and a non-ASCII one was sent as Latin-1 and compared as UTF-8 (a 401 for the right token)."""
    found = _UNSENDABLE.search(token.strip(" \t"))
    if found is None:
        return None
    character = found.group()
    if character in "\r\n":
        kind = "a line break"
    else:
        kind = "a control character" if character.isascii() else "a non-ASCII character"
    return f"the token has a character an HTTP header cannot carry ({kind}): use printable ASCII"


T = TypeVar("T")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnqueueManyBody(_Body):
    requests: list[RolloutRequest]


class StartRolloutBody(_Body):
    input: Any
    mode: RolloutMode | None = None
    resources_id: str | None = None
    config: RolloutConfig | None = None
    metadata: dict[str, Any] | None = None
    worker_id: str | None = None
    rollout_id: Id | None = None


class DequeueBody(_Body):
    worker_id: str | None = None


class StartAttemptBody(_Body):
    worker_id: str | None = None


class WaitBody(_Body):
    rollout_ids: list[str]
    timeout: float | None = Field(default=None, ge=0)


class QueryRolloutsBody(_Body):
    status_in: list[RolloutStatus] | None = None
    rollout_id_in: list[str] | None = None
    mode: RolloutMode | None = None
    resources_id: str | None = None
    sort_by: str = "start_time"
    sort_order: str = "asc"
    limit: int | None = None
    offset: int = 0


class RolloutUpdateBody(_Body):
    """Only the fields sent are changed."""

    input: Any = None
    mode: RolloutMode | None = None
    resources_id: str | None = None
    status: RolloutStatus | None = None
    config: RolloutConfig | None = None
    metadata: dict[str, Any] | None = None


class AttemptUpdateBody(_Body):
    """Only the fields sent are changed."""

    status: AttemptStatus | None = None
    worker_id: str | None = None
    last_heartbeat_time: float | None = None
    metadata: dict[str, Any] | None = None


class SpanBatchBody(_Body):
    spans: list[Span]


class ObservedSpansBody(_Body):
    spans: list[Span]
    new_rollout_metadata: dict[str, dict[str, Any]] | None = None


class ResourcesBody(_Body):
    resources: NamedResources


class WorkerHeartbeatBody(_Body):
    heartbeat_stats: dict[str, Any] | None = None


class SequenceIdBody(BaseModel):
    sequence_id: int


class DeadlinesBody(BaseModel):
    enforced: int


class PageBody(BaseModel, Generic[T]):
    items: list[T]
    total: int
    offset: int
    limit: int | None


class ErrorBody(BaseModel):
    """Every error response: the error's class name and a one-line message."""

    error: str
    message: str
    detail: dict[str, Any] = Field(default_factory=dict)


def sent_fields(body: BaseModel) -> dict[str, Any]:
    """The fields a client sent, as keyword arguments; the rest stay UNSET."""
    return {name: getattr(body, name) for name in body.model_fields_set}


def unset_to_absent(**values: Any) -> dict[str, Any]:
    """Drop UNSET arguments, so the request body carries only what the caller set."""
    return {key: value for key, value in values.items() if value is not UNSET}


_NOT_FOUND: dict[str, type[NotFound]] = {
    cls.__name__: cls for cls in (RolloutNotFound, AttemptNotFound, ResourcesNotFound, WorkerNotFound)
}


def error_body(error: AglError) -> ErrorBody:
    detail: dict[str, Any] = {}
    if isinstance(error, NotFound):
        detail = {"object_id": error.object_id}
    elif isinstance(error, InvalidTransition):
        detail = {
            "kind": error.kind,
            "object_id": error.object_id,
            "current": error.current,
            "requested": error.requested,
        }
    return ErrorBody(error=type(error).__name__, message=str(error), detail=detail)


def error_from_body(body: ErrorBody) -> AglError:
    """The typed error an `ErrorBody` describes; unknown kinds become a plain `AglError`."""
    if body.error in _NOT_FOUND and "object_id" in body.detail:
        return _NOT_FOUND[body.error](body.detail["object_id"])
    if body.error == "InvalidTransition" and {"kind", "object_id", "current", "requested"} <= body.detail.keys():
        return InvalidTransition(**body.detail)
    if body.error in (
        "InvalidInput",
        "StoreUrlError",
        "OtlpDecodeError",
        "BodyTooLarge",
        "OtlpBodyTooLarge",
        "OtlpUnsupportedMediaType",
    ):
        return InvalidInput(body.message)
    return AglError(body.message)
