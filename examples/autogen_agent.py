"""An AutoGen AgentChat agent with one tool, written without any agl import: run it under
``opentelemetry-instrument`` and its agent turn, model calls and tool call are traced into agl.

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=... \\
        opentelemetry-instrument python examples/autogen_agent.py

The model is whatever OpenAI-compatible server ``OPENAI_BASE_URL`` names (``AGENT_MODEL``,
default ``agl-toy``; ``agl serve MODEL`` answers only to its served name: serve with
``--served-model-name agl-toy``, or set the variable to the name ``/v1/models`` lists; the scripted
server agl's tests use answers to any name).
"""

import asyncio
import os

from autogen_agentchat.agents import AssistantAgent
from autogen_core.models import ModelInfo
from autogen_ext.models.openai import OpenAIChatCompletionClient


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def main() -> None:
    client = OpenAIChatCompletionClient(
        model=os.environ.get("AGENT_MODEL", "agl-toy"),
        model_info=ModelInfo(
            vision=False, function_calling=True, json_output=False, family="unknown", structured_output=False
        ),
        max_retries=0,
    )
    agent = AssistantAgent("calculator", model_client=client, tools=[add], reflect_on_tool_use=True)
    result = await agent.run(task="What is 17 + 25?")
    print(result.messages[-1].content)
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
