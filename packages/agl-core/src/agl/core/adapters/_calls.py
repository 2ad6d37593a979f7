"""The canonical LLM-call spans of one attempt, read back into plain values (shared by the adapters
and by `agl spans`, which counts calls the way the adapters do)."""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agl.core.errors import InvalidInput
from agl.core.tracing import semconv
from agl.core.types.spans import Span

CHOICE_COUNT = f"{semconv.REQUEST_PREFIX}choice.count"


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
    retried: bool = False
    """Made in an attempt that failed and was retried (a LangGraph node's ``RetryPolicy``): the
    framework threw its output away, so it is not on the path the rollout took."""

    @property
    def models(self) -> tuple[str | None, str | None]:
        """The model asked for and the model that answered, as recorded (None where not)."""
        attributes = self.span.attributes
        return _text(attributes.get(semconv.REQUEST_MODEL)), _text(attributes.get(semconv.RESPONSE_MODEL))

    @property
    def generated(self) -> bool:
        """False for a call that failed before the model produced anything (an engine error, a
        request the client then retried): it is no training data, nor a call a reward follows.
        A stream cut off midway keeps what it produced."""
        return self.span.status.status_code != "ERROR" or bool(self.response) or bool(self.response_token_ids)


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
    pattern = agent_pattern(agent_match)
    by_id = {span.span_id: span for span in ordered}
    records = [span for span in ordered if span.attributes.get(semconv.LLM_CALL) is True]
    retried = _retried_attempts(ordered)
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
                response=_first_choice(attributes, _messages(attributes.get(semconv.OUTPUT_MESSAGES))),
                prompt_token_ids=_ints(attributes.get(semconv.PROMPT_TOKEN_IDS)),
                response_token_ids=_ints(attributes.get(semconv.RESPONSE_TOKEN_IDS)),
                response_logprobs=_floats(attributes.get(semconv.RESPONSE_LOGPROBS)),
                retried=bool(retried) and any(_under_any(record, retried, by_id) for record in group),
            )
        )
    return calls


def agent_pattern(agent_match: str | None) -> re.Pattern[str] | None:
    """``agent_match`` compiled; one that is no regular expression is refused in one line."""
    if agent_match is None:
        return None
    try:
        return re.compile(agent_match)
    except (re.error, TypeError) as error:
        raise InvalidInput(f"agent_match is not a regular expression: {agent_match!r} ({error})") from None


def _retried_attempts(ordered: Sequence[Span]) -> set[str]:
    """The span ids of attempts that failed and were retried: a span in error numbered ``k`` (a
    LangGraph node's ``langgraph.node.attempt``, a CrewAI agent's ``crewai.agent.attempt``) whose
    node or agent has an attempt ``k + 1`` after it, beside it (same parent). The last attempt of
    one that failed for good is not among them: the run failed with it."""
    numbered = [(span, numbering) for span in ordered if (numbering := _attempt_number(span)) is not None]
    starts: dict[tuple[str | None, str | None, str | None, str, int], list[int]] = {}
    for span, (kind, number) in numbered:
        starts.setdefault(_attempt_key(span, kind, number), []).append(span.sequence_id)
    return {
        span.span_id
        for span, (kind, number) in numbered
        if span.status.status_code == "ERROR"
        and any(start > span.sequence_id for start in starts.get(_attempt_key(span, kind, number + 1), ()))
    }


def _attempt_number(span: Span) -> tuple[str, int] | None:
    """Which attempt numbering a span carries, and its number; None for a span of no retried work."""
    for kind in semconv.RETRIED_ATTEMPTS:
        number = span.attributes.get(kind)
        if isinstance(number, int) and not isinstance(number, bool):
            return kind, number
    return None


def _attempt_key(span: Span, kind: str, number: int) -> tuple[str | None, str | None, str | None, str, int]:
    attributes = span.attributes
    return (
        span.parent_id,
        _text(attributes.get(semconv.LANGGRAPH_NODE)),
        _text(attributes.get(semconv.AGENT_NAME)),
        kind,
        number,
    )


def _under_any(span: Span, ancestors: set[str], by_id: dict[str, Span]) -> bool:
    """Whether ``span`` lies under (or is) one of ``ancestors``, by parent links."""
    seen: set[str] = set()
    current: Span | None = span
    while current is not None and current.span_id not in seen:  # a malformed trace may loop
        if current.span_id in ancestors:
            return True
        seen.add(current.span_id)
        current = by_id.get(current.parent_id) if current.parent_id else None
    return False


def _physical_calls(records: Sequence[Span]) -> list[tuple[Span, Span, list[Span]]]:
    """Group the records of each physical call: ``(anchor, kept, group)`` in the anchors' order.

    Records are the same call when they share a response id and their token ids agree wherever
    both have them; a group holds at most one record without response token ids, so a server that
    reuses one response id for different calls does not merge the agent's own records. ``kept``
    is the record with token ids (the proxy's, from the wire), else the first. ``anchor`` places
    the call: the agent's client-side record, numbered with the agent's other spans, so rewards
    still fall after the call they follow; it is the record without token ids, else the one the
    others are nested under (the proxy parents its record under the caller's through
    ``traceparent``, and records token ids too when the agent asked for them), else the first.
    The kept record takes the anchor's sequence id.

    A record joins the earliest group it fits. The groups it could fit are indexed (by response
    id and response token ids, and which still lack a record without ids), so a server that
    reuses one response id for every reply costs no scan of every earlier call.
    """
    groups: list[_Group] = []
    by_ids: dict[tuple[str, tuple[int, ...] | None], dict[int, _Group]] = {}  # None: no response ids yet
    open_to_bare: dict[str, dict[int, _Group]] = {}  # groups without a record lacking response ids
    for span in records:
        prompt_ids, response_ids = _ids(span, semconv.PROMPT_TOKEN_IDS), _ids(span, semconv.RESPONSE_TOKEN_IDS)
        response_id = span.attributes.get(semconv.RESPONSE_ID)
        if not (isinstance(response_id, str) and response_id):
            response_id = None
        group: _Group | None = None
        if response_id is not None and response_ids is None:
            group = next((g for g in open_to_bare.get(response_id, {}).values() if g.fits(prompt_ids)), None)
        elif response_id is not None:
            # Groups with these response ids (moved in when their ids came, so not in order), and the
            # earliest record still waiting for its ids.
            same = [g for g in by_ids.get((response_id, tuple(response_ids)), {}).values() if g.fits(prompt_ids)]
            waiting = next((g for g in by_ids.get((response_id, None), {}).values() if g.fits(prompt_ids)), None)
            group = min([*same, *([waiting] if waiting else [])], key=lambda g: g.order, default=None)
        if group is None:
            group = _Group(len(groups))
            groups.append(group)
        else:
            by_ids[(response_id, group.key)].pop(group.order)
        group.add(span, prompt_ids, response_ids)
        if response_id is not None:
            by_ids.setdefault((response_id, group.key), {})[group.order] = group
            bucket = open_to_bare.setdefault(response_id, {})
            if group.bare is None:
                bucket[group.order] = group
            else:
                bucket.pop(group.order, None)
    result = [(group.anchor(), group.kept(), group.records) for group in groups]
    result.sort(key=lambda entry: (entry[0].sequence_id, entry[0].start_time or 0.0))
    return result


class _Group:
    """The records of one physical call, with the token ids they agree on."""

    def __init__(self, order: int) -> None:
        self.order = order
        self.records: list[Span] = []
        self.prompt_ids: list[int] | None = None
        self.response_ids: list[int] | None = None
        self.bare: Span | None = None  # its one record without response token ids
        self.first_with_ids: Span | None = None

    @property
    def key(self) -> tuple[int, ...] | None:
        return tuple(self.response_ids) if self.response_ids is not None else None

    def fits(self, prompt_ids: list[int] | None) -> bool:
        """Whether a record with these prompt ids agrees (its response ids were matched by the index)."""
        return prompt_ids is None or self.prompt_ids is None or prompt_ids == self.prompt_ids

    def add(self, span: Span, prompt_ids: list[int] | None, response_ids: list[int] | None) -> None:
        self.records.append(span)
        self.prompt_ids = self.prompt_ids if self.prompt_ids is not None else prompt_ids
        if response_ids is None:
            self.bare = span
        else:
            self.response_ids = response_ids
            self.first_with_ids = self.first_with_ids or span

    def kept(self) -> Span:
        return self.first_with_ids or self.records[0]

    def anchor(self) -> Span:
        if self.bare is not None:
            return self.bare
        ids = {span.span_id for span in self.records}
        return next((span for span in self.records if span.parent_id not in ids), self.records[0])


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


def _first_choice(attributes: Mapping[str, Any], messages: list[Any] | None) -> list[Any] | None:
    """Choice 0's message of a reply of ``n`` choices, as its token ids are choice 0's: chat
    recorders (the openai instrumentor, the LLM proxy) write one output message per choice, and
    ``n`` under ``gen_ai.request.choice.count``. Otherwise the messages as recorded (a Responses-API
    reply is several messages of one answer)."""
    count = attributes.get(CHOICE_COUNT)
    if messages and isinstance(count, int) and not isinstance(count, bool) and count > 1:
        return messages[:1]
    return messages


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _messages(value: Any) -> list[Any] | None:
    """A message list is stored as JSON text (a list of plain strings may be stored as is); text
    that is not JSON, or nested too deep to parse, is one plain message. JSON ``null`` is no
    messages, as a missing attribute is."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return [value]
    if value is None:
        return None
    return value if isinstance(value, list) else [value]


def _ints(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    return None


def _floats(value: Any) -> list[float] | None:
    if isinstance(value, list) and all(isinstance(v, numbers.Real) for v in value):
        return [float(v) for v in value]
    return None
