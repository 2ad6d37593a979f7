"""The benchmark workload, shared by agl's and the anchor's store benchmarks (stdlib only).

A span looks like a real LLM-call span: 30 attributes, two of them a few KB of messages.
"""

from __future__ import annotations

import json

BATCH = 100
SPANS_PER_ROLLOUT = 10
QUERY_SPANS_PER_ROLLOUT = 4

_QUESTION = "What is the capital of the country whose flag has a red maple leaf? " * 8


def task_input(i: int) -> dict[str, object]:
    return {"id": i, "question": _QUESTION[:200], "answer": "Ottawa"}


def llm_attributes(i: int) -> dict[str, object]:
    messages = [
        {"role": "system", "content": "You are a careful geography tutor. " * 20},
        {"role": "user", "content": _QUESTION},
        {"role": "assistant", "content": "Let me think step by step. " * 20},
        {"role": "user", "content": "Answer in one word."},
    ]
    attributes: dict[str, object] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "bench-model",
        "gen_ai.response.model": "bench-model",
        "gen_ai.response.id": f"chatcmpl-{i}",
        "gen_ai.request.temperature": 0.7,
        "gen_ai.request.top_p": 0.95,
        "gen_ai.request.max_tokens": 256,
        "gen_ai.usage.input_tokens": 812,
        "gen_ai.usage.output_tokens": 64,
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.input.messages": json.dumps(messages),
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "content": "Ottawa. " * 120}]),
        "agl.llm.call": True,
        "agl.agent.name": "tutor",
        "server.address": "127.0.0.1",
        "server.port": 8000,
    }
    for k in range(30 - len(attributes)):
        attributes[f"bench.extra.{k}"] = f"value-{k}-{i}"
    return attributes
