"""The toy task of the `grpo` and `sft` tests: reward = the share of digits among the non-space
characters of the answer. A random tiny model writes digits rarely (~3%), so training finds them
fast and a rise in validation reward is easy to see."""

from __future__ import annotations

from typing import Any

from openai import OpenAI

from agl.core.agent import rollout
from agl.core.types import LLM

PROMPTS = ["Say something.", "Hello!", "What is the capital of France?", "Two plus two?"]
TRAIN = [{"prompt": p} for p in PROMPTS]
VAL = [{"prompt": p} for p in PROMPTS for _ in range(6)]


def digit_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0


@rollout
def digits_agent(task: dict[str, Any], llm: LLM) -> float:
    """An ordinary OpenAI-client agent: it only reads its base URL and sampling parameters."""
    client = OpenAI(base_url=llm.endpoint, api_key=llm.api_key or "unused", max_retries=0)
    reply = client.chat.completions.create(
        model=llm.model, messages=[{"role": "user", "content": task["prompt"]}], **llm.sampling_parameters
    )
    return digit_share(reply.choices[0].message.content or "")
