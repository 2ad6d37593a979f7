"""Responses serialised once, by pydantic-core, straight to bytes.

Routes return these instead of models: FastAPI would otherwise validate every response
against its ``response_model`` and serialise it a second time, which costs more than the store
call. The route's ``response_model`` still documents the shape in the OpenAPI spec.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from fastapi import Response
from pydantic import TypeAdapter

from agl.core.store.base import Page
from agl.core.store.wire import PageBody


class JsonBytes(Response):
    media_type = "application/json"


@cache
def _adapter(kind: Any) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def respond(value: Any, kind: Any) -> JsonBytes:
    """Serialise ``value`` as ``kind`` (a model or a typing form such as ``list[Rollout]``)."""
    return JsonBytes(_adapter(kind).dump_json(value))


def respond_page(page: Page[Any], item: type) -> JsonBytes:
    body = PageBody[item].model_construct(items=page.items, total=page.total, offset=page.offset, limit=page.limit)  # type: ignore[valid-type]
    return JsonBytes(body.model_dump_json())
