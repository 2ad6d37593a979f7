"""A plain agent on the openai client alone: it knows nothing of agl. Under
``opentelemetry-instrument`` every model call lands in agl's store, with no code change:

    AGL_CAPTURE_TOKEN_IDS=1 OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=… \\
        opentelemetry-instrument python examples/openai_agent.py
    agl rollouts list && agl spans ro-proc-…

It asks a calculator question (a tool-call round trip: the model calls ``add``, the agent runs it
and sends the result back), then asks for a greeting as a stream. The model is ``$OPENAI_MODEL``
(default ``agl-toy``; ``agl serve MODEL`` answers only to its served name: serve with
``--served-model-name agl-toy``, or set the variable to the name ``/v1/models`` lists; the scripted
server agl's tests use answers to any name).
"""

from __future__ import annotations

import json
import os
from typing import Any

from openai import OpenAI

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    }
]


def add(a: int, b: int) -> int:
    return a + b


def solve(client: OpenAI, model: str, question: str) -> str:
    """Ask, run the tools the model calls, and send their results back until it answers."""
    messages: list[Any] = [
        {"role": "system", "content": "You are a calculator. Use the add tool for sums."},
        {"role": "user", "content": question},
    ]
    while True:
        answer = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, max_tokens=256)
        reply = answer.choices[0].message
        if not reply.tool_calls:
            return reply.content or ""
        messages.append(reply.model_dump(exclude_none=True))
        for call in reply.tool_calls:
            result = add(**json.loads(call.function.arguments))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": str(result)})


def greet(client: OpenAI, model: str) -> str:
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=256,
        stream=True,
        stream_options={"include_usage": True},  # the token counts come in a last chunk
    )
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def main() -> None:
    client = OpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY from the environment
    model = os.environ.get("OPENAI_MODEL", "agl-toy")
    print(solve(client, model, "What is 17 + 25?"))
    print(greet(client, model))


if __name__ == "__main__":
    main()
