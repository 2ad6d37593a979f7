"""An agent written with plain `openai`, run over a dataset, traced, and cut into training data.

    python examples/agent_to_triplets.py [--tasks 8]

The model is agl's scripted OpenAI-compatible test server on 127.0.0.1 (no real model here; it
answers sums, wrongly when the sum is odd, and returns exact token ids the way vLLM does). The
runner runs the `@rollout` agent below over the tasks, the openai instrumentation records each
model call, the spans land in the SQLite store, and each rollout becomes a triplet: the prompt,
the response, the exact token ids the server sent, and the reward.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import Any

import openai

from agl.core import LLM, RolloutRequest, Runner, open_store, rollout
from agl.core.adapters import spans_to_triplets
from agl.core.store import default_store_url
from agl.core.testing.chat_server import chat_server_app
from agl.core.testing.server import ServingThread
from agl.core.tracing import setup_tracing
from agl.instrument.openai import OpenAIInstrumentor


def scripted_model(messages: list[dict[str, Any]]) -> str:
    a, b = map(int, re.findall(r"\d+", messages[-1]["content"]))
    return f"The answer is {a + b if (a + b) % 2 == 0 else a + b + 1}."


@rollout
async def solver(task: dict[str, int], llm: LLM) -> float:
    """The agent: unchanged openai code; the resource `llm` tells it where the model is."""
    client = openai.AsyncOpenAI(base_url=llm.endpoint, api_key="unused")
    question = [{"role": "user", "content": f"What is {task['a']} + {task['b']}?"}]
    reply = await client.chat.completions.create(model=llm.model, messages=question)  # type: ignore[arg-type]
    return float(str(task["a"] + task["b"]) in (reply.choices[0].message.content or ""))


async def main(tasks: int) -> None:
    store = open_store()
    with ServingThread(chat_server_app(scripted_model)) as model_server:
        setup_tracing(store=store)
        OpenAIInstrumentor().instrument(capture_token_ids=True)
        resources = await store.add_resources({"llm": LLM(endpoint=f"{model_server.url}/v1", model="agl-toy")})
        queued = await store.enqueue_many_rollouts(
            [
                RolloutRequest(input={"a": 2 * i + 3, "b": i + 4}, resources_id=resources.resources_id)
                for i in range(tasks)
            ]
        )
        print(f"running {tasks} rollouts of a plain-openai agent against a scripted model on {model_server.url}")
        await Runner(solver, store, max_concurrency=4).run(until_empty=True)

    print(f"\n{'rollout':<20} {'task':<7} {'status':<10} {'reward':>6} {'prompt ids':>10} {'response ids':>12}")
    for finished in await store.query_rollouts(rollout_id_in=[r.rollout_id for r in queued]):
        (triplet,) = spans_to_triplets(await store.query_spans(finished.rollout_id, "latest"))
        task = f"{finished.input['a']}+{finished.input['b']}"
        prompt_ids, response_ids = triplet.prompt_token_ids or [], triplet.response_token_ids or []
        print(
            f"{finished.rollout_id:<20} {task:<7} {finished.status:<10} {triplet.reward!s:>6}"
            f" {len(prompt_ids):>10} {len(response_ids):>12}"
        )
    print(
        f"\nOne triplet in full: prompt {triplet.prompt}\n  response {triplet.response}\n"
        f"  response token ids {response_ids[:12]}… (as the server sent them), reward {triplet.reward}"
        f"\nSpans and rollouts are in {default_store_url()}: try `.venv/bin/agl spans {finished.rollout_id}`."
    )
    await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=8)
    asyncio.run(main(parser.parse_args().tasks))
