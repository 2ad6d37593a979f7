"""A review classifier on the plain ``openai`` client; nothing here knows about agl.

It is the agent the training demo improves: the trainer hands it a client pointed at the model
being trained, and it answers with one word. Run alone against any OpenAI-compatible server::

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=x python examples/sentiment_agent.py "Loved it"
"""

from __future__ import annotations

import os
import sys

from openai import OpenAI

INSTRUCTIONS = "Is the sentiment of this review positive or negative? Answer with one word."


def classify(client: OpenAI, model: str, review: str) -> str:
    """The model's one-word verdict on ``review``, as it wrote it."""
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": review}],
        max_tokens=6,
        temperature=1.0,
    )
    return reply.choices[0].message.content or ""


if __name__ == "__main__":
    print(classify(OpenAI(), os.environ.get("OPENAI_MODEL", "default"), " ".join(sys.argv[1:])))
