"""The model's reply built directly (`_direct_reply`) is exactly what the SDK's converter makes of
``to_input_items()``, reply shape by shape; other shapes go through the converter."""

from __future__ import annotations

from typing import Any

import pytest
from agents import ModelResponse, Usage
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputRefusal,
    ResponseOutputText,
)

from agl.instrument.openai_agents._wrappers import _chat_messages, _direct_reply, _output_attributes, _reply


def text(value: str) -> ResponseOutputText:
    return ResponseOutputText(text=value, type="output_text", annotations=[])


def message(*parts: Any, id: str = "m") -> ResponseOutputMessage:
    return ResponseOutputMessage(id=id, content=list(parts), role="assistant", status="completed", type="message")


def call(call_id: str, arguments: str = '{"a": 1}') -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(arguments=arguments, call_id=call_id, name="add", type="function_call")


DIRECT = {
    "one text": [message(text("42"))],
    "texts joined": [message(text("4"), text("2"))],
    "no content": [message()],
    "two messages": [message(text("a"), id="m1"), message(text("b"), id="m2")],
    "one call": [call("c1")],
    "two calls": [call("c1"), call("c2", arguments='{"b": 2}')],
    "empty arguments": [call("c1", arguments="")],
}
CONVERTED = {
    "a refusal": [message(ResponseOutputRefusal(refusal="no", type="refusal"))],
    "text then a call": [message(text("let me add")), call("c1")],
    "a call then text": [call("c1"), message(text("adding"))],
    "nothing": [],
}


def recorded(messages: list[Any]) -> dict[str, Any]:
    return _output_attributes(messages, Usage(), None)


@pytest.mark.parametrize("output", DIRECT.values(), ids=DIRECT.keys())
def test_a_usual_reply_is_built_directly_as_the_converter_builds_it(output: list[Any]) -> None:
    response = ModelResponse(output=output, usage=Usage(), response_id=None)
    assert _direct_reply(output) is not None
    assert recorded(_reply(response)) == recorded(_chat_messages(response.to_input_items()))


@pytest.mark.parametrize("output", CONVERTED.values(), ids=CONVERTED.keys())
def test_any_other_reply_goes_through_the_converter(output: list[Any]) -> None:
    response = ModelResponse(output=output, usage=Usage(), response_id=None)
    assert _direct_reply(output) is None
    assert recorded(_reply(response)) == recorded(_chat_messages(response.to_input_items()))
