"""An OpenAI Agents SDK agent that knows nothing of agl. Under ``opentelemetry-instrument`` its
agent, tool and model-call spans land in agl's store, with no code change:

    opentelemetry-instrument python examples/openai_agents_agent.py
    agl rollouts list && agl spans ro-proc-…

The model is a scripted `Model` (no network, no API key): it calls the ``add`` tool, then answers
with the tool's result. Put a real model (``model="gpt-…"``, or ``OpenAIChatCompletionsModel`` on
any OpenAI-compatible server) in its place and nothing else changes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from agents import Agent, Model, ModelResponse, Runner, Usage, function_tool
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class CalculatorModel(Model):
    """Asks for ``add(17, 25)`` first, then answers with the result it was given."""

    async def get_response(self, system_instructions, input, *args: Any, **kwargs: Any) -> ModelResponse:  # type: ignore[no-untyped-def]
        results = [
            item["output"] for item in input if isinstance(item, dict) and item.get("type") == "function_call_output"
        ]
        if results:
            text = ResponseOutputText(text=f"17 + 25 = {results[-1]}.", type="output_text", annotations=[])
            output: list[Any] = [
                ResponseOutputMessage(id="msg-1", content=[text], role="assistant", status="completed", type="message")
            ]
        else:
            arguments = json.dumps({"a": 17, "b": 25})
            output = [ResponseFunctionToolCall(arguments=arguments, call_id="call-1", name="add", type="function_call")]
        return ModelResponse(output=output, usage=Usage(requests=1, input_tokens=12, output_tokens=4), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def main() -> None:
    agent = Agent(name="calculator", instructions="Use the add tool for sums.", tools=[add], model=CalculatorModel())
    result = asyncio.run(Runner.run(agent, "What is 17 + 25?"))
    print(result.final_output)


if __name__ == "__main__":
    main()
