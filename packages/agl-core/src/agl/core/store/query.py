"""Validation shared by every backend's ``query_*`` methods: sort keys, order, page bounds."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from agl.core.errors import InvalidInput
from agl.core.store.base import Page
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
    if limit is not None and not 0 <= limit <= MAX_INT64:
        raise InvalidInput(f"limit must be between 0 and {MAX_INT64}, got {limit}")
    if not 0 <= offset <= MAX_INT64:
        raise InvalidInput(f"offset must be between 0 and {MAX_INT64}, got {offset}")


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
