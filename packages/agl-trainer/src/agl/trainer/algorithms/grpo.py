"""``grpo``: group-relative policy optimisation of a small model, in one process, on CPU or GPU.

The model is loaded into the embedded transformers engine, served through the LLM proxy and
published as the ``llm`` resource, so agents need no change: they call the base URL they are given.
Each step runs ``n`` rollouts of each of ``tasks_per_step`` training tasks, reads every rollout's
LLM calls back from the store as triplets (exact engine token ids; calls merged where their ids
continue), scores each rollout against its task's group (`learning.advantages`), and takes a
PPO-clipped policy-gradient step on the engine's own logprobs with the loss normalised per
rollout (`learning.batches`). The engine's module is the one trained, under the engine's lock, so
the next rollouts sample from the new weights at once; with ``model_server`` (vLLM on GPUs, say)
a local copy trains and each step's weights are pushed to the server instead.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agl.trainer.algorithm import Algorithm, AlgorithmContext
from agl.trainer.learning.options import (
    check_model,
    check_outputs,
    check_serving,
    check_trainable,
    checkpoint_folder,
    non_negative_int,
    non_negative_number,
    positive_int,
    positive_number,
)
from agl.trainer.learning.rollouts import (
    FailurePolicy,
    apply_failure_policy,
    mean_reward,
    run_groups,
    task_cycle,
    tied_groups,
    validation_reward,
)

CHECKPOINT_MARKER = "agl_checkpoint.json"
"""File in the checkpoint folder naming the step whose weights the folder holds: ``{"step": K}``."""

_COUNTS = ("n", "tasks_per_step", "steps", "max_tokens", "updates_per_step", "micro_batch_size", "max_length")


class GRPO(Algorithm):
    """RL with group-relative advantages on the model at ``model`` (a folder or a ``.gguf`` file).

    Options (defaults in brackets): ``n`` [8] rollouts per task; ``tasks_per_step`` [2]; ``steps``
    [20]; ``lr`` [5e-5] (AdamW); ``clip`` [0.2] and ``clip_high`` [= clip] bound the ratio to
    ``[1 - clip, 1 + clip_high]``; ``kl_coef`` [0] weighs the k3 KL to a frozen copy of the initial
    model (kept only when > 0); ``max_tokens`` [64] and ``temperature`` [1.0] are published in the
    resource's ``sampling_parameters`` for the agent to pass on (the trainer's logprobs use the same
    temperature; rollouts whose calls ran at another, or with a top-p below 1, which the trainer's
    logprobs do not model, are counted in ``train/temperature_mismatch`` and ``train/top_p_mismatch``);
    ``top_layers`` trains only the last k decoder layers (and the final norm), ``lora_rank`` trains
    LoRA adapters instead (default: every weight); ``seed`` [0]; ``val_every`` [5] steps (plus
    before the first and after the last; needs a val dataset); ``updates_per_step`` [1] optimizer
    steps on each batch (more than one makes the clipping bite); ``micro_batch_size`` [8];
    ``max_length`` [1024] tokens per triplet (longer ones dropped); ``scale_advantages`` [True]
    divides by the group's std; ``resample_tied`` [0] rounds of fresh tasks drawn in place of groups
    whose rollouts all scored alike (all advantages 0: no policy gradient, only a smaller share for the
    rest), so a step still learns when the policy has settled on answers that win, or lose, on most
    tasks (dynamic sampling); ``failed_rollouts`` ["zero"] or "drop_group" (see
    `learning.rollouts.FailurePolicy`); ``checkpoint_dir`` where the final model is saved (default:
    ``<trainer output dir>/checkpoint``, else not saved); ``save_every`` [0: only at the end] also
    saves the weights there every that many steps, each save replacing the previous one whole (a
    crash mid-save keeps the previous), so a fit that fails or is killed late leaves its last saved
    step (needs a checkpoint folder); ``resource`` ["llm"] the resource name;
    ``timeout`` seconds per batch of rollouts; ``grad_clip`` [1.0]; ``device`` ["cpu"] where the
    engine (and so the training) runs. ``model_server`` (a name registered with
    ``agl_register_model_servers``, e.g. "vllm") serves the model out of process, started with
    ``model_server_options``: a local copy trains, and after each step its weights are saved and
    pushed with `ModelServer.load_weights`; by default the embedded engine serves in process and the
    served module itself trains.

    Validation runs each val task once with the same sampling parameters as training. Rollouts of
    a step run as concurrently as the trainer has runners (``n_runners`` ≥ ``n * tasks_per_step``
    lets the engine decode them in batches of up to 8).

    Metrics per step: ``train/reward_mean`` (every rollout the step ran, tied groups replaced by
    ``resample_tied`` included; failures count 0), ``resampled`` (tasks drawn in their place),
    ``val/reward_mean`` when measured, ``loss``, ``policy_loss``, ``kl``, ``clip_fraction``,
    ``ratio_mean`` (engine vs trainer logprobs before the update: ≈1 when they agree),
    ``grad_norm``, ``tokens``, ``rollouts``, ``failed``, ``dropped`` (over-long triplets),
    ``skipped`` (triplets without token ids), ``seconds`` (the whole step, validation included),
    ``rollout_seconds``, ``update_seconds`` and ``update_skipped`` (1 when every group tied and
    there is no KL term: no gradient, so no optimizer step). The first step with nothing to train
    on (every rollout failed: the warning quotes the first error; or no LLM call with token ids: an
    agent calling another model than the one published) logs a warning saying why. Returns ``{"val_reward_before",
    "val_reward_after", "train_reward_first", "train_reward_last", "steps", "checkpoint"}``.

    Each save logs its step at info and writes it to ``agl_checkpoint.json`` (``{"step": K}``) in
    the checkpoint folder, after the weights (the file is absent while a save is under way); a save
    made during the loop adds ``checkpoint_step`` to that step's metrics. To continue from a
    checkpoint, start a new fit with ``model`` set to its folder (a plain model folder): it starts a
    new optimizer (AdamW's moments are not saved), counts steps from 1 again and draws tasks from the
    start of the dataset's order, so it is not the run the crash cut short, only its weights.

    When the fit ends (also when it fails), the proxy stops and the resources the fit was given are
    published again as the latest (`ServedPolicy.retire`); the trained model is the checkpoint.
    """

    name = "grpo"

    def __init__(
        self,
        *,
        model: str,
        n: int = 8,
        tasks_per_step: int = 2,
        steps: int = 20,
        lr: float = 5e-5,
        clip: float = 0.2,
        clip_high: float | None = None,
        kl_coef: float = 0.0,
        max_tokens: int = 64,
        temperature: float = 1.0,
        top_layers: int | None = None,
        lora_rank: int | None = None,
        seed: int = 0,
        val_every: int = 5,
        updates_per_step: int = 1,
        micro_batch_size: int = 8,
        max_length: int = 1024,
        scale_advantages: bool = True,
        resample_tied: int = 0,
        failed_rollouts: FailurePolicy = "zero",
        checkpoint_dir: str | None = None,
        save_every: int = 0,
        resource: str = "llm",
        timeout: float | None = None,
        grad_clip: float = 1.0,
        device: str = "cpu",
        model_server: str | None = None,
        model_server_options: dict[str, Any] | None = None,
    ) -> None:
        self.model = check_model("grpo", model)
        values = locals()
        for option in _COUNTS:
            positive_int("grpo", option, values[option])
        non_negative_int("grpo", "resample_tied", resample_tied)
        non_negative_int("grpo", "save_every", save_every)
        if n < 2:
            raise ValueError(f"grpo option n must be at least 2 (advantages compare rollouts of a task), not {n}")
        for option in ("lr", "temperature", "grad_clip"):
            positive_number("grpo", option, values[option])
        for option in ("clip", "kl_coef"):
            non_negative_number("grpo", option, values[option])
        if clip_high is not None:
            non_negative_number("grpo", "clip_high", clip_high)
        if val_every is not None:
            positive_int("grpo", "val_every", val_every)
        check_trainable("grpo", top_layers, lora_rank)
        check_outputs("grpo", seed, checkpoint_dir, resource)
        if not isinstance(scale_advantages, bool):
            raise ValueError(f"grpo option scale_advantages must be true or false, not {scale_advantages!r}")
        if failed_rollouts not in ("zero", "drop_group"):
            raise ValueError(f"grpo option failed_rollouts must be 'zero' or 'drop_group', not {failed_rollouts!r}")
        if timeout is not None:
            positive_number("grpo", "timeout", timeout)
        self.model_server_options = check_serving("grpo", device, model_server, model_server_options)
        self.device, self.model_server = device, model_server
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self.n, self.tasks_per_step, self.steps = n, tasks_per_step, steps
        self.lr, self.clip, self.clip_high, self.kl_coef = lr, clip, clip_high, kl_coef
        self.max_tokens, self.temperature = max_tokens, temperature
        self.top_layers, self.lora_rank = top_layers, lora_rank
        self.seed, self.val_every = seed, val_every
        self.updates_per_step, self.micro_batch_size, self.max_length = updates_per_step, micro_batch_size, max_length
        self.scale_advantages, self.failed_rollouts = scale_advantages, failed_rollouts
        self.resample_tied, self.save_every = resample_tied, save_every
        self.checkpoint_dir, self.resource, self.timeout, self.grad_clip = checkpoint_dir, resource, timeout, grad_clip

    async def run(self, context: AlgorithmContext) -> dict[str, Any]:
        import torch

        from agl.trainer.learning.session import open_policy

        if not context.train_dataset:
            raise ValueError("grpo needs a non-empty train dataset")
        if self.save_every and checkpoint_folder(self.checkpoint_dir, context.trainer, "checkpoint") is None:
            raise ValueError(
                "grpo option save_every needs a checkpoint folder: set checkpoint_dir or the trainer's output_dir"
            )
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
        try:
            return await self._train(context, policy)
        finally:
            await policy.retire(context, "grpo")
            if self._scratch is not None:
                self._scratch.cleanup()
                self._scratch = None

    async def _train(self, context: AlgorithmContext, policy: Any) -> dict[str, Any]:
        from agl.trainer.learning.model import prepare_trainable
        from agl.trainer.learning.optimizer import MasterAdamW

        reference = copy.deepcopy(policy.model).eval().requires_grad_(False) if self.kl_coef > 0 else None
        parameters = prepare_trainable(policy.model, top_layers=self.top_layers, lora_rank=self.lora_rank)
        optimizer = MasterAdamW(parameters, lr=self.lr)
        resources_id = await policy.publish(context, self.resource)

        val_before = await validation_reward(context, resources_id, self.timeout)
        if val_before is not None:
            context.log_step(0, {"val/reward_mean": val_before})
        val_after = val_before
        train_rewards: list[float] = []
        tasks = task_cycle(context.train_dataset, self.seed)
        warned = False
        checkpoint = checkpoint_folder(self.checkpoint_dir, context.trainer, "checkpoint")
        saved_step = None
        for step in range(1, self.steps + 1):
            started = time.perf_counter()
            kept, ran, failed, resampled = await self._groups(context, tasks, resources_id)
            train_reward = mean_reward(ran)
            train_rewards.append(train_reward)
            mismatch = sum(1 for s in ran for t in s.temperatures if abs(t - self.temperature) > 1e-6)
            nucleus = sum(1 for s in ran for p in s.top_ps if p < 1)
            batch = self._batch(kept, policy.pad_token_id)
            if not warned and (failed == len(ran) or (kept and not batch.rows)):  # else only the metrics say so
                why = await _all_failed(context, ran) if failed == len(ran) else _untrainable(batch)
                context.logger.warning("grpo step %d has nothing to train on: %s", step, why)
                warned = True
            rollouts_done = time.perf_counter()
            update = await asyncio.to_thread(self._update, policy, optimizer, batch, reference)
            if not policy.in_process and "loss" in update:
                await asyncio.to_thread(self._push, policy, step)
            update_seconds = time.perf_counter() - rollouts_done
            metrics = {
                "train/reward_mean": train_reward,
                **update,
                "tokens": float(batch.num_tokens),
                "rollouts": float(len(ran)),
                "resampled": float(resampled),
                "failed": float(failed),
                "dropped": float(batch.dropped),
                "skipped": float(batch.skipped),
                "train/temperature_mismatch": float(mismatch),
                "train/top_p_mismatch": float(nucleus),
            }
            if (self.val_every and step % self.val_every == 0) or step == self.steps:
                measured = await validation_reward(context, resources_id, self.timeout)
                if measured is not None:
                    val_after = metrics["val/reward_mean"] = measured
            metrics["seconds"] = time.perf_counter() - started
            metrics["rollout_seconds"] = rollouts_done - started
            metrics["update_seconds"] = update_seconds
            if checkpoint is not None and self.save_every and step % self.save_every == 0:
                await self._save(context, policy, checkpoint, step)
                saved_step = step
                metrics["checkpoint_step"] = float(step)
            context.log_step(step, metrics)

        if checkpoint is not None and saved_step != self.steps:
            await self._save(context, policy, checkpoint, self.steps)
        return {
            "val_reward_before": val_before,
            "val_reward_after": val_after,
            "train_reward_first": train_rewards[0] if train_rewards else None,
            "train_reward_last": train_rewards[-1] if train_rewards else None,
            "steps": self.steps,
            "checkpoint": str(checkpoint) if checkpoint is not None else None,
        }

    async def _groups(
        self, context: AlgorithmContext, tasks: Iterator[Any], resources_id: str
    ) -> tuple[list[Any], list[Any], int, int]:
        """A step's groups: the rollouts to train on, every rollout run, how many failed, and how
        many tasks were drawn in place of tied groups (up to ``resample_tied`` rounds)."""
        chosen = [next(tasks) for _ in range(self.tasks_per_step)]
        ran = await run_groups(context, chosen, self.n, "train", resources_id=resources_id, timeout=self.timeout)
        kept, failed = apply_failure_policy(ran, self.failed_rollouts)
        resampled = 0
        for _ in range(self.resample_tied):
            tied = tied_groups(kept)
            if not tied:
                break
            replacements = [next(tasks) for _ in tied]
            next_group = max(s.group for s in ran) + 1
            more = await run_groups(
                context,
                replacements,
                self.n,
                "train",
                resources_id=resources_id,
                timeout=self.timeout,
                first_group=next_group,
            )
            more_kept, more_failed = apply_failure_policy(more, self.failed_rollouts)
            kept = [s for s in kept if s.group not in tied] + more_kept
            ran, failed, resampled = ran + more, failed + more_failed, resampled + len(replacements)
        return kept, ran, failed, resampled

    def _batch(self, kept: list[Any], pad_token_id: int) -> Any:
        from agl.trainer.learning.advantages import group_advantages
        from agl.trainer.learning.batches import Item, build_batch

        advantages = group_advantages([s.reward for s in kept], [s.group for s in kept], scale=self.scale_advantages)
        items = [
            Item(s.rollout.rollout_id, triplet, advantage)
            for s, advantage in zip(kept, advantages, strict=True)
            for triplet in s.triplets
        ]
        return build_batch(items, max_length=self.max_length, pad_token_id=pad_token_id)

    def _update(self, policy: Any, optimizer: Any, batch: Any, reference: Any) -> dict[str, float]:
        """``updates_per_step`` optimizer steps on one batch, holding the engine so no token is sampled
        from half-updated weights. Returns the metrics averaged over the updates."""
        import torch

        from agl.trainer.learning.losses import policy_loss
        from agl.trainer.learning.step import backward, logprobs_of

        if batch.rows == 0 or batch.num_tokens == 0:
            return {}
        if reference is None and not bool(batch.advantages.any()):
            # Every group tied: no gradient. Skip the step, or Adam's moments would still move the weights.
            return {"update_skipped": 1.0}
        with policy.exclusive() as model:
            if not bool(batch.has_old_logprobs.all()):
                recomputed = logprobs_of(
                    model, batch, micro_batch_size=self.micro_batch_size, temperature=self.temperature
                )
                keep = batch.has_old_logprobs.unsqueeze(-1)
                batch.old_logprobs = torch.where(keep, batch.old_logprobs, recomputed * batch.loss_mask)
            if reference is not None:
                batch.ref_logprobs = logprobs_of(
                    reference, batch, micro_batch_size=self.micro_batch_size, temperature=self.temperature
                )

            def loss_of(micro: Any, logprobs: Any) -> tuple[Any, dict[str, float]]:
                result = policy_loss(
                    logprobs,
                    micro.old_logprobs,
                    micro.advantages,
                    micro.weights,
                    clip=self.clip,
                    clip_high=self.clip_high,
                    ref_logprobs=micro.ref_logprobs,
                    kl_coef=self.kl_coef,
                )
                return result.loss, {
                    "policy_loss": result.policy,
                    "kl": result.kl,
                    "clip_fraction": result.clip_fraction,
                    "ratio_mean": result.ratio_mean,
                }

            totals: dict[str, float] = {}
            for update in range(self.updates_per_step):
                optimizer.zero_grad()
                metrics = backward(
                    model, batch, loss_of, micro_batch_size=self.micro_batch_size, temperature=self.temperature
                )
                metrics["grad_norm"] = optimizer.step(self.grad_clip)
                if update == 0:
                    totals["ratio_mean"] = metrics["ratio_mean"]  # before any update: engine vs trainer
                for name, value in metrics.items():
                    if name != "ratio_mean":
                        totals[name] = totals.get(name, 0.0) + value / self.updates_per_step
            optimizer.zero_grad()
        return totals

    async def _save(self, context: AlgorithmContext, policy: Any, folder: Path, step: int) -> None:
        """Save the weights after ``step`` into ``folder``, replacing an earlier save whole, then mark
        the step. The old marker goes first: a crash mid-save leaves no marker rather than a wrong one."""
        from agl.trainer.learning.model import save_checkpoint

        if folder.is_dir():  # else save_checkpoint says what is wrong with it
            (folder / CHECKPOINT_MARKER).unlink(missing_ok=True)
        with policy.exclusive() as model:
            await asyncio.to_thread(save_checkpoint, model, policy.tokenizer, folder)
        _write_marker(folder, step)
        context.logger.info("grpo saved the weights after step %d to %s", step, folder)

    def _push(self, policy: Any, step: int) -> None:
        """Hand the updated weights to an out-of-process server: saved to a scratch folder, loaded, removed."""
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="agl-grpo-")
        folder = Path(self._scratch.name) / f"step-{step}"
        policy.push(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _write_marker(folder: Path, step: int) -> None:
    """Write ``{"step": step}`` as the checkpoint's marker, whole or not at all (written aside, on
    disk, then renamed), as durable as the weights it names."""
    staged = folder / f".{CHECKPOINT_MARKER}.tmp"
    with staged.open("w") as file:
        file.write(json.dumps({"step": step}) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(staged, folder / CHECKPOINT_MARKER)


async def _all_failed(context: AlgorithmContext, ran: list[Any]) -> str:
    """Why a step whose every rollout failed learns nothing, with the first failure's error: a broken
    agent (a tool down, a bad import) otherwise shows only as the ``failed`` metric of every step."""
    first = next((s for s in ran if s.rollout.status != "succeeded"), None)
    if first is None:
        return f"all {len(ran)} of its rollouts failed (they reported no reward)"
    try:
        attempt = await context.store.get_latest_attempt(first.rollout.rollout_id)
    except Exception:  # a warning's wording is not worth failing the fit for
        attempt = None
    error = attempt.metadata.get("error") if attempt is not None else None
    return f"all {len(ran)} of its rollouts failed (the first with {error or f'status {first.rollout.status}'})"


def _untrainable(batch: Any) -> str:
    """Why a step's rollouts gave no row to train on, for the fit's one warning (later steps say it
    in their ``skipped`` and ``dropped`` metrics)."""
    reasons = []
    if batch.skipped:
        reasons.append(
            f"{batch.skipped} LLM calls carried no token ids (the agent must call the LLM resource grpo"
            " publishes: its proxy records them)"
        )
    if batch.dropped:
        reasons.append(f"{batch.dropped} LLM calls were longer than max_length")
    return "; ".join(reasons) or "its rollouts made no LLM call (the agent must call the LLM resource grpo publishes)"
