"""Adapters on span sets that real systems produce but the happy path does not: failed and retried
requests, servers that reuse one response id, records of one call that both carry token ids,
logprobs that do not line up, and message attributes of odd shapes. Every set goes through an
in-memory store and is read back as the store returns it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from adapter_spans import reward, span

from agl.core import open_store
from agl.core.adapters import spans_to_messages, spans_to_triplets
from agl.core.store.base import LightningStore
from agl.core.tracing import semconv
from agl.core.types import Span

PROMPT = [{"role": "user", "content": "hi"}]


def answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


@pytest.fixture
async def store() -> AsyncIterator[LightningStore]:
    store = open_store("memory://", watchdog_interval=None)
    yield store
    await store.close()


async def stored(store: LightningStore, spans: Sequence[Span]) -> list[Span]:
    """``spans`` filed under a fresh rollout's attempt, as the store returns them."""
    attempt = await store.start_rollout({"task": "edge"})
    ids = {"rollout_id": attempt.rollout_id, "attempt_id": attempt.attempt.attempt_id}
    await store.add_many_spans([span.model_copy(update=ids) for span in spans])
    return list(await store.query_spans(attempt.rollout_id, attempt.attempt.attempt_id))


def record(
    sequence_id: int,
    *,
    response_id: str | None = None,
    ids: tuple[list[int], list[int]] | None = None,
    output: Any = None,
    parent: int | None = None,
    error: bool = False,
    **extra: Any,
) -> Span:
    """An LLM-call record as `llm_call` or the LLM proxy writes it."""
    attributes: dict[str, Any] = {semconv.LLM_CALL: True, semconv.INPUT_MESSAGES: json.dumps(PROMPT), **extra}
    if output is not None:
        attributes[semconv.OUTPUT_MESSAGES] = output if isinstance(output, str) else json.dumps(output)
    if response_id is not None:
        attributes[semconv.RESPONSE_ID] = response_id
    if ids is not None:
        attributes[semconv.PROMPT_TOKEN_IDS], attributes[semconv.RESPONSE_TOKEN_IDS] = ids
    return span(sequence_id, "chat tiny", attributes, parent=parent, error=error)


async def test_a_request_that_failed_and_was_retried_is_no_call(store: LightningStore) -> None:
    """The agent's openai client retries an engine's 503: the proxy records the failed request (no
    reply, status ERROR) and the retry, the client one call. The failed request is no training
    data, and the reward after the call is the call's, not the failed request's."""
    spans = await stored(
        store,
        [
            record(10, response_id="chatcmpl-1", output=answer("A")),  # the agent's record
            record(11, parent=10, error=True),  # the proxy's: the engine answered 503
            record(12, response_id="chatcmpl-1", ids=([1, 2], [3]), output=answer("A"), parent=10),
            reward(20, 1.0),
        ],
    )
    for rule in ("final", "matched"):
        (triplet,) = spans_to_triplets(spans, reward=rule)  # type: ignore[arg-type]
        assert (triplet.response, triplet.response_token_ids, triplet.reward) == (answer("A"), [3], 1.0)
    assert spans_to_messages(spans) == [*PROMPT, *answer("A")]


async def test_a_failed_request_does_not_split_calls_that_continue(store: LightningStore) -> None:
    spans = await stored(
        store,
        [
            record(1, ids=([1, 2], [3]), output=answer("A")),
            record(2, error=True),  # refused: nothing generated
            record(3, ids=([1, 2, 3, 4], [5]), output=answer("B")),
            record(4, ids=([1, 2, 3, 4, 5, 6], [7, 8]), output=answer("C"), error=True),  # cut off midway: kept
        ],
    )
    (merged,) = spans_to_triplets(spans)
    assert merged.response_token_ids == [3, 4, 5, 6, 7, 8]
    assert merged.response_mask == [1, 0, 1, 0, 1, 1]
    assert len(spans_to_triplets(spans, merge=False)) == 3


async def test_the_agents_record_places_the_call_when_both_records_carry_token_ids(store: LightningStore) -> None:
    """An agent that asks for token ids itself gets them through the proxy, so both records of a
    call carry them; the proxy's, numbered on a clock behind the agent's, must not move the call
    before the reward of the call before it."""
    spans = await stored(
        store,
        [
            record(10, response_id="a", ids=([1], [2]), output=answer("A")),
            record(11, response_id="a", ids=([1], [2]), output=answer("A"), parent=10),
            reward(20, 0.25),
            record(15, response_id="b", ids=([7], [8]), output=answer("B"), parent=30),  # the proxy's, lagging
            record(30, response_id="b", ids=([7], [8]), output=answer("B")),
            reward(40, 1.0),
        ],
    )
    triplets = spans_to_triplets(spans, reward="matched", merge=False)
    assert [t.response_token_ids for t in triplets] == [[2], [8]]
    assert [t.reward for t in triplets] == [0.25, 1.0]


async def test_a_server_that_reuses_one_response_id_keeps_every_call_apart(store: LightningStore) -> None:
    """Records are grouped through an index (each used to be compared with every earlier one of the
    same response id: about a minute for 3,000 calls); the calls must still come out one each."""
    calls = 300
    spans = await stored(
        store,
        [
            record(n, response_id="chatcmpl-123", ids=(list(range(n, n + 100)), [n]), output=answer(str(n)))
            for n in range(1, calls + 1)
        ],
    )
    triplets = spans_to_triplets(spans, merge=False)
    assert [t.response_token_ids for t in triplets] == [[n] for n in range(1, calls + 1)]


async def test_logprobs_that_do_not_line_up_with_the_response_ids_are_left_out(store: LightningStore) -> None:
    """As for merged calls: a guessed alignment is worse than none."""
    spans = await stored(
        store,
        [
            record(1, ids=([1], [2, 3]), output=answer("A"), **{semconv.RESPONSE_LOGPROBS: [-0.5]}),
            record(2, ids=([9], [4]), output=answer("B"), **{semconv.RESPONSE_LOGPROBS: [-0.25]}),
        ],
    )
    assert [t.response_logprobs for t in spans_to_triplets(spans)] == [None, [-0.25]]


async def test_message_attributes_of_odd_shapes(store: LightningStore) -> None:
    """JSON null is no messages (as a missing attribute is); JSON too deep to parse is one plain
    message, not an exception that stops the whole step."""
    deep = "[" * 100_000 + "]" * 100_000
    spans = await stored(store, [record(1, output="null"), record(2, output=deep)])
    first, second = spans_to_triplets(spans, merge=False)
    assert first.response is None
    assert second.response == [deep]
    assert spans_to_messages(spans[:1]) == PROMPT
