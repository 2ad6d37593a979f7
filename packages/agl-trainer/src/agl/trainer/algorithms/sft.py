"""``sft``: rejection-sampling fine-tuning, round after round, on the model's own best rollouts.

Each round runs ``n`` rollouts of every training task with the current model (served through the
LLM proxy as the ``llm`` resource), keeps the best ones (reward at least ``threshold``, or the top
``top_fraction``), and trains on their LLM calls read back from the store as triplets: the exact
token ids the engine generated, prompt (and tool output between merged calls) masked, the loss
normalised per rollout. Training runs on a copy of the served model (LoRA adapters with peft, or
full weights); the result is saved as a plain model folder and handed to the model server with
``load_weights``, exactly as an engine in another process would get it, and the next round samples
from it.
"""

from __future__ import annotations

import asyncio
import copy
import math
import random
import tempfile
from pathlib import Path
from typing import Any

from agl.trainer.algorithm import Algorithm, AlgorithmContext
from agl.trainer.learning.options import (
    check_model,
    check_outputs,
    check_serving,
    check_trainable,
    checkpoint_folder,
    positive_int,
    positive_number,
)


class SFT(Algorithm):
    """Rejection-sampling fine-tuning of the model at ``model`` (a folder or a ``.gguf`` file).

    Options (defaults in brackets): ``rounds`` [2]; ``n`` [4] rollouts per train task per round;
    ``threshold`` keeps rollouts whose reward is at least it, else ``top_fraction`` [0.25] keeps
    the best share of each round's rollouts, but never one that scored the round's lowest reward
    (with a pass/fail reward only passes are imitated, and a round that scored alike trains
    nothing); a rollout without reward, or failed, is never kept;
    ``epochs`` [2] over the kept rollouts per round; ``batch_size`` [8] rollouts per optimizer
    step; ``lr`` [1e-4] (AdamW); ``lora_rank`` trains LoRA adapters (merged when saved), else
    ``top_layers`` the last k layers, else every weight; ``max_tokens`` [64] and ``temperature``
    [1.0] are published in the resource's ``sampling_parameters``; ``max_length`` [1024] tokens per
    triplet (longer dropped); ``seed`` [0]; ``checkpoint_dir`` holds ``round-K`` folders (default
    ``<trainer output dir>/sft``, else a temporary folder removed at the end; a round that trained
    nothing, say because no rollout reached ``threshold``, saves none and logs a warning saying why); ``resource``
    ["llm"]; ``timeout`` seconds per batch of rollouts; ``grad_clip`` [1.0]; ``device`` ["cpu"] where the
    engine (and so the training) runs; ``model_server`` (a name registered with
    ``agl_register_model_servers``, e.g. "vllm", started with ``model_server_options``) serves the
    model out of process instead of the embedded engine; each round's checkpoint reaches it the same way.

    Metrics: each optimizer step logs ``loss`` (and ``epoch``, ``round``); the last step of a round
    adds ``train/reward_mean`` (of that round's sampled rollouts), ``kept``, ``dropped`` and
    ``val/reward_mean`` (after the round's checkpoint is served; step 0 has it for the initial
    model). Returns ``{"val_reward_before", "val_reward_after", "train_rewards" (per round),
    "losses" (per epoch, all rounds), "checkpoint"}``.

    When the fit ends (also when it fails), the proxy stops and the resources the fit was given are
    published again as the latest (`ServedPolicy.retire`); the trained model is the checkpoint.
    """

    name = "sft"

    def __init__(
        self,
        *,
        model: str,
        rounds: int = 2,
        n: int = 4,
        threshold: float | None = None,
        top_fraction: float = 0.25,
        epochs: int = 2,
        batch_size: int = 8,
        lr: float = 1e-4,
        lora_rank: int | None = None,
        top_layers: int | None = None,
        max_tokens: int = 64,
        temperature: float = 1.0,
        max_length: int = 1024,
        seed: int = 0,
        checkpoint_dir: str | None = None,
        resource: str = "llm",
        timeout: float | None = None,
        grad_clip: float = 1.0,
        device: str = "cpu",
        model_server: str | None = None,
        model_server_options: dict[str, Any] | None = None,
    ) -> None:
        self.model = check_model("sft", model)
        values = locals()
        for option in ("rounds", "n", "epochs", "batch_size", "max_tokens", "max_length"):
            positive_int("sft", option, values[option])
        for option in ("lr", "temperature", "grad_clip"):
            positive_number("sft", option, values[option])
        check_trainable("sft", top_layers, lora_rank)
        check_outputs("sft", seed, checkpoint_dir, resource)
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, int | float) or math.isnan(threshold)
        ):
            raise ValueError(f"sft option threshold must be a number, not {threshold!r}")
        if isinstance(top_fraction, bool) or not isinstance(top_fraction, int | float) or not 0 < top_fraction <= 1:
            raise ValueError(f"sft option top_fraction must be in (0, 1], not {top_fraction!r}")
        if timeout is not None:
            positive_number("sft", "timeout", timeout)
        self.model_server_options = check_serving("sft", device, model_server, model_server_options)
        self.device, self.model_server = device, model_server
        self.rounds, self.n, self.threshold, self.top_fraction = rounds, n, threshold, top_fraction
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.lora_rank, self.top_layers = lora_rank, top_layers
        self.max_tokens, self.temperature, self.max_length, self.seed = max_tokens, temperature, max_length, seed
        self.checkpoint_dir, self.resource, self.timeout, self.grad_clip = checkpoint_dir, resource, timeout, grad_clip

    async def run(self, context: AlgorithmContext) -> dict[str, Any]:
        import torch

        from agl.trainer.learning.session import open_policy

        if not context.train_dataset:
            raise ValueError("sft needs a non-empty train dataset")
        torch.manual_seed(self.seed)
        policy = await open_policy(
            context,
            self.model,
            seed=self.seed,
            device=self.device,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            model_server=self.model_server,
            model_server_options=self.model_server_options,
        )
        temporary = None
        root = checkpoint_folder(self.checkpoint_dir, context.trainer, "sft")
        if root is None:
            temporary = tempfile.TemporaryDirectory(prefix="agl-sft-")
            root = Path(temporary.name)
        try:
            return await self._train(context, policy, root, keep=temporary is None)
        finally:
            await policy.retire(context, "sft")
            if temporary is not None:
                temporary.cleanup()

    async def _train(self, context: AlgorithmContext, policy: Any, root: Path, *, keep: bool) -> dict[str, Any]:
        from agl.trainer.learning.model import prepare_trainable, save_checkpoint
        from agl.trainer.learning.optimizer import MasterAdamW
        from agl.trainer.learning.rollouts import mean_reward, run_groups, validation_reward

        # A copy trains; the served model changes only when a round's checkpoint is loaded.
        student = copy.deepcopy(policy.model)
        parameters = prepare_trainable(student, top_layers=self.top_layers, lora_rank=self.lora_rank)
        optimizer = MasterAdamW(parameters, lr=self.lr)
        resources_id = await policy.publish(context, self.resource)

        val_before = await validation_reward(context, resources_id, self.timeout)
        if val_before is not None:
            context.log_step(0, {"val/reward_mean": val_before})
        val_after = val_before
        shuffle = random.Random(self.seed)
        step = 0
        train_rewards: list[float] = []
        epoch_losses: list[float] = []
        checkpoint: Path | None = None
        for round_number in range(1, self.rounds + 1):
            scored = await run_groups(
                context, context.train_dataset, self.n, "train", resources_id=resources_id, timeout=self.timeout
            )
            train_rewards.append(mean_reward(scored))
            kept = self._select(scored)
            pending: dict[str, float] = {}  # the round's last step is logged with the round's summary
            for epoch in range(self.epochs):
                order = list(kept)
                shuffle.shuffle(order)
                losses = []
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start : start + self.batch_size]
                    loss, dropped = await asyncio.to_thread(self._step, student, optimizer, chunk, policy.pad_token_id)
                    if loss is None:
                        continue
                    if pending:
                        context.log_step(step, pending)
                    step += 1
                    losses.append(loss)
                    pending = {"loss": loss, "epoch": float(epoch), "round": float(round_number), "dropped": dropped}
                if losses:
                    epoch_losses.append(sum(losses) / len(losses))
            if not pending:  # the weights did not change: no checkpoint to save and serve
                reason = self._untrained(scored, kept)
                context.logger.warning("sft round %d trained nothing: %s", round_number, reason)
            else:
                checkpoint = root / f"round-{round_number}"
                await asyncio.to_thread(save_checkpoint, student, policy.tokenizer, checkpoint)
                await asyncio.to_thread(policy.load_weights, checkpoint)
            summary = {**pending, "train/reward_mean": train_rewards[-1], "kept": float(len(kept))}
            measured = await validation_reward(context, resources_id, self.timeout)
            if measured is not None:
                val_after = summary["val/reward_mean"] = measured
            if not pending:
                step += 1  # nothing was trained this round: the summary still gets its own step
            context.log_step(step, summary)
        return {
            "val_reward_before": val_before,
            "val_reward_after": val_after,
            "train_rewards": train_rewards,
            "losses": epoch_losses,
            "checkpoint": str(checkpoint) if keep and checkpoint is not None else None,
        }

    def _select(self, scored: list[Any]) -> list[Any]:
        """The rollouts to imitate: succeeded, rewarded, with triplets, and good enough.

        ``top_fraction`` never keeps a rollout scoring the round's lowest reward: with a pass/fail
        reward and fewer passes than the share, the share would otherwise be topped up with failures."""
        usable = _usable(scored)
        if self.threshold is not None:
            return [s for s in usable if s.reward >= self.threshold]
        if not usable:
            return []
        worst = min(s.reward for s in usable)
        count = max(1, round(self.top_fraction * len(scored)))
        best = sorted(usable, key=lambda s: s.reward, reverse=True)[:count]
        return [s for s in best if s.reward > worst]

    def _untrained(self, scored: list[Any], kept: list[Any]) -> str:
        """Why a round took no optimizer step, for its warning."""
        if kept:
            return f"its {len(kept)} kept rollouts held no token to train on (no token ids, or over max_length)"
        rewards = [s.reward for s in _usable(scored)]
        if not rewards:
            return "every rollout failed, had no reward or made no LLM call"
        if self.threshold is None:
            return (
                f"every usable rollout scored {rewards[0]:.4g}: top_fraction keeps only rollouts better than "
                "the round's worst (set threshold to train on them)"
            )
        return f"no rollout reached the threshold {self.threshold} (best reward {max(rewards):.4g})"

    def _step(self, model: Any, optimizer: Any, chunk: list[Any], pad_token_id: int) -> tuple[float | None, float]:
        """One optimizer step of cross-entropy on the chunk's generated tokens (per-rollout weights)."""
        from agl.trainer.learning.batches import Item, build_batch
        from agl.trainer.learning.losses import sft_loss
        from agl.trainer.learning.step import backward

        items = [Item(s.rollout.rollout_id, triplet) for s in chunk for triplet in s.triplets]
        batch = build_batch(items, max_length=self.max_length, pad_token_id=pad_token_id)
        if batch.num_tokens == 0:
            return None, float(batch.dropped)
        optimizer.zero_grad()
        totals = backward(
            model,
            batch,
            lambda micro, logprobs: (sft_loss(logprobs, micro.weights), {}),
            micro_batch_size=self.batch_size,
            temperature=1.0,
        )
        optimizer.step(self.grad_clip)
        return totals["loss"], float(batch.dropped)


def _usable(scored: list[Any]) -> list[Any]:
    """Rollouts that succeeded with a reward and made LLM calls: the only candidates to imitate."""
    return [s for s in scored if not s.failed and s.triplets]
