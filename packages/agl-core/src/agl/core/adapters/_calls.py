"""The canonical LLM-call spans of one attempt, read back into plain values (shared by the adapters)."""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agl.core.errors import InvalidInput
from agl.core.tracing import semconv
from agl.core.types.spans import Span


@dataclass(frozen=True)
class Call:
    """One model call as recorded: messages parsed from JSON, token ids exactly as the span holds them."""

    span: Span
    agent_name: str | None
    prompt: list[Any] | None
    response: list[Any] | None
    prompt_token_ids: list[int] | None
    response_token_ids: list[int] | None
    response_logprobs: list[float] | None


def in_order(spans: Sequence[Span]) -> list[Span]:
    """The spans of one attempt by sequence id (start order); spans of several attempts are refused,
    since their sequence ids are not comparable."""
    attempts = {(span.rollout_id, span.attempt_id) for span in spans}
    if len(attempts) > 1:
        raise InvalidInput(f"spans of one attempt expected, got {len(attempts)}: {sorted(attempts)}")
    return sorted(spans, key=lambda span: (span.sequence_id, span.start_time or 0.0))


def llm_calls(ordered: Sequence[Span], agent_match: str | None) -> list[Call]:
    """The LLM-call spans in order, only those of agents whose name matches ``agent_match`` (a
    regex, searched) when given. A call's agent is its own ``agl.agent.name``, else that of the
    nearest ancestor having one: frameworks name the agent on an outer span, not on each call."""
    pattern = re.compile(agent_match) if agent_match is not None else None
    by_id = {span.span_id: span for span in ordered}
    calls = []
    for span in ordered:
        if span.attributes.get(semconv.LLM_CALL) is not True:
            continue
        agent_name = _agent_name(span, by_id)
        if pattern is not None and (agent_name is None or not pattern.search(agent_name)):
            continue
        attributes = span.attributes
        calls.append(
            Call(
                span=span,
                agent_name=agent_name,
                prompt=_messages(attributes.get(semconv.INPUT_MESSAGES)),
                response=_messages(attributes.get(semconv.OUTPUT_MESSAGES)),
                prompt_token_ids=_ints(attributes.get(semconv.PROMPT_TOKEN_IDS)),
                response_token_ids=_ints(attributes.get(semconv.RESPONSE_TOKEN_IDS)),
                response_logprobs=_floats(attributes.get(semconv.RESPONSE_LOGPROBS)),
            )
        )
    return calls


def _agent_name(span: Span, by_id: dict[str, Span]) -> str | None:
    seen: set[str] = set()
    current: Span | None = span
    while current is not None and current.span_id not in seen:  # a malformed trace may loop
        name = current.attributes.get(semconv.AGENT_NAME)
        if isinstance(name, str) and name:
            return name
        seen.add(current.span_id)
        current = by_id.get(current.parent_id) if current.parent_id else None
    return None


def _messages(value: Any) -> list[Any] | None:
    """A message list is stored as JSON text (a list of plain strings may be stored as is)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return [value]
    return value if isinstance(value, list) else [value]


def _ints(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    return None


def _floats(value: Any) -> list[float] | None:
    if isinstance(value, list) and all(isinstance(v, numbers.Real) for v in value):
        return [float(v) for v in value]
    return None
