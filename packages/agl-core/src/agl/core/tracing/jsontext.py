"""`json_text`: the JSON text of a span attribute (messages, tool definitions, arguments, results).

Every model call of an instrumented agent serialises its conversation a few times, so this is on
the hot path of tracing: orjson does it in one C call, several times faster than the standard
encoder on small messages (whose cost is mostly its Python-level set-up). What orjson refuses
(integers beyond 64 bits, say) goes through the standard encoder instead, and a key neither has a
form for (a tuple, say, in a retrieved document's metadata) is written as its ``str()`` rather than
losing the whole attribute.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS


def json_text(value: Any, default: Callable[[Any], Any] = str) -> str:
    """``value`` as compact JSON text; ``default`` turns what JSON does not know into what it does."""
    try:
        return orjson.dumps(value, default=default, option=_OPTIONS).decode()
    except TypeError:  # orjson's JSONEncodeError is one
        pass
    try:
        return json.dumps(value, ensure_ascii=False, default=default)
    except TypeError:  # "keys must be str, int, float, bool or None"
        return json.dumps(_str_keys(value), ensure_ascii=False, default=lambda found: _str_keys(default(found)))


def _str_keys(value: Any) -> Any:
    """``value`` with every key JSON has no form for as its ``str()``."""
    if isinstance(value, Mapping):
        return {
            key if key is None or isinstance(key, str | int | float | bool) else str(key): _str_keys(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_str_keys(item) for item in value]
    return value
