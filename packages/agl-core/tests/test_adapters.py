"""Adapters turn one attempt's spans into triplets and chat transcripts, from the attributes the
tracing runtime writes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from adapter_spans import reward, span
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agl.core.adapters import TraceMessagesAdapter, TraceTripletAdapter, spans_to_messages, spans_to_triplets
from agl.core.errors import InvalidInput
from agl.core.tracing import llm_call, rollout_context, semconv
from agl.core.tracing.emitters import emit_message, emit_reward, operation
from agl.core.types import Span


def call(
    sequence_id: int,
    prompt: list[dict[str, Any]],
    response: list[dict[str, Any]],
    *,
    ids: tuple[list[int], list[int]] | None = None,
    logprobs: list[float] | None = None,
    agent: str | None = None,
    parent: int | None = None,
) -> Span:
    """An LLM-call span with the attributes `llm_call` writes (messages as JSON text)."""
    attributes: dict[str, Any] = {
        semconv.LLM_CALL: True,
        semconv.OPERATION_NAME: "chat",
        semconv.REQUEST_MODEL: "tiny",
        semconv.INPUT_MESSAGES: json.dumps(prompt),
        semconv.OUTPUT_MESSAGES: json.dumps(response),
    }
    if ids is not None:
        attributes[semconv.PROMPT_TOKEN_IDS], attributes[semconv.RESPONSE_TOKEN_IDS] = ids
    if logprobs is not None:
        attributes[semconv.RESPONSE_LOGPROBS] = logprobs
    if agent is not None:
        attributes[semconv.AGENT_NAME] = agent
    return span(sequence_id, "chat tiny", parent=parent, attributes=attributes)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def tool(text: str) -> dict[str, str]:
    return {"role": "tool", "content": text}


# --- triplets ---------------------------------------------------------------------------------


def test_triplets_follow_sequence_ids_and_carry_exact_token_ids() -> None:
    spans = [
        call(4, [user("b")], [bot("B")], ids=([7, 8], [9]), logprobs=[-0.5]),
        span(1, "agent"),
        call(2, [user("a")], [bot("A")], ids=([1, 2], [3, 4]), logprobs=[-0.1, -0.2]),
        span(3, "tool"),
    ]
    first, second = spans_to_triplets(spans, merge=False)
    assert (first.prompt, first.response) == ([user("a")], [bot("A")])
    assert (first.prompt_token_ids, first.response_token_ids, first.response_logprobs) == ([1, 2], [3, 4], [-0.1, -0.2])
    assert first.metadata == {
        "rollout_id": "ro-1",
        "attempt_id": "at-1",
        "span_ids": [f"{2:016x}"],
        "agent_name": None,
    }
    assert first.response_mask == [1, 1]
    assert (second.prompt, second.response_token_ids, second.response_logprobs) == ([user("b")], [9], [-0.5])


def test_final_reward_goes_on_the_last_triplet_only() -> None:
    spans = [
        call(1, [user("a")], [bot("A")]),
        reward(2, 0.3),
        call(3, [user("b")], [bot("B")]),
        reward(4, 1.0),
        reward(5, None, speed=0.2, accuracy=0.9),  # no primary value: not a trainable reward
    ]
    assert [t.reward for t in spans_to_triplets(spans)] == [None, 1.0]
    assert [t.reward for t in spans_to_triplets(spans[:1] + spans[2:3])] == [None, None]


def test_matched_reward_is_the_first_one_after_a_call_and_before_the_next() -> None:
    spans = [
        reward(1, 9.0),  # before any call: nobody's
        call(2, [user("a")], [bot("A")]),
        reward(3, 0.1),
        call(4, [user("b")], [bot("B")]),
        reward(5, 0.2),
        reward(6, 0.3),  # second in the same window: not taken
        call(7, [user("c")], [bot("C")]),
    ]
    assert [t.reward for t in spans_to_triplets(spans, reward="matched")] == [0.1, 0.2, None]
    assert [t.reward for t in spans_to_triplets(spans, reward="final")] == [None, None, 0.3]


def test_agent_match_uses_the_calls_own_agent_name() -> None:
    spans = [
        call(1, [user("draft")], [bot("D")], agent="writer"),
        call(2, [user("judge")], [bot("J")], agent="critic"),
        call(3, [user("anon")], [bot("?")]),
        call(4, [user("polish")], [bot("P")], agent="writer-2"),
    ]
    kept = spans_to_triplets(spans, agent_match=r"^writer")
    assert [t.prompt for t in kept] == [[user("draft")], [user("polish")]]
    assert [t.metadata["agent_name"] for t in kept] == ["writer", "writer-2"]
    assert len(spans_to_triplets(spans)) == 4


def test_agent_match_falls_back_to_the_nearest_named_ancestor() -> None:
    spans = [
        span(1, "solver agent", attributes={semconv.AGENT_NAME: "solver"}),
        span(2, "turn", parent=1),
        call(3, [user("solve")], [bot("S")], parent=2),  # named only through its grandparent
        call(4, [user("lookup")], [bot("L")], parent=2, agent="retriever"),  # its own name wins
        span(5, "checker agent", attributes={semconv.AGENT_NAME: "checker"}),
        call(6, [user("check")], [bot("C")], parent=5),
        call(7, [user("orphan")], [bot("O")], parent=99),  # parent not recorded: no name
    ]
    (solved,) = spans_to_triplets(spans, agent_match="^solver$")
    assert solved.prompt == [user("solve")] and solved.metadata["agent_name"] == "solver"
    assert [t.prompt for t in spans_to_triplets(spans, agent_match="checker|retriever")] == [
        [user("lookup")],
        [user("check")],
    ]


def continuing_calls() -> list[Span]:
    """Three calls of one conversation whose prompt ids extend the previous prompt + response."""
    return [
        call(1, [user("q")], [bot("t1")], ids=([1, 2, 3], [4, 5]), logprobs=[-0.1, -0.2]),
        span(2, "tool"),
        call(
            3,
            [user("q"), bot("t1"), tool("r1")],
            [bot("t2")],
            ids=([1, 2, 3, 4, 5, 6, 7], [8]),
            logprobs=[-0.3],
        ),
        call(
            4,
            [user("q"), bot("t1"), tool("r1"), bot("t2"), tool("r2")],
            [bot("answer")],
            ids=([1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11]),
            logprobs=[-0.4, -0.5],
        ),
        reward(5, 1.0),
    ]


def test_calls_whose_ids_continue_merge_into_one_masked_sequence() -> None:
    (merged,) = spans_to_triplets(continuing_calls())
    assert merged.prompt == [user("q")] and merged.prompt_token_ids == [1, 2, 3]
    assert merged.response == [bot("t1"), tool("r1"), bot("t2"), tool("r2"), bot("answer")]
    assert merged.response_token_ids == [4, 5, 6, 7, 8, 9, 10, 11]
    assert merged.response_mask == [1, 1, 0, 0, 1, 0, 1, 1]
    assert merged.response_logprobs == [-0.1, -0.2, 0.0, 0.0, -0.3, 0.0, -0.4, -0.5]
    assert merged.metadata["span_ids"] == [f"{n:016x}" for n in (1, 3, 4)]
    assert merged.reward == 1.0
    assert [t.response_token_ids for t in spans_to_triplets(continuing_calls(), merge=False)] == [[4, 5], [8], [10, 11]]


def test_a_merged_sequence_has_logprobs_only_if_every_call_had_them() -> None:
    spans = continuing_calls()
    spans[2] = call(3, [user("q")], [bot("t2")], ids=([1, 2, 3, 4, 5, 6, 7], [8]))  # no logprobs
    (merged,) = spans_to_triplets(spans)
    assert merged.response_logprobs is None
    assert merged.response_mask == [1, 1, 0, 0, 1, 0, 1, 1]


def test_calls_whose_ids_do_not_continue_stay_apart() -> None:
    spans = [
        call(1, [user("q")], [bot("t1")], ids=([1, 2, 3], [4, 5])),
        call(2, [user("q"), bot("t1")], [bot("t2")], ids=([1, 2, 3, 4, 99], [8])),  # re-tokenised differently
        call(3, [user("other")], [bot("t3")], ids=([1, 2], [6])),  # shorter than the sequence so far
    ]
    triplets = spans_to_triplets(spans)
    assert [t.response_token_ids for t in triplets] == [[4, 5], [8], [6]]
    assert [t.response_mask for t in triplets] == [[1, 1], [1], [1]]


def test_calls_without_token_ids_are_never_merged() -> None:
    spans = [
        call(1, [user("q")], [bot("t1")]),
        call(2, [user("q"), bot("t1"), tool("r")], [bot("t2")]),
        call(3, [user("q"), bot("t1"), tool("r"), bot("t2")], [bot("t3")], ids=([1], [2])),
    ]
    triplets = spans_to_triplets(spans)
    assert len(triplets) == 3
    assert (triplets[0].prompt_token_ids, triplets[0].response_token_ids) == (None, None)
    assert triplets[0].response_mask is None and triplets[2].response_mask == [1]


def test_matched_rewards_between_merged_calls_belong_to_the_merged_triplet() -> None:
    calls = [span for span in continuing_calls() if span.attributes.get(semconv.LLM_CALL)]  # 1, 3, 4
    (merged,) = spans_to_triplets([*calls, reward(2, 0.5)], reward="matched")
    assert merged.reward == 0.5


def test_spans_of_several_attempts_and_unknown_reward_rules_are_refused() -> None:
    spans = [call(1, [user("a")], [bot("A")]), span(2, attempt="at-2")]
    with pytest.raises(InvalidInput, match="one attempt"):
        spans_to_triplets(spans)
    with pytest.raises(InvalidInput, match="'best'"):
        spans_to_triplets(spans[:1], reward="best")  # type: ignore[arg-type]


def test_the_adapter_classes_apply_their_options() -> None:
    spans = continuing_calls()
    assert TraceTripletAdapter(merge=False, reward="matched").adapt(spans) == spans_to_triplets(
        spans, merge=False, reward="matched"
    )
    assert len(TraceTripletAdapter(merge=False).adapt(spans)) == 3
    assert TraceMessagesAdapter(agent_match="nobody").adapt(spans) == []


# --- messages ---------------------------------------------------------------------------------


def test_messages_are_the_last_calls_prompt_and_answer() -> None:
    spans = [
        *continuing_calls(),
        call(6, [user("grade this")], [bot("ok")], agent="grader"),
    ]
    assert spans_to_messages(spans[:-1]) == [user("q"), bot("t1"), tool("r1"), bot("t2"), tool("r2"), bot("answer")]
    assert spans_to_messages(spans) == [user("grade this"), bot("ok")]
    assert spans_to_messages(spans, agent_match="grader") == [user("grade this"), bot("ok")]
    assert spans_to_messages([span(1, "agent")]) == []


# --- real spans from the tracing runtime ------------------------------------------------------


def test_spans_written_by_the_runtime_adapt_as_written(captured_spans: InMemorySpanExporter) -> None:
    exporter = captured_spans
    first_prompt = [user("2+2?")]
    second_prompt = [*first_prompt, bot("call calc"), tool("4")]
    with (
        rollout_context("ro-7", "at-7"),
        trace.get_tracer("agent").start_as_current_span("solver", attributes={semconv.AGENT_NAME: "solver"}),
    ):
        with operation("turn"):
            with llm_call("tiny", provider="test") as first:
                first.record_request(first_prompt)
                first.record_response([bot("call calc")])
                first.record_token_ids([10, 11], [12, 13], [-0.25, -0.5])
            emit_message("4", role="tool")
            with llm_call("tiny", provider="test") as second:
                second.record_request(second_prompt)
                second.record_response([bot("4")])
                second.record_token_ids([10, 11, 12, 13, 14], [15], [-0.125])
        with llm_call("tiny", agent_name="critic") as critic:
            critic.record_request([user("was that right?")])
            critic.record_response([bot("yes")])
        emit_reward({"correct": 1.0, "steps": 0.5}, primary="correct")
    spans = [
        Span.from_otel(
            readable,
            rollout_id=str(attributes[semconv.ROLLOUT_ID]),
            attempt_id=str(attributes[semconv.ATTEMPT_ID]),
            sequence_id=int(attributes[semconv.SEQUENCE_ID]),  # type: ignore[arg-type]
        )
        for readable in exporter.get_finished_spans()
        if (attributes := readable.attributes) is not None
    ]
    (solver,) = spans_to_triplets(spans, agent_match="^solver$")
    assert (solver.prompt, solver.response) == (first_prompt, [bot("call calc"), tool("4"), bot("4")])
    assert (solver.prompt_token_ids, solver.response_token_ids) == ([10, 11], [12, 13, 14, 15])
    assert solver.response_mask == [1, 1, 0, 1]
    assert solver.response_logprobs == [-0.25, -0.5, 0.0, -0.125]
    assert solver.reward == 1.0 and solver.metadata["rollout_id"] == "ro-7"
    assert [t.metadata["agent_name"] for t in spans_to_triplets(spans)] == ["solver", "critic"]
    assert spans_to_messages(spans, agent_match="solver") == [*second_prompt, bot("4")]
    assert spans_to_messages(spans) == [user("was that right?"), bot("yes")]
