"""What only the provider's response knows (token usage, finish reason, response id), which every
CrewAI provider reports at the end of each call: the LLM span carries it with no client
instrumentor underneath (as for CrewAI's Anthropic, Gemini or Bedrock providers, which
``agl_openai`` never sees)."""

from __future__ import annotations

from typing import Any

import pytest
from crewai import LLM, Agent, Crew, Task
from crewai.events.types.llm_events import LLMCallType
from crewai.llms.base_llm import BaseLLM, llm_call_context

from agl.core.testing.chat_server import chat_log, chat_server_app
from agl.core.testing.server import ServingThread
from agl.core.tracing import semconv


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_crewais_openai_provider_alone_gives_usage_finish_reason_and_id(
    captured_spans, instrument, kit, stream: bool
) -> None:
    instrument()
    app = chat_server_app(["Thought: I know it\nFinal Answer: Hello."])
    with ServingThread(app) as server:
        llm = LLM(model="openai/agl-toy", base_url=f"{server.url}/v1", api_key="test", max_retries=0, stream=stream)
        agent = Agent(role="Writer", goal="Write", backstory="Clear.", llm=llm)
        task = Task(description="Say hello.", expected_output="A greeting", agent=agent)
        assert Crew(agents=[agent], tasks=[task]).kickoff().raw == "Hello."

    (sent,) = chat_log(app).replies
    (call,) = [span for span in captured_spans.get_finished_spans() if span.attributes.get(semconv.LLM_CALL)]
    assert call.attributes[semconv.USAGE_INPUT_TOKENS] == len(sent.prompt_token_ids)
    assert call.attributes[semconv.USAGE_OUTPUT_TOKENS] == len(sent.token_ids)
    assert list(call.attributes[semconv.FINISH_REASONS]) == [sent.finish_reason]
    assert call.attributes[semconv.RESPONSE_ID].startswith("chatcmpl-")


class ReportingLLM(BaseLLM):
    """A custom model that reports its call as CrewAI's providers do, with Anthropic's usage keys."""

    def call(self, messages: Any, tools: Any = None, *args: Any, **kwargs: Any) -> str:
        reply = "Thought: I know it\nFinal Answer: Hello."
        with llm_call_context():
            self._emit_call_started_event(messages=messages)
            self._emit_call_completed_event(
                response=reply,
                call_type=LLMCallType.LLM_CALL,
                messages=messages,
                usage={"input_tokens": 11, "output_tokens": 7, "cache_read_input_tokens": 4},
                finish_reason="max_tokens",
                response_id="msg_01",
            )
        return reply

    def supports_function_calling(self) -> bool:
        return False


def test_a_custom_models_reported_usage_is_normalised_as_crewai_counts_it(captured_spans, instrument) -> None:
    instrument()
    assert ReportingLLM(model="reporting-model").call("Say hello.").endswith("Hello.")
    (call,) = captured_spans.get_finished_spans()
    assert call.attributes[semconv.USAGE_INPUT_TOKENS] == 15  # cache reads are billed input, as CrewAI counts them
    assert call.attributes[semconv.USAGE_OUTPUT_TOKENS] == 7
    assert list(call.attributes[semconv.FINISH_REASONS]) == ["max_tokens"]
    assert call.attributes[semconv.RESPONSE_ID] == "msg_01"
