"""Merging joins the calls of one conversation only: a call of another agent or another model whose
prompt happens to start with the exact ids so far is a triplet of its own, whatever ``agent_match``."""

from __future__ import annotations

import json
from typing import Any

from adapter_spans import reward, span
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agl.core.adapters import spans_to_triplets
from agl.core.tracing import llm_call, rollout_context, semconv
from agl.core.tracing.emitters import emit_reward
from agl.core.types import Span

QUESTION = [{"role": "user", "content": "2+2?"}]
ANSWER = [{"role": "assistant", "content": "4"}]
CRITIQUE = [*QUESTION, *ANSWER, {"role": "user", "content": "Is that right?"}]


def record(sequence_id: int, ids: tuple[list[int], list[int]], **attributes: Any) -> Span:
    """An LLM call with token ids and one logprob per response id, plus ``attributes``."""
    prompt_ids, response_ids = ids
    return span(
        sequence_id,
        "chat",
        {
            semconv.LLM_CALL: True,
            semconv.INPUT_MESSAGES: json.dumps(QUESTION),
            semconv.OUTPUT_MESSAGES: json.dumps(ANSWER),
            semconv.PROMPT_TOKEN_IDS: prompt_ids,
            semconv.RESPONSE_TOKEN_IDS: response_ids,
            semconv.RESPONSE_LOGPROBS: [-0.5] * len(response_ids),
            **attributes,
        },
    )


def test_another_agents_call_that_continues_the_ids_is_not_merged() -> None:
    """A reflection step: the critic is sent the writer's conversation plus a question. Merged, the
    critic's tokens were filed under the writer's name, and the writer's triplet differed with and
    without ``agent_match``."""
    spans = [
        record(1, ([1, 2], [3, 4]), **{semconv.AGENT_NAME: "writer"}),
        record(2, ([1, 2, 3, 4, 5], [6]), **{semconv.AGENT_NAME: "critic"}),
        reward(3, 1.0),
    ]
    writer, critic = spans_to_triplets(spans)
    assert (writer.response_token_ids, writer.response_mask) == ([3, 4], [1, 1])
    assert writer.metadata["agent_name"] == "writer"
    assert (critic.response_token_ids, critic.metadata["agent_name"]) == ([6], "critic")
    (alone,) = spans_to_triplets(spans, agent_match="^writer$")
    assert alone.response_token_ids == writer.response_token_ids


def test_another_models_call_that_continues_the_ids_is_not_merged(captured_spans: InMemorySpanExporter) -> None:
    """A judge on another model of the same tokenizer family, sent the policy's conversation: its
    tokens and logprobs are not the policy's, so they must not be trained as the policy's."""
    with rollout_context("ro-1", "at-1"):
        with llm_call("policy") as policy:
            policy.record_request(QUESTION)
            policy.record_response(ANSWER)
            policy.record_token_ids([1, 2], [3, 4], [-0.25, -0.5])
        with llm_call("judge") as judge:
            judge.record_request(CRITIQUE)
            judge.record_response([{"role": "assistant", "content": "yes"}])
            judge.record_token_ids([1, 2, 3, 4, 5], [6], [-2.0])
        emit_reward(1.0)
    spans = [
        Span.from_otel(readable, rollout_id="ro-1", attempt_id="at-1", sequence_id=int(attributes[semconv.SEQUENCE_ID]))  # type: ignore[arg-type]
        for readable in captured_spans.get_finished_spans()
        if (attributes := readable.attributes) is not None
    ]
    first, second = spans_to_triplets(spans)
    assert (first.response_token_ids, first.response_logprobs, first.response_mask) == ([3, 4], [-0.25, -0.5], [1, 1])
    assert (second.prompt_token_ids, second.response_token_ids) == ([1, 2, 3, 4, 5], [6])
    assert second.reward == 1.0


def test_calls_that_leave_the_agent_or_model_unnamed_still_merge() -> None:
    """A name recorded on one call only is no evidence of another source: the proxy's record of a
    call names the model that answered, the agent's own record may not."""
    spans = [
        record(1, ([1, 2], [3]), **{semconv.AGENT_NAME: "writer", semconv.REQUEST_MODEL: "policy"}),
        record(2, ([1, 2, 3, 4], [5]), **{semconv.REQUEST_MODEL: "policy", semconv.RESPONSE_MODEL: "Qwen/Qwen3-0.6B"}),
        record(3, ([1, 2, 3, 4, 5, 6], [7]), **{semconv.RESPONSE_MODEL: "Qwen/Qwen3-0.6B"}),
    ]
    (merged,) = spans_to_triplets(spans)
    assert (merged.response_token_ids, merged.response_mask) == ([3, 4, 5, 6, 7], [1, 0, 1, 0, 1])
    assert merged.response_logprobs == [-0.5, 0.0, -0.5, 0.0, -0.5]


def test_a_run_keeps_the_names_its_calls_recorded() -> None:
    """A call that names nobody in between does not let another agent's call join the run."""
    spans = [
        record(1, ([1, 2], [3]), **{semconv.AGENT_NAME: "writer"}),
        record(2, ([1, 2, 3, 4], [5])),
        record(3, ([1, 2, 3, 4, 5, 6], [7]), **{semconv.AGENT_NAME: "critic"}),
    ]
    writer, critic = spans_to_triplets(spans)
    assert (writer.response_token_ids, writer.response_mask) == ([3, 4, 5], [1, 0, 1])
    assert (critic.response_token_ids, critic.metadata["agent_name"]) == ([7], "critic")
