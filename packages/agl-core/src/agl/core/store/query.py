"""Validation shared by every backend's ``query_*`` methods: sort keys, order, page bounds."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from agl.core.errors import InvalidInput
from agl.core.store.base import Page
from agl.core.types.rollouts import ROLLOUT_MODES, ROLLOUT_STATUSES, check_status
from agl.core.types.spans import MAX_INT64

T = TypeVar("T")

SORT_KEYS: dict[str, tuple[str, ...]] = {
    "rollouts": ("start_time", "end_time", "rollout_id", "status"),
    "attempts": ("sequence_id", "start_time", "end_time", "status"),
    "spans": ("sequence_id", "start_time", "end_time", "name"),
    "resources": ("update_time", "create_time", "version", "resources_id"),
    "workers": ("worker_id", "last_heartbeat_time", "status"),
}


def check_query(kind: str, sort_by: str, sort_order: str, limit: int | None, offset: int) -> None:
    """Raise `InvalidInput` naming the first bad paging or sorting argument."""
    allowed = SORT_KEYS[kind]
    if sort_by not in allowed:
        raise InvalidInput(f"cannot sort {kind} by {sort_by!r}; expected one of {', '.join(allowed)}")
    if sort_order not in ("asc", "desc"):
        raise InvalidInput(f"invalid sort_order {sort_order!r}; expected 'asc' or 'desc'")
    if limit is not None and not _count(limit):
        raise InvalidInput(f"limit must be an integer between 0 and {MAX_INT64} or None, got {limit!r}")
    if not _count(offset):
        raise InvalidInput(f"offset must be an integer between 0 and {MAX_INT64}, got {offset!r}")


def _count(value: Any) -> bool:
    """An int in range; not a bool (an int to Python, refused over HTTP) nor a float or text
    (which crashed the in-process backends when they sliced or bound it)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT64


def check_id(what: str, value: Any, *, optional: bool = False) -> None:
    """Ids are text. Another type was kept as given in memory, bound as is by SQLite, and sent as
    its ``str()`` over HTTP (a worker ``None`` became the worker "None"). Text with a lone surrogate
    (``"\\ud800"``, as ``surrogateescape`` decoding makes) was kept by memory and crashed SQLite and
    the HTTP client with a `UnicodeEncodeError`: UTF-8 cannot carry it."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise InvalidInput(f"{what} {value!r} holds a lone surrogate, which UTF-8 cannot carry") from None
    elif not (optional and value is None):
        raise InvalidInput(f"{what} must be a string, got {type(value).__name__}")


def check_rollout_filters(status_in: Any, rollout_id_in: Any, mode: Any, resources_id: Any) -> None:
    """`query_rollouts`' filters, checked alike by every backend (the HTTP client before sending)."""
    check_filter("status_in", status_in, ROLLOUT_STATUSES)
    check_filter("rollout_id_in", rollout_id_in)
    if mode is not None:
        check_status("rollout mode", mode, ROLLOUT_MODES)
    check_id("resources_id", resources_id, optional=True)


def check_filter(what: str, values: Any, allowed: tuple[str, ...] | None = None) -> None:
    """A filter is a list of text (of ``allowed`` values when given), as the server's models require:
    in process, a string was read as its letters and an unknown status matched nothing."""
    if values is None:
        return
    if isinstance(values, str) or not isinstance(values, list | tuple | set | frozenset):
        raise InvalidInput(f"{what} must be a list, got {type(values).__name__}")
    for value in values:
        if allowed is None:
            check_id(f"{what} value", value)
        elif value not in allowed:
            raise InvalidInput(f"invalid {what} value {value!r}; expected one of {', '.join(allowed)}")


def sort_and_page(
    items: Iterable[T], key: Callable[[T], Any], sort_order: str, limit: int | None, offset: int
) -> Page[T]:
    """Sort in memory the way SQL does (``None`` first when ascending), stable on insertion order."""
    matched = list(items)
    matched.sort(key=lambda item: _null_first(key(item)), reverse=sort_order == "desc")
    end = None if limit is None else offset + limit
    return Page(items=matched[offset:end], total=len(matched), offset=offset, limit=limit)


def _null_first(value: Any) -> tuple[bool, Any]:
    return (value is not None, value if value is not None else 0)
