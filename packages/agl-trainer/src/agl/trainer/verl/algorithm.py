"""``verl``: RL of a policy on GPUs with verl (FSDP actor, vLLM replicas, Ray), rollouts from unchanged agents.

One fit:

1. verl's config is built from its own defaults, the plugin's settings and the ``verl`` option
   (`config.build_config`); verl's actor workers and vLLM replicas start on Ray (`cluster.VerlCluster`).
2. The replicas' OpenAI addresses become the upstreams of agl's `LlmProxy`, published as the ``llm``
   resource: agents call the base URL they are given, and the proxy records each call's exact engine
   token ids and logprobs in the store.
3. Each step queues ``n`` rollouts per task (a rollout timeout makes a hung agent a failed rollout)
   and reads them back (`learning.rollouts.run_groups`).
4. The failure policy and the staleness check apply; the rollouts become a batch in verl's layout
   (`conversion.to_verl_batch`: per-rollout advantages and loss weights, over-long rows dropped and
   counted), padded to the data-parallel size, and the actor takes its update on it.
5. New weights go to the replicas between batches; checkpoints are saved as configured.

``sync`` trains each batch at the weights that sampled it; ``one_step_off`` samples the next batch
during the update, one version behind (`policy.Schedule`). Nothing here has run on a GPU yet
(docs/verl.md says what has been checked and how).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agl.trainer.algorithm import Algorithm, AlgorithmContext
from agl.trainer.learning.options import checkpoint_folder
from agl.trainer.learning.rollouts import task_cycle
from agl.trainer.verl.options import VerlOptions, parse_options

if TYPE_CHECKING:
    from agl.trainer.learning.rollouts import Scored
    from agl.trainer.verl.cluster import VerlCluster
    from agl.trainer.verl.conversion import VerlBatch


@dataclasses.dataclass
class _Sampled:
    """One batch of finished rollouts and the weights version the replicas served while it ran."""

    scored: list[Scored]
    version: int
    seconds: float


class Verl(Algorithm):
    """PPO-style RL through verl with the `grpo` plugin's semantics, on GPUs (a Ray cluster for many nodes).

    Options (defaults in brackets): ``model`` (required) a Hugging Face model folder or name;
    ``n`` [8] rollouts per task; ``tasks_per_step`` [8]; ``steps`` [20]; ``lr`` [1e-6]; ``clip`` [0.2]
    and ``clip_high`` [= clip]; ``updates_per_step`` [1] optimizer steps on each batch (verl's
    ``ppo_epochs``); ``max_prompt_length`` and ``max_response_length`` [1024] tokens per row (longer
    rows are dropped and counted; ``max_response_length`` is also the ``max_tokens`` published);
    ``temperature`` [1.0]; ``micro_batch_size`` [4] rows per GPU per forward; ``normalize``
    ["rollout"] or "token"; ``scale_advantages`` [True]; ``advantages`` ["rollout"]: agl's
    per-rollout group advantages, or one of verl's critic-free estimators (``grpo``, ``rloo``,
    ``reinforce_plus_plus``, ``opo``, ``gpg``, ``grpo_passk``), allowed only on steps where every
    rollout is one row (else the step raises). ``mode`` ["sync"] or "one_step_off",
    ``max_staleness`` (must equal the mode's bound: 0 or 1), ``failed_rollouts`` ["zero"] or
    "drop_group", ``rollout_timeout`` [None] seconds per attempt (`policy.Schedule`). Layout:
    ``nnodes`` [1] and ``gpus_per_node`` [1] for the actor; in one_step_off the replicas take
    ``rollout_nnodes`` [1] times ``rollout_gpus_per_node`` [1] GPUs of their own; ``tensor_parallel``
    [1] GPUs per replica; ``gpu_memory_utilization`` [0.5] of each for vLLM. ``save_every`` [0]
    steps a checkpoint (also after the last step); ``checkpoint_dir`` (default:
    ``<trainer output dir>/verl``, else verl's default). ``resource`` ["llm"]; ``proxy_host``
    ["127.0.0.1"] and ``proxy_token`` (needed for any other host); ``ray_address`` (e.g. "auto"
    to join a running cluster; default: join one if ``ray.init`` finds one, else start one);
    ``timeout`` seconds per batch of rollouts; ``seed`` [0]; ``verl`` a nested mapping merged
    into verl's own config (keys the per-rollout loss needs are refused, `options.LOCKED`).

    Metrics per step: ``train/reward_mean``, ``rollouts``, ``failed``, ``rows``, ``padding_rows``,
    ``dropped_prompt``, ``dropped_response``, ``skipped``, ``tokens``, ``staleness``,
    ``weights_version``, ``update_skipped``, ``rollout_seconds``, ``update_seconds``,
    ``push_seconds``, ``seconds``, and verl's actor metrics as ``actor/...``. Returns
    ``{"train_reward_first", "train_reward_last", "steps", "checkpoint"}``; ``checkpoint`` is the
    Hugging Face folder of the last save (``.../global_step_N/actor/huggingface``), which
    ``agl serve`` loads.
    """

    name = "verl"

    def __init__(self, **options: Any) -> None:
        self.options: VerlOptions = parse_options(**options)
        self._pad_token_id = 0
        self._save_last = False

    async def run(self, context: AlgorithmContext) -> dict[str, Any]:
        from agl.trainer.verl.runtime import import_verl

        import_verl()  # first: a missing verl is one clear error before anything starts
        if not context.train_dataset:
            raise ValueError("verl needs a non-empty train dataset")
        from agl.trainer.verl.cluster import VerlCluster
        from agl.trainer.verl.config import build_config

        folder = checkpoint_folder(self.options.checkpoint_dir, context.trainer, "verl")
        self._save_last = folder is not None or self.options.save_every > 0
        config = await asyncio.to_thread(build_config, self.options, None if folder is None else str(folder))
        self._pad_token_id = await asyncio.to_thread(_pad_token_id, config)
        cluster = await asyncio.to_thread(VerlCluster.start, config, ray_address=self.options.ray_address)
        proxy = None
        try:
            await asyncio.to_thread(cluster.push_weights, 0)  # replicas start from dummy weights
            proxy, resources_id = await self._publish(context, cluster)
            return await self._train(context, cluster, resources_id)
        finally:
            if proxy is not None:
                await asyncio.to_thread(proxy.stop)
                await context.republish_initial_resources("verl stopped its LLM proxy")
            await asyncio.to_thread(cluster.stop)

    async def _publish(self, context: AlgorithmContext, cluster: VerlCluster) -> tuple[Any, str | None]:
        """The replicas behind agl's LLM proxy, published as the ``resource`` next to the initial resources."""
        from agl.trainer.proxy import LlmProxy

        options = self.options
        proxy = LlmProxy(
            context.store,
            cluster.addresses,
            host=options.proxy_host,
            token=options.proxy_token,
            sampling_parameters={"temperature": options.temperature, "max_tokens": options.max_response_length},
        )
        llm = await asyncio.to_thread(proxy.start)
        await context.publish_resources({**(context.initial_resources or {}), options.resource: llm})
        return proxy, context.resources_id

    async def _train(self, context: AlgorithmContext, cluster: VerlCluster, resources_id: str | None) -> dict[str, Any]:
        """The steps of `policy.Schedule.plan`: wait for a batch, train it, push the weights, save."""
        options = self.options
        tasks = task_cycle(context.train_dataset, options.seed)
        version = 0
        pending: asyncio.Future[_Sampled] = self._launch(context, tasks, resources_id, version)
        rewards: list[float] = []
        checkpoint: Path | None = None
        plans = options.schedule.plan(options.steps)
        try:
            for plan in plans:
                started = time.perf_counter()
                sampled = await pending
                waited = time.perf_counter() - started
                await asyncio.to_thread(cluster.release)
                if plan.launch_next_first:  # one-step-off: the next batch samples while this one trains
                    pending = self._launch(context, tasks, resources_id, version)
                metrics = await asyncio.to_thread(self._step, cluster, sampled, version)
                rewards.append(metrics["train/reward_mean"])
                version += 1
                last = plan.step == len(plans)
                if (last and self._save_last) or (options.save_every and plan.step % options.save_every == 0):
                    checkpoint = await asyncio.to_thread(cluster.save, plan.step)
                pushed = time.perf_counter()
                if plan.launch_next_first:
                    finished = await pending  # verl's push aborts requests in flight: let them finish first
                    await asyncio.to_thread(cluster.push_weights, version)
                    pending = _ready(finished)
                elif not last:
                    await asyncio.to_thread(cluster.push_weights, version)
                    pending = self._launch(context, tasks, resources_id, version)
                metrics["push_seconds"] = time.perf_counter() - pushed
                metrics["rollout_seconds"] = waited
                metrics["seconds"] = time.perf_counter() - started
                context.log_step(plan.step, metrics)
        finally:
            pending.cancel()  # a batch still queued when the fit fails is not waited for
        return {
            "train_reward_first": rewards[0] if rewards else None,
            "train_reward_last": rewards[-1] if rewards else None,
            "steps": options.steps,
            "checkpoint": str(checkpoint) if checkpoint is not None else None,
        }

    def _launch(
        self, context: AlgorithmContext, tasks: Iterator[Any], resources_id: str | None, version: int
    ) -> asyncio.Task[_Sampled]:
        """Queue the next ``tasks_per_step`` tasks, ``n`` rollouts each, as a task that finishes with them."""
        chosen = [next(tasks) for _ in range(self.options.tasks_per_step)]
        return asyncio.create_task(self._rollouts(context, chosen, resources_id, version))

    async def _rollouts(
        self, context: AlgorithmContext, chosen: list[Any], resources_id: str | None, version: int
    ) -> _Sampled:
        from agl.trainer.learning.rollouts import run_groups

        started = time.perf_counter()
        scored = await run_groups(
            _with_timeout(context, self.options.schedule.rollout_timeout),
            chosen,
            self.options.n,
            "train",
            resources_id=resources_id,
            timeout=self.options.timeout,
        )
        return _Sampled(scored, version, time.perf_counter() - started)

    def _step(self, cluster: VerlCluster, sampled: _Sampled, version: int) -> dict[str, float]:
        """Staleness check, conversion, old logprobs where the engine gave none, the actor's update."""
        from agl.trainer.learning.rollouts import mean_reward
        from agl.trainer.verl.policy import check_staleness

        options = self.options
        staleness = check_staleness([sampled.version] * len(sampled.scored), version, options.schedule.bound)
        batch = self._convert(sampled.scored, cluster)
        stats = batch.stats
        metrics = {
            "train/reward_mean": mean_reward(sampled.scored),
            "rollouts": float(stats.rollouts),
            "failed": float(stats.failed),
            "rows": float(stats.rows),
            "padding_rows": float(batch.meta_info.get("agl_padding_rows", 0)),
            "dropped_prompt": float(stats.dropped_prompt),
            "dropped_response": float(stats.dropped_response),
            "skipped": float(stats.skipped),
            "tokens": float(stats.trained_tokens),
            "staleness": float(staleness),
            "weights_version": float(version),
            "update_skipped": 1.0,
        }
        started = time.perf_counter()
        update = self._update(cluster, batch)
        if update is not None:  # None: nothing to learn (no trained token, every group tied)
            metrics.update(update, update_skipped=0.0)
        metrics["update_seconds"] = time.perf_counter() - started
        return metrics

    def _convert(self, scored: list[Scored], cluster: VerlCluster) -> VerlBatch:
        from agl.trainer.verl.conversion import FinishedRollout, pad_to_multiple, to_verl_batch

        options = self.options
        batch = to_verl_batch(
            [FinishedRollout.from_scored(s) for s in scored],
            max_prompt_length=options.max_prompt_length,
            max_response_length=options.max_response_length,
            pad_token_id=self._pad_token_id,
            failed_rollouts=options.schedule.failed_rollouts,
            normalize=options.normalize,  # type: ignore[arg-type]
            scale_advantages=options.scale_advantages,
        )
        if options.advantages != "rollout":
            _require_single_rows(batch)
        return pad_to_multiple(batch, cluster.rows_multiple)

    def _update(self, cluster: VerlCluster, batch: VerlBatch) -> dict[str, float] | None:
        """The actor's update on ``batch``: advantages (agl's, or verl's estimator) times the loss weights
        as verl's advantages, summed per token (`docs/verl.md`: this is `grpo`'s loss)."""
        import torch

        from agl.trainer.verl.cluster import estimator_advantages, to_proto

        if batch.stats.trained_tokens == 0:
            return None
        proto = to_proto(batch, temperature=self.options.temperature)
        advantages = batch.tensors["advantages"]
        if self.options.advantages != "rollout":
            advantages = estimator_advantages(proto, cluster.config.algorithm)
        if not bool(advantages.any()):
            # Every group tied: no gradient. No step either, or Adam's moments would still move the weights.
            return None
        proto.batch["advantages"] = advantages * batch.tensors["loss_weights"]
        if "old_log_probs" not in batch.tensors:
            recomputed = cluster.log_probs(proto)
            engine = batch.tensors["has_rollout_log_probs"].unsqueeze(-1)
            mask = batch.tensors["response_mask"].float()
            proto.batch["old_log_probs"] = torch.where(engine, batch.tensors["rollout_log_probs"], recomputed * mask)
        return cluster.update_actor(proto, epochs=self.options.updates_per_step, seed=self.options.seed)


def _with_timeout(context: AlgorithmContext, seconds: float | None) -> AlgorithmContext:
    """The context with ``seconds`` as every queued rollout's attempt timeout (other settings kept):
    past it the store marks the attempt ``timeout`` and the failure policy applies."""
    if seconds is None:
        return context
    from agl.core.types import RolloutConfig

    config = (context.rollout_config or RolloutConfig()).model_copy(update={"timeout_seconds": seconds})
    return dataclasses.replace(context, rollout_config=config)


def _require_single_rows(batch: VerlBatch) -> None:
    """verl's estimators score rows; they equal per-rollout scoring only when each rollout is one row."""
    counts = Counter(batch.non_tensors["rollout_id"])
    repeated = sorted(rollout for rollout, rows in counts.items() if rows > 1)
    if repeated:
        raise ValueError(
            f"verl's advantage estimators need one row per rollout, but {len(repeated)} rollout(s) have several "
            f"(calls whose token ids do not continue), e.g. {repeated[0]}; use the option advantages='rollout'"
        )


def _pad_token_id(config: Any) -> int:
    """The model's pad token, else its end-of-sequence token, else 0 (the value padding positions hold)."""
    from transformers import AutoTokenizer

    model = config.actor_rollout_ref.model
    tokenizer = AutoTokenizer.from_pretrained(
        model.get("tokenizer_path") or model.path, trust_remote_code=bool(model.get("trust_remote_code", False))
    )
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(candidate, int):
            return candidate
    return 0


def _ready(value: _Sampled) -> asyncio.Future[_Sampled]:
    future: asyncio.Future[_Sampled] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future
