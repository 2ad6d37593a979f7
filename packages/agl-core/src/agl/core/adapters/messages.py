"""Spans of one attempt → the conversation as chat messages, for prompt optimisation and SFT."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agl.core.adapters._calls import agent_pattern, in_order, llm_calls
from agl.core.types.spans import Span


def spans_to_messages(spans: Sequence[Span], *, agent_match: str | None = None) -> list[dict[str, Any]]:
    """The last LLM call's input messages followed by its output messages, as recorded.

    An agent resends its history with every call, so the last call holds the whole conversation
    up to its answer; earlier calls only hold a prefix of it. ``agent_match`` picks the agent as
    in `spans_to_triplets`, and calls that failed without output or belong to an attempt that failed
    and was retried are skipped as there. No LLM call: an empty list.
    """
    calls = [call for call in llm_calls(in_order(spans), agent_match) if call.generated and not call.retried]
    if not calls:
        return []
    last = calls[-1]
    return [*(last.prompt or []), *(last.response or [])]


@dataclass(frozen=True)
class TraceMessagesAdapter:
    """`spans_to_messages` with its options fixed."""

    agent_match: str | None = None

    def __post_init__(self) -> None:
        """A bad ``agent_match`` is refused when the adapter is made, not after rollouts ran."""
        agent_pattern(self.agent_match)

    def adapt(self, spans: Sequence[Span]) -> list[dict[str, Any]]:
        return spans_to_messages(spans, agent_match=self.agent_match)
