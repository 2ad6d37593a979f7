"""What a model reply is recorded as, on AutoGen's replay model: text a model writes beside its
tool calls (AutoGen's ``thought``) is the message's content, as on the wire and as the next
request carries it."""

from __future__ import annotations

import json

from autogen_agentchat.agents import AssistantAgent
from autogen_core import FunctionCall
from autogen_core.models import CreateResult, RequestUsage

from agl.core.tracing import rollout_context, semconv

from .conftest import replay


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


async def test_text_beside_tool_calls_is_recorded_as_content_as_the_next_request_carries_it(traced, instrument) -> None:
    """AutoGen's clients keep the text a model writes beside its tool calls in ``thought``; OpenAI's
    sends it back as the assistant message's ``content``. The reply must be recorded the same way,
    or a training sample teaches that text as reasoning, and no longer matches the next prompt."""
    instrument()
    call = FunctionCall(id="call-1", name="add", arguments='{"a": 40, "b": 2}')
    reply = CreateResult(
        finish_reason="function_calls",
        content=[call],
        thought="Let me add them.",
        usage=RequestUsage(10, 5),
        cached=False,
    )
    agent = AssistantAgent("adder", model_client=replay(reply, "It is 42."), tools=[add], reflect_on_tool_use=True)
    with rollout_context("ro-test", "at-test"):
        await agent.run(task="What is 40 + 2?")
    first, second = [span.attributes or {} for span in traced.ours() if (span.attributes or {}).get(semconv.LLM_CALL)]
    (recorded,) = json.loads(first[semconv.OUTPUT_MESSAGES])
    assert recorded == {
        "role": "assistant",
        "content": "Let me add them.",
        "tool_calls": [
            {"id": "call-1", "type": "function", "function": {"name": "add", "arguments": '{"a": 40, "b": 2}'}}
        ],
    }
    assert recorded in json.loads(second[semconv.INPUT_MESSAGES])
