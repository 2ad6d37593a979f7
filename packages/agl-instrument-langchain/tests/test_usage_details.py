"""The usage breakdown LangChain's messages carry (``usage_metadata``'s ``input_token_details`` and
``output_token_details``) on the LLM span: cached input and reasoning output tokens, from a call and
from a stream (whose chunks' usage LangChain adds up), and never over what the wire said."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from agl.core.tracing import semconv
from agl.core.tracing.llm import start_llm_call

# As ChatOpenAI fills it from a reasoning model's reply that read most of its prompt from the cache.
USAGE = UsageMetadata(
    input_tokens=120,
    output_tokens=30,
    total_tokens=150,
    input_token_details={"cache_read": 100, "cache_creation": 0, "audio": 0},
    output_token_details={"reasoning": 20, "audio": 0},
)
# As ChatAnthropic streams it: the input's counts first, the output's at the end (LangChain adds them up).
STREAMED_USAGE = (
    UsageMetadata(input_tokens=120, output_tokens=0, total_tokens=120, input_token_details={"cache_read": 100}),
    UsageMetadata(input_tokens=0, output_tokens=30, total_tokens=30, output_token_details={"reasoning": 20}),
)


class ReasoningModel(BaseChatModel):
    """A provider's chat model as LangChain's integrations make them: its reply carries the usage
    breakdown the provider reported (``usage``), whole or spread over the stream's chunks."""

    usage: Any = USAGE

    @property
    def _llm_type(self) -> str:
        return "reasoning-fake"

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage("Hi.", usage_metadata=self.usage))])

    def _stream(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        for text, usage in zip(("Hi", "."), STREAMED_USAGE, strict=True):
            yield ChatGenerationChunk(message=AIMessageChunk(content=text, usage_metadata=usage))


def invoke(model: BaseChatModel) -> None:
    model.invoke("Hello.")


def stream(model: BaseChatModel) -> None:
    list(model.stream("Hello."))


def ainvoke(model: BaseChatModel) -> None:
    asyncio.run(model.ainvoke("Hello."))


def astream(model: BaseChatModel) -> None:
    async def consume() -> None:
        async for _ in model.astream("Hello."):
            pass

    asyncio.run(consume())


def only_call(captured_spans: Any) -> dict[str, Any]:
    (call,) = captured_spans.get_finished_spans()
    return dict(call.attributes or {})


@pytest.mark.parametrize("run", [invoke, stream, ainvoke, astream])
def test_cached_input_and_reasoning_output_tokens_are_recorded(captured_spans, instrument, run) -> None:
    instrument()
    run(ReasoningModel())
    attributes = only_call(captured_spans)
    assert (attributes[semconv.USAGE_INPUT_TOKENS], attributes[semconv.USAGE_OUTPUT_TOKENS]) == (120, 30)
    assert attributes[semconv.USAGE_CACHE_READ_INPUT_TOKENS] == 100  # of the 120 input tokens
    assert attributes[semconv.USAGE_REASONING_OUTPUT_TOKENS] == 20  # of the 30 output tokens


@pytest.mark.parametrize(
    "usage",
    [
        UsageMetadata(input_tokens=12, output_tokens=3, total_tokens=15),
        UsageMetadata(input_tokens=12, output_tokens=3, total_tokens=15, input_token_details={"audio": 2}),
    ],
    ids=["no-breakdown", "other-parts"],
)
def test_a_reply_without_the_parts_records_none(captured_spans, instrument, usage) -> None:
    """Absent is not zero: a provider that does not report a part leaves it out of the trace."""
    instrument()
    ReasoningModel(usage=usage).invoke("Hello.")
    attributes = only_call(captured_spans)
    assert (attributes[semconv.USAGE_INPUT_TOKENS], attributes[semconv.USAGE_OUTPUT_TOKENS]) == (12, 3)
    assert semconv.OUTPUT_MESSAGES in attributes
    assert semconv.USAGE_CACHE_READ_INPUT_TOKENS not in attributes
    assert semconv.USAGE_REASONING_OUTPUT_TOKENS not in attributes


class WireModel(ReasoningModel):
    """A model over a client whose own layer records the usage off the wire (as agl's openai
    instrumentor does underneath ChatOpenAI), then hands LangChain a breakdown that differs."""

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        call = start_llm_call("reasoning-fake")  # joins the span LangChain's layer opened
        call.record_response(None, cache_read_input_tokens=64, reasoning_output_tokens=8)
        call.end()
        return super()._generate(messages, stop, run_manager, **kwargs)


def test_counts_the_layer_underneath_recorded_off_the_wire_are_kept(captured_spans, instrument) -> None:
    instrument()
    WireModel().invoke("Hello.")
    attributes = only_call(captured_spans)
    assert attributes[semconv.USAGE_CACHE_READ_INPUT_TOKENS] == 64
    assert attributes[semconv.USAGE_REASONING_OUTPUT_TOKENS] == 8
    assert attributes[semconv.USAGE_INPUT_TOKENS] == 120  # what the wire layer left out, LangChain fills in
