"""Startup time and generation speed of the "vllm" model server, with token ids on:

    python -m agl.trainer.serving.vllm_bench [MODEL] [--requests 8] [--concurrency 1 8] [--max-tokens 128]

Without MODEL it serves the tiny test model (`agl.trainer.testing`). Each request is a chat
completion with ``return_token_ids`` and ``logprobs``, EOS ignored so every request generates
exactly ``--max-tokens`` tokens; tokens/s counts the ids returned over the wall time of a batch.
vLLM comes from ``$AGL_VLLM_PYTHON`` (see `agl.trainer.serving.vllm`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx

from agl.trainer.serving.vllm import VllmServer

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
VLLM_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
"""Attention head sizes vLLM's CPU attention accepts (vllm/v1/attention/backends/cpu_attn.py)."""


def vllm_tiny_model(folder: Path, seed: int = 0) -> Path:
    """`build_tiny_model`, with its attention heads regrouped if vLLM's CPU attention does not take
    their size (2 heads of 32 instead of 4 of 16): same tokenizer and template, weights from ``seed``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from agl.trainer.testing import build_tiny_model

    build_tiny_model(folder, seed=seed)
    config = AutoConfig.from_pretrained(folder)
    if config.hidden_size // config.num_attention_heads not in VLLM_HEAD_SIZES:
        config.num_attention_heads, config.num_key_value_heads = config.hidden_size // 32, 1
        torch.manual_seed(seed)
        AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    return folder


async def measure(server: VllmServer, requests: int, concurrency: int, max_tokens: int) -> dict[str, float]:
    """Tokens/s and mean latency of ``requests`` chat completions, ``concurrency`` at a time."""
    body = {
        "model": server.model_name,
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "seed": 0,
        "ignore_eos": True,
        "return_token_ids": True,
        "logprobs": True,
    }
    limit = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async with httpx.AsyncClient(base_url=server.base_url, timeout=600) as client:

        async def one() -> int:
            async with limit:
                began = time.perf_counter()
                response = await client.post("/chat/completions", json=body)
                response.raise_for_status()
                latencies.append(time.perf_counter() - began)
                return len(response.json()["choices"][0]["token_ids"])

        await one()  # warm-up, not counted
        latencies.clear()
        began = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one() for _ in range(requests))))
        elapsed = time.perf_counter() - began
    return {
        "concurrency": concurrency,
        "requests": requests,
        "tokens": tokens,
        "seconds": round(elapsed, 3),
        "tokens_per_s": round(tokens / elapsed, 1),
        "mean_latency_s": round(sum(latencies) / len(latencies), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", help="model folder or .gguf file (default: the tiny test model)")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model is None:
            model = vllm_tiny_model(Path(scratch) / "tiny")
        server = VllmServer(model)
        server.start()
        try:
            print(json.dumps({"model": server.model_name, "startup_s": round(server.startup_seconds or 0, 1)}))
            for concurrency in args.concurrency:
                print(json.dumps(asyncio.run(measure(server, args.requests, concurrency, args.max_tokens))))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
