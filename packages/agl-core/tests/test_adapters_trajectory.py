"""Triplets hold the path the rollout took: the model calls of an attempt that a framework threw
away and retried (a LangGraph node's ``RetryPolicy``) are not trained on. A reply a client-side
cache answered (AutoGen's ``ChatCompletionCache``) was acted on, so it stays, without token ids."""

from __future__ import annotations

import json
from typing import Any

from adapter_spans import reward, span

from agl.core.adapters import spans_to_messages, spans_to_triplets
from agl.core.tracing import semconv
from agl.core.types import Span

WRITE = [{"role": "user", "content": "Write."}]


def said(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def chat(
    sequence_id: int,
    prompt: list[dict[str, Any]],
    text: str,
    *,
    parent: int | None = None,
    ids: tuple[list[int], list[int]] | None = None,
    **extra: Any,
) -> Span:
    """A model call as `llm_call` records it, token ids (as the proxy gives them) when given."""
    attributes: dict[str, Any] = {
        semconv.LLM_CALL: True,
        semconv.OPERATION_NAME: "chat",
        semconv.REQUEST_MODEL: "policy",
        semconv.INPUT_MESSAGES: json.dumps(prompt),
        semconv.OUTPUT_MESSAGES: json.dumps([said(text)]),
        **extra,
    }
    if ids is not None:
        attributes[semconv.PROMPT_TOKEN_IDS], attributes[semconv.RESPONSE_TOKEN_IDS] = ids
        attributes[semconv.RESPONSE_LOGPROBS] = [-0.5] * len(ids[1])
    return span(sequence_id, "chat policy", attributes, parent=parent)


def attempt(sequence_id: int, number: int, *, failed: bool, node: str = "writer", parent: int = 1) -> Span:
    """One attempt of a LangGraph node under a retry policy, as agl-instrument-langchain records it."""
    attributes = {
        semconv.OPERATION_NAME: semconv.INVOKE_AGENT,
        semconv.AGENT_NAME: node,
        semconv.GEN_AI_AGENT_NAME: node,
        "langgraph.node": node,
        "langgraph.node.attempt": number,
    }
    return span(sequence_id, f"invoke_agent {node}", attributes, parent=parent, error=failed)


def graph() -> Span:
    return span(1, "invoke_workflow essay", {semconv.OPERATION_NAME: semconv.INVOKE_WORKFLOW})


# --- a node retried by LangGraph --------------------------------------------------------------


def test_the_calls_of_a_failed_attempt_that_was_retried_are_no_triplets() -> None:
    """The first draft was rejected (the node raised), LangGraph threw it away and ran the node
    again: the rollout's path is the second draft, continued in the node's next run."""
    spans = [
        graph(),
        attempt(2, 1, failed=True),
        chat(3, WRITE, "draft 1", parent=2, ids=([1, 2], [3, 4])),
        attempt(4, 2, failed=False),
        chat(5, WRITE, "draft 2", parent=4, ids=([1, 2], [5, 6])),
        attempt(6, 1, failed=False),  # the node's next run
        chat(
            7,
            [*WRITE, said("draft 2"), {"role": "user", "content": "Shorter."}],
            "done",
            parent=6,
            ids=([1, 2, 5, 6, 7], [8]),
        ),
        reward(8, 1.0),
    ]
    (triplet,) = spans_to_triplets(spans)
    assert (triplet.prompt_token_ids, triplet.response_token_ids) == ([1, 2], [5, 6, 7, 8])
    assert triplet.response_mask == [1, 1, 0, 1]
    assert triplet.metadata["span_ids"] == [spans[4].span_id, spans[6].span_id]
    assert triplet.reward == 1.0
    assert [t.response[0]["content"] for t in spans_to_triplets(spans, merge=False)] == ["draft 2", "done"]


def test_every_retried_run_of_a_node_is_left_out_and_a_final_failure_is_kept() -> None:
    """A node run twice, each run failing once; then a run whose every attempt failed: the graph
    failed with that last attempt, whose calls stay (the trainer's failure policy decides)."""
    spans = [
        graph(),
        attempt(2, 1, failed=True),
        chat(3, WRITE, "a1", parent=2),
        attempt(4, 2, failed=False),
        chat(5, WRITE, "a2", parent=4),
        attempt(6, 1, failed=True),
        span(7, "execute_tool search", parent=6),
        chat(8, WRITE, "b1", parent=7),  # deeper under the attempt
        attempt(9, 2, failed=False),
        chat(10, WRITE, "b2", parent=9),
        attempt(11, 1, failed=True),
        chat(12, WRITE, "c1", parent=11),
        attempt(13, 2, failed=True),
        chat(14, WRITE, "c2", parent=13),
    ]
    kept = [t.response[0]["content"] for t in spans_to_triplets(spans)]
    assert kept == ["a2", "b2", "c2"]
    assert spans_to_messages(spans) == [*WRITE, said("c2")]


def test_a_failed_attempt_of_another_node_or_without_a_retry_is_kept() -> None:
    """Only a next attempt of the same node, beside it, makes an attempt a retried one."""
    spans = [
        graph(),
        attempt(2, 1, failed=True, node="writer"),
        chat(3, WRITE, "w1", parent=2),
        attempt(4, 2, failed=False, node="critic"),
        chat(5, WRITE, "c2", parent=4),
    ]
    assert [t.response[0]["content"] for t in spans_to_triplets(spans)] == ["w1", "c2"]


def test_the_last_calls_messages_are_the_retrys_when_the_retry_asked_no_model() -> None:
    """A node that asks its model only until it has an answer in the state: the retry reused it."""
    spans = [
        graph(),
        chat(2, WRITE, "plan", parent=1),
        attempt(3, 1, failed=True),
        chat(4, [*WRITE, said("plan")], "thrown away", parent=3),
        attempt(5, 2, failed=False),
    ]
    assert spans_to_messages(spans) == [*WRITE, said("plan")]


def test_attempt_attributes_of_odd_types_are_read_where_they_can_be() -> None:
    """Spans from other tools (OTLP ingest) may carry these names with other values: an attempt
    number that is no integer is none; a node name that is no string is no name."""
    odd = [
        span(2, "node", {"langgraph.node": ["writer"], "langgraph.node.attempt": 1}, parent=1, error=True),
        span(3, "node", {"langgraph.node": ["writer"], "langgraph.node.attempt": 2}, parent=1),
        span(4, "node", {"langgraph.node.attempt": "1"}, parent=1, error=True),
        span(5, "node", {"langgraph.node.attempt": True}, parent=1, error=True),
    ]
    spans = [graph(), *odd, chat(6, WRITE, "kept", parent=4), chat(7, WRITE, "also kept", parent=5)]
    assert [t.response[0]["content"] for t in spans_to_triplets(spans)] == ["kept", "also kept"]
    spans.append(chat(8, WRITE, "retried", parent=2))
    assert [t.response[0]["content"] for t in spans_to_triplets(spans)] == ["kept", "also kept"]


# --- an agent's try retried by CrewAI ---------------------------------------------------------


def crewai_try(sequence_id: int, number: int, *, failed: bool, role: str = "Writer") -> Span:
    """An agent's try at a task as agl-instrument-crewai records it when CrewAI retries a failed
    one (``max_retry_limit``): each try its own span under the task's, numbered."""
    attributes = {
        semconv.OPERATION_NAME: semconv.INVOKE_AGENT,
        semconv.AGENT_NAME: role,
        semconv.GEN_AI_AGENT_NAME: role,
        semconv.CREWAI_AGENT_ATTEMPT: number,
    }
    return span(sequence_id, f"invoke_agent {role}", attributes, parent=2, error=failed)


def test_the_calls_of_a_crewai_agents_try_that_was_retried_are_no_triplets() -> None:
    """A tool call and a model call succeeded in the first try, then the model failed; CrewAI threw
    the try away and ran the task again: only the retry's call is the rollout's path."""
    spans = [
        span(1, "invoke_workflow crew", {semconv.OPERATION_NAME: semconv.INVOKE_WORKFLOW}),
        span(2, "task", parent=1),
        crewai_try(3, 1, failed=True),
        chat(4, WRITE, "first try", parent=3),
        span(5, "execute_tool search", parent=3),
        crewai_try(6, 2, failed=False),
        chat(7, WRITE, "retry", parent=6),
        reward(8, 1.0),
    ]
    (triplet,) = spans_to_triplets(spans)
    assert triplet.response[0]["content"] == "retry" and triplet.reward == 1.0
    another_role = [*spans[:3], *spans[3:5], crewai_try(6, 2, failed=False, role="Critic"), *spans[6:]]
    assert [t.response[0]["content"] for t in spans_to_triplets(another_role)] == ["first try", "retry"]


# --- a reply from a cache ---------------------------------------------------------------------


def cached(sequence_id: int, prompt: list[dict[str, Any]], text: str) -> Span:
    """A ``ChatCompletionCache`` hit as agl-instrument-autogen records it: no request, so no token ids
    nor usage, though the cached result's logprobs come back with it."""
    return chat(sequence_id, prompt, text, **{semconv.LLM_CACHED: True, semconv.RESPONSE_LOGPROBS: [-0.25]})


def test_a_cached_reply_stays_a_triplet_without_ids_and_joins_no_run() -> None:
    """The agent acted on the cached reply, so it is a triplet (AutoGen's replay client marks its
    replies cached too); it has no ids, so it merges with nothing, and the logprobs the cache kept
    (one, for no ids) are not passed off as aligned with any token."""
    second = [*WRITE, said("draft"), {"role": "tool", "content": "ok"}]
    third = [*second, said("from cache"), {"role": "tool", "content": "ok"}]
    spans = [
        chat(1, WRITE, "draft", ids=([1, 2], [3, 4])),
        cached(2, second, "from cache"),
        chat(3, third, "final", ids=([1, 2, 3, 4, 5, 6, 7, 8], [9])),
        reward(4, 1.0),
    ]
    first, hit, last = spans_to_triplets(spans)
    assert (first.response_token_ids, first.response_mask) == ([3, 4], [1, 1])
    assert (hit.response, hit.response_token_ids, hit.response_logprobs, hit.response_mask) == (
        [said("from cache")],
        None,
        None,
        None,
    )
    assert (last.prompt_token_ids, last.response_token_ids, last.reward) == ([1, 2, 3, 4, 5, 6, 7, 8], [9], 1.0)
    assert spans_to_messages(spans[:2]) == [*second, said("from cache")]
