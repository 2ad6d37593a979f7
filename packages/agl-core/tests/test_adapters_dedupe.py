"""One physical model call recorded twice (the agent's openai instrumentor and the LLM proxy) is
one call to the adapters: the record with the engine's token ids is kept, placed where the agent's
own record sits."""

from __future__ import annotations

import json
from typing import Any

from adapter_spans import reward, span

from agl.core.adapters import spans_to_messages, spans_to_triplets
from agl.core.tracing import semconv
from agl.core.types import Span

PROMPT = [{"role": "user", "content": "hi"}]
ANSWER = [{"role": "assistant", "content": "hello"}]


def record(
    sequence_id: int,
    response_id: str | None,
    *,
    ids: tuple[list[int], list[int]] | None = None,
    agent: str | None = None,
    answer: list[dict[str, Any]] = ANSWER,
) -> Span:
    attributes: dict[str, Any] = {
        semconv.LLM_CALL: True,
        semconv.INPUT_MESSAGES: json.dumps(PROMPT),
        semconv.OUTPUT_MESSAGES: json.dumps(answer),
    }
    if response_id is not None:
        attributes[semconv.RESPONSE_ID] = response_id
    if ids is not None:
        attributes[semconv.PROMPT_TOKEN_IDS], attributes[semconv.RESPONSE_TOKEN_IDS] = ids
        attributes[semconv.RESPONSE_LOGPROBS] = [-0.5] * len(ids[1])
    if agent is not None:
        attributes[semconv.AGENT_NAME] = agent
    return span(sequence_id, "chat tiny", attributes)


def test_the_record_with_token_ids_is_kept_once() -> None:
    client = record(2, "chatcmpl-1", agent="writer")
    proxy = record(7, "chatcmpl-1", ids=([1, 2, 3], [4, 5]))
    triplets = spans_to_triplets([client, proxy])
    assert len(triplets) == 1
    assert triplets[0].prompt_token_ids == [1, 2, 3]
    assert triplets[0].response_token_ids == [4, 5]
    assert triplets[0].metadata["span_ids"] == [proxy.span_id]
    assert triplets[0].metadata["agent_name"] == "writer"  # the agent's record names the agent


def test_the_kept_record_sits_where_the_agents_record_does() -> None:
    """The proxy numbers its spans from the store's counter, which may lag the agent's own
    numbering: the call is placed (and its reward matched) by the agent's record."""
    spans = [
        record(2, "chatcmpl-a"),
        reward(3, 0.25),
        record(4, "chatcmpl-b", answer=[{"role": "assistant", "content": "again"}]),
        reward(5, 1.0),
        record(1, "chatcmpl-a", ids=([1], [2])),  # the proxy's, numbered before the agent's
        record(6, "chatcmpl-b", ids=([1, 2, 3], [4]), answer=[{"role": "assistant", "content": "again"}]),
    ]
    triplets = spans_to_triplets(spans, reward="matched", merge=False)
    assert [t.response_token_ids for t in triplets] == [[2], [4]]
    assert [t.reward for t in triplets] == [0.25, 1.0]
    assert spans_to_messages(spans, agent_match=None)[-1]["content"] == "again"


def test_without_token_ids_the_first_record_is_kept() -> None:
    first, second = record(1, "chatcmpl-1", ids=([1], [2])), record(2, "chatcmpl-1", ids=([1], [2]))
    triplets = spans_to_triplets([first, second])
    assert len(triplets) == 1
    assert triplets[0].metadata["span_ids"] == [first.span_id]


def test_records_that_disagree_or_lack_a_response_id_stay_apart() -> None:
    """A server that reuses one id for every reply must not merge different calls."""
    assert len(spans_to_triplets([record(1, "same"), record(2, "same")])) == 2  # two of the agent's own
    other = [record(1, "same"), record(2, "same", ids=([1], [2])), record(3, "same", ids=([1], [9]))]
    assert [t.response_token_ids for t in spans_to_triplets(other, merge=False)] == [[2], [9]]
    assert len(spans_to_triplets([record(1, None), record(2, None)])) == 2
