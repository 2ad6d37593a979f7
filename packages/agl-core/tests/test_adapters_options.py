"""An adapter's options are checked when it is made: an algorithm holds its adapter for the whole
run, and a bad option found only when the first batch of rollouts is adapted wastes that batch."""

from __future__ import annotations

import pytest
from adapter_spans import reward, span

from agl.core.adapters import TraceMessagesAdapter, TraceTripletAdapter, spans_to_messages, spans_to_triplets
from agl.core.errors import InvalidInput


def test_an_agent_match_that_is_no_regular_expression_is_refused_in_one_line() -> None:
    for make in (
        lambda: TraceTripletAdapter(agent_match="writer("),
        lambda: TraceMessagesAdapter(agent_match="writer("),
        lambda: spans_to_triplets([], agent_match="writer("),
        lambda: spans_to_messages([], agent_match="writer("),
    ):
        with pytest.raises(InvalidInput, match=r"agent_match is not a regular expression: 'writer\('"):
            make()


def test_an_unknown_reward_rule_is_refused_when_the_adapter_is_made() -> None:
    with pytest.raises(InvalidInput, match="reward must be 'final' or 'matched', not 'best'"):
        TraceTripletAdapter(reward="best")  # type: ignore[arg-type]
    assert TraceTripletAdapter(agent_match="^writer$", reward="matched").adapt([]) == []


def test_an_attempt_without_a_model_call_has_no_triplet_under_either_reward_rule() -> None:
    """An agent that failed before it asked its model, or left only its reward: no window to match."""
    spans = [span(1, "agent"), reward(2, 1.0)]
    for rule in ("final", "matched"):
        assert spans_to_triplets(spans, reward=rule) == []  # type: ignore[arg-type]
