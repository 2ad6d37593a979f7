"""A reply of ``n`` choices (best-of-n sampling) is trained on choice 0, its token ids and its
message alike; the other choices' messages are not part of the conversation."""

from __future__ import annotations

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agl.core.adapters import spans_to_messages, spans_to_triplets
from agl.core.tracing import llm_call, rollout_context, semconv
from agl.core.tracing.chat import request_parameters
from agl.core.types import Span

QUESTION = [{"role": "user", "content": "A name for a cat?"}]
CHOICES = [{"role": "assistant", "content": "Tom"}, {"role": "assistant", "content": "Felix"}]
PARTS = [{"role": "assistant", "content": None, "reasoning": "short"}, {"role": "assistant", "content": "Tom"}]


def recorded(captured: InMemorySpanExporter) -> list[Span]:
    return [
        Span.from_otel(readable, rollout_id="ro-1", attempt_id="at-1", sequence_id=int(attributes[semconv.SEQUENCE_ID]))  # type: ignore[arg-type]
        for readable in captured.get_finished_spans()
        if (attributes := readable.attributes) is not None
    ]


def test_a_reply_of_n_choices_gives_choice_0s_message_with_its_ids(captured_spans: InMemorySpanExporter) -> None:
    with rollout_context("ro-1", "at-1"), llm_call("policy") as call:
        call.record_request(QUESTION, parameters=request_parameters({"n": 2, "temperature": 1.0}))
        call.record_response(CHOICES)  # one message per choice, as the openai instrumentor records it
        call.record_token_ids([1, 2], [3], [-0.5])  # choice 0's
    spans = recorded(captured_spans)
    (triplet,) = spans_to_triplets(spans)
    assert (triplet.response, triplet.response_token_ids) == (CHOICES[:1], [3])
    assert spans_to_messages(spans) == [*QUESTION, CHOICES[0]]


def test_several_messages_of_one_answer_are_kept(captured_spans: InMemorySpanExporter) -> None:
    """A recorder of the Responses API writes one answer as several messages and names no ``n``."""
    with rollout_context("ro-1", "at-1"), llm_call("policy") as call:
        call.record_request(QUESTION, parameters=request_parameters({"n": 1}))
        call.record_response(PARTS)
    (triplet,) = spans_to_triplets(recorded(captured_spans))
    assert triplet.response == PARTS
