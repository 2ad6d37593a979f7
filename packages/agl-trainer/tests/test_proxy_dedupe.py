"""An agent traced client-side (agl_openai) that calls through the proxy: the store gets two
records of each model call, and the adapters count each call once, with the engine's ids."""

from __future__ import annotations

import openai
from opentelemetry import trace

from agl.core.adapters import spans_to_triplets
from agl.core.store.base import LightningStore
from agl.core.testing.chat_server import chat_log, chat_server_app
from agl.core.testing.server import ServingThread
from agl.core.testing.tracing import captured_spans
from agl.core.tracing import semconv
from agl.core.tracing.context import ActiveRollout
from agl.core.tracing.emitters import emit_reward
from agl.instrument.openai import OpenAIInstrumentor
from agl.trainer.proxy import LlmProxy

HI = [{"role": "user", "content": "hi"}]


async def test_a_call_recorded_by_the_agent_and_the_proxy_is_one_triplet(sqlite_store: LightningStore) -> None:
    attempt = await sqlite_store.start_rollout({"task": "greet twice"})
    rollout_id, attempt_id = attempt.rollout_id, attempt.attempt.attempt_id
    app = chat_server_app(["Hello!", "Hello again!"])
    instrumentor = OpenAIInstrumentor()
    with (
        ServingThread(app) as engine,
        LlmProxy(sqlite_store, [f"{engine.url}/v1"], model="agl-toy") as proxy,
        captured_spans(ActiveRollout(rollout_id, attempt_id)) as exporter,
    ):
        instrumentor.instrument()
        try:
            async with openai.AsyncOpenAI(
                base_url=proxy.resource.base_url(rollout_id, attempt_id), api_key="none", max_retries=0
            ) as client:
                tracer = trace.get_tracer("agent")
                with tracer.start_as_current_span("invoke_agent greeter", attributes={semconv.AGENT_NAME: "greeter"}):
                    for reward in (0.25, 1.0):
                        await client.chat.completions.create(model="agl-toy", messages=HI)
                        emit_reward(reward)
        finally:
            instrumentor.uninstrument()
        for finished in exporter.get_finished_spans():  # what the agent's exporter would file
            assert finished.attributes is not None
            sequence_id = finished.attributes[semconv.SEQUENCE_ID]
            assert isinstance(sequence_id, int)
            await sqlite_store.add_otel_span(rollout_id, attempt_id, finished, sequence_id=sequence_id)

    spans = await sqlite_store.query_spans(rollout_id, attempt_id)
    records = [span for span in spans if span.attributes.get(semconv.LLM_CALL)]
    assert len(records) == 4  # each call twice: the client's record (no ids) and the proxy's
    proxied = [span for span in records if semconv.RESPONSE_TOKEN_IDS in span.attributes]
    assert len(proxied) == 2
    # The client sent its span's traceparent: each proxy record sits under the agent's record of that call.
    client_side = {span.span_id: span for span in records if span not in proxied}
    assert [client_side[span.parent_id].trace_id == span.trace_id for span in proxied] == [True, True]
    assert len({span.parent_id for span in proxied}) == 2

    triplets = spans_to_triplets(spans, merge=False, reward="matched", agent_match="greeter")
    sent = chat_log(app).replies
    assert [t.response_token_ids for t in triplets] == [sent[0].token_ids, sent[1].token_ids]
    assert [t.prompt_token_ids for t in triplets] == [sent[0].prompt_token_ids, sent[1].prompt_token_ids]
    assert [t.reward for t in triplets] == [0.25, 1.0]  # each call keeps the reward that followed it
    assert [t.metadata["agent_name"] for t in triplets] == ["greeter", "greeter"]
