"""Reading an OpenAI-style server-sent event stream in tests: the chunks of one streamed request."""

from __future__ import annotations

import json
from typing import Any

import httpx


def stream(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON chunks of ``POST path`` with ``body`` and ``"stream": true`` (``[DONE]`` left out)."""
    chunks = []
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line.removeprefix("data: ")))
    return chunks
