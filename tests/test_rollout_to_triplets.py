"""End to end, nothing trained: a `@rollout` agent written with plain `openai`, run by the runner
over a small dataset against a model server on 127.0.0.1. The triplets cut from its spans carry
exactly the token ids the server sent (never re-tokenised text) and the agent's rewards."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import openai

from agl.core import LLM, RolloutRequest, Runner, rollout
from agl.core.adapters import spans_to_triplets
from agl.core.store import SqliteLightningStore
from agl.core.testing.chat_server import chat_log, chat_prompt_token_ids, chat_server_app
from agl.core.testing.server import ServingThread
from agl.core.testing.tracing import fresh_global_tracer_provider
from agl.core.tracing import setup_tracing
from agl.instrument.openai import OpenAIInstrumentor


def arithmetic(messages: list[dict[str, Any]]) -> str:
    """The model: right on even sums, wrong on odd ones, so rewards differ."""
    a, b = map(int, re.findall(r"\d+", messages[-1]["content"]))
    return f"The answer is {a + b if (a + b) % 2 == 0 else a + b + 1}."


@rollout
async def solver(task: dict[str, int], llm: LLM) -> float:
    client = openai.AsyncOpenAI(base_url=llm.endpoint, api_key="unused")
    question = [{"role": "user", "content": f"What is {task['a']} + {task['b']}?"}]
    reply = await client.chat.completions.create(model=llm.model, messages=question)  # type: ignore[arg-type]
    return float(str(task["a"] + task["b"]) in (reply.choices[0].message.content or ""))


async def test_a_runner_run_yields_triplets_with_the_servers_token_ids(tmp_path: Path) -> None:
    app = chat_server_app(arithmetic)
    instrumentor = OpenAIInstrumentor()
    store = SqliteLightningStore(tmp_path / "store.db", watchdog_interval=None)
    with ServingThread(app) as server, fresh_global_tracer_provider():
        provider = setup_tracing(store=store)
        instrumentor.instrument(capture_token_ids=True)
        try:
            resources = await store.add_resources({"llm": LLM(endpoint=f"{server.url}/v1", model="agl-toy")})
            tasks = [{"a": i, "b": i + 2 * (i % 2) + 1} for i in range(6)]
            queued = await store.enqueue_many_rollouts(
                [RolloutRequest(input=task, resources_id=resources.resources_id) for task in tasks]
            )
            assert await Runner(solver, store, max_concurrency=3).run(until_empty=True) == len(tasks)
        finally:
            instrumentor.uninstrument()
            provider.shutdown()

    sent_by_prompt = {tuple(reply.prompt_token_ids): reply for reply in chat_log(app).replies}
    assert len(sent_by_prompt) == len(tasks)
    # (The chat server's own FastAPI spans, outside any rollout, went to this process's observed one.)
    for finished in await store.query_rollouts(rollout_id_in=[r.rollout_id for r in queued]):
        assert finished.status == "succeeded"
        (triplet,) = spans_to_triplets(await store.query_spans(finished.rollout_id, "latest"))
        sent = sent_by_prompt[tuple(triplet.prompt_token_ids or ())]
        assert triplet.prompt_token_ids == chat_prompt_token_ids(triplet.prompt)  # the messages really sent
        assert (triplet.response_token_ids, triplet.response_logprobs) == (sent.token_ids, sent.logprobs)
        right = (finished.input["a"] + finished.input["b"]) % 2 == 0
        assert triplet.reward == (1.0 if right else 0.0)
    await store.close()
