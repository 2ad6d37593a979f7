"""The OTLP/JSON encoding of a protobuf OTLP message, for tests and benchmarks that post JSON bodies."""

from __future__ import annotations

import base64
from typing import Any

_ID_KEYS = ("traceId", "spanId", "parentSpanId")
_INT64_KEYS = ("startTimeUnixNano", "endTimeUnixNano", "timeUnixNano", "intValue")


def otlp_json_document(message: Any, *, int64_as_numbers: bool = False, uppercase_ids: bool = False) -> Any:
    """The OTLP/JSON encoding: protobuf's JSON mapping (lowerCamelCase keys, 64-bit integers as decimal
    strings) with integer enums and hex ids instead of base64, as the OTLP specification deviates."""
    from google.protobuf.json_format import MessageToDict

    document = MessageToDict(message, use_integers_for_enums=True)

    def rewrite(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                rewrite(item)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in _ID_KEYS:
                    hex_id = base64.b64decode(value).hex()
                    node[key] = hex_id.upper() if uppercase_ids else hex_id
                elif key in _INT64_KEYS and int64_as_numbers:
                    node[key] = int(value)
                else:
                    rewrite(value)

    rewrite(document)
    return document
