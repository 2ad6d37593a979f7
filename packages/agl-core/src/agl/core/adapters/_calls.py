"""The canonical LLM-call spans of one attempt, read back into plain values (shared by the adapters
and by `agl spans`, which counts calls the way the adapters do)."""

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
    nearest ancestor having one: frameworks name the agent on an outer span, not on each call.

    One physical call recorded twice (the agent's client-side instrumentor and the LLM proxy both
    saw it) is one call: records sharing ``gen_ai.response.id`` are merged (see `_physical_calls`).
    """
    pattern = re.compile(agent_match) if agent_match is not None else None
    by_id = {span.span_id: span for span in ordered}
    records = [span for span in ordered if span.attributes.get(semconv.LLM_CALL) is True]
    calls = []
    for anchor, kept, group in _physical_calls(records):
        agent_name = next((name for span in (anchor, kept, *group) if (name := _agent_name(span, by_id))), None)
        if pattern is not None and (agent_name is None or not pattern.search(agent_name)):
            continue
        span = kept
        if kept.sequence_id != anchor.sequence_id:
            span = kept.model_copy(update={"sequence_id": anchor.sequence_id})
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


def _physical_calls(records: Sequence[Span]) -> list[tuple[Span, Span, list[Span]]]:
    """Group the records of each physical call: ``(anchor, kept, group)`` in the anchors' order.

    Records are the same call when they share a response id and their token ids agree wherever
    both have them; a group holds at most one record without response token ids, so a server that
    reuses one response id for different calls does not merge the agent's own records. ``kept``
    is the record with token ids (the proxy's, from the wire), else the first. ``anchor`` places
    the call: the record without token ids (the agent's client-side one, numbered with the
    agent's other spans, so rewards still fall after the call they follow), else the first; the
    kept record takes the anchor's sequence id.
    """
    groups: list[list[Span]] = []
    open_groups: dict[str, list[list[Span]]] = {}
    for span in records:
        response_id = span.attributes.get(semconv.RESPONSE_ID)
        group = None
        if isinstance(response_id, str) and response_id:
            group = next((g for g in open_groups.get(response_id, ()) if _same_call(g, span)), None)
        if group is None:
            group = []
            groups.append(group)
            if isinstance(response_id, str) and response_id:
                open_groups.setdefault(response_id, []).append(group)
        group.append(span)
    result = []
    for group in groups:
        kept = next((span for span in group if _ids(span, semconv.RESPONSE_TOKEN_IDS) is not None), group[0])
        anchor = next((span for span in group if _ids(span, semconv.RESPONSE_TOKEN_IDS) is None), group[0])
        result.append((anchor, kept, group))
    result.sort(key=lambda entry: (entry[0].sequence_id, entry[0].start_time or 0.0))
    return result


def _same_call(group: list[Span], span: Span) -> bool:
    has_ids = _ids(span, semconv.RESPONSE_TOKEN_IDS) is not None
    for member in group:
        if not has_ids and _ids(member, semconv.RESPONSE_TOKEN_IDS) is None:
            return False
        for key in (semconv.PROMPT_TOKEN_IDS, semconv.RESPONSE_TOKEN_IDS):
            mine, theirs = _ids(span, key), _ids(member, key)
            if mine is not None and theirs is not None and mine != theirs:
                return False
    return True


def _ids(span: Span, key: str) -> list[int] | None:
    return _ints(span.attributes.get(key))


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
