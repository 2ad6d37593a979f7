"""End to end, nothing trained: a `@rollout` agent written with plain `openai`, run by the runner
over a small dataset against a model server on 127.0.0.1. The triplets cut from its spans carry
exactly the token ids the server sent (never re-tokenised text) and the agent's rewards."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from agl.core import LLM, RolloutRequest, Runner
from agl.core.adapters import spans_to_triplets
from agl.core.store import SqliteLightningStore
from agl.core.testing.chat_server import chat_log, chat_prompt_token_ids, chat_server_app
from agl.core.testing.server import ServingThread
from agl.core.testing.tracing import fresh_global_tracer_provider
from agl.core.tracing import setup_tracing
from agl.instrument.openai import OpenAIInstrumentor

# The demo's agent and scripted model, shared so the test checks what the demo shows.
_spec = importlib.util.spec_from_file_location(
    "agent_to_triplets", Path(__file__).parents[1] / "examples/agent_to_triplets.py"
)
assert _spec is not None and _spec.loader is not None
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)


async def test_a_runner_run_yields_triplets_with_the_servers_token_ids(tmp_path: Path) -> None:
    app = chat_server_app(demo.scripted_model)
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
            assert await Runner(demo.solver, store, max_concurrency=3).run(until_empty=True) == len(tasks)
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
