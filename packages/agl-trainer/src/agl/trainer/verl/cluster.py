"""verl's side of a fit: the FSDP actor's worker group, the vLLM replicas, weight pushes, checkpoints.

The only module of the plugin that imports verl (after `runtime.import_verl` said it is there). It
builds what verl's own PPO trainer builds (``RayPPOTrainer.init_workers`` in
``verl/trainer/ppo/ray_trainer.py``), minus what agl replaces: no dataloader, no agent loop, no
reward loop — agl's runners run the agents and the store holds their rewards.

- **Colocated** (mode ``sync``): one worker group (role ``actor_rollout``) holds the FSDP actor and,
  on the same GPUs, vLLM replicas started by ``LLMServerManager`` (hybrid mode). The replicas sleep
  while the actor trains; ``CheckpointEngineManager.update_weights`` (backend ``naive``) copies the
  weights in and wakes them.
- **Separate** (mode ``one_step_off``): the actor group (role ``actor``) on ``trainer`` GPUs, standalone
  replicas on ``rollout`` GPUs of their own; weights move over NCCL (backend ``nccl``) between
  batches, and the replicas never sleep.

Every replica serves vLLM's own OpenAI app; `addresses` gives their base URLs for agl's LLM proxy.
Methods block (Ray calls): the algorithm runs them on a thread.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from agl.trainer.verl.conversion import VerlBatch

logger = logging.getLogger(__name__)

POOL = "global_pool"
ACTOR_PREFIX = "actor/"


@dataclass
class VerlCluster:
    """The started pieces; build with `start`, always `stop`."""

    config: Any
    actor: Any
    """The actor's RayWorkerGroup."""
    servers: Any
    """verl's LLMServerManager (the vLLM replicas)."""
    weights: Any
    """verl's CheckpointEngineManager (actor → replicas)."""
    colocated: bool
    owns_ray: bool

    @classmethod
    def start(cls, config: Any, *, ray_address: str | None) -> VerlCluster:
        """Join (``ray_address``, e.g. "auto") or start Ray, spawn the actor's workers, load the model,
        start the vLLM replicas and connect them to the actor for weight pushes."""
        import ray
        from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

        check_weight_push_backend(config)
        owns_ray = not ray.is_initialized()
        if owns_ray:
            ray.init(address=ray_address, runtime_env=dict(get_ppo_ray_runtime_env(config)))
        else:  # Ray's runtime environment is fixed at its start: verl's worker settings cannot be added now
            logger.warning(
                "Ray was already started in this process (runner mode 'ray' starts it first), so verl's worker"
                " environment (%s) is not applied and option ray_address is not used; for them, start Ray"
                " before the fit with runtime_env=verl.trainer.constants_ppo.get_ppo_ray_runtime_env()",
                ", ".join(sorted(get_ppo_ray_runtime_env(config).get("env_vars", {}))),
            )
        try:
            return cls._spawn(config, owns_ray)
        except BaseException:
            if owns_ray:
                ray.shutdown()  # a failed start leaves no Ray behind in this process
            raise

    @classmethod
    def _spawn(cls, config: Any, owns_ray: bool) -> VerlCluster:
        """What `start` does once Ray is up (``RayPPOTrainer.init_workers``'s part that agl needs)."""
        import ray
        from verl.checkpoint_engine import CheckpointEngineManager
        from verl.single_controller.ray import RayClassWithInitArgs, RayWorkerGroup, ResourcePoolManager
        from verl.single_controller.ray.base import create_colocated_worker_cls
        from verl.trainer.ppo.utils import Role
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.engine_workers import ActorRolloutRefWorker
        from verl.workers.rollout.llm_server import LLMServerManager

        colocated = bool(config.actor_rollout_ref.hybrid_engine)
        role = Role.ActorRollout if colocated else Role.Actor
        pools = ResourcePoolManager(
            resource_pool_spec={POOL: [config.trainer.n_gpus_per_node] * config.trainer.nnodes},
            mapping={role: POOL},
        )
        pools.create_resource_pool()
        pool = pools.get_resource_pool(role)
        worker = RayClassWithInitArgs(
            cls=ray.remote(ActorRolloutRefWorker),
            config=config.actor_rollout_ref,
            distillation_config=config.get("distillation"),
            role=str(role),
        )
        group = RayWorkerGroup(
            resource_pool=pool,
            ray_cls_with_init=create_colocated_worker_cls(class_dict={str(role): worker}),
            device_name=config.trainer.device,
        )
        actor = group.spawn(prefix_set=[str(role)])[str(role)]
        actor.init_model()
        if colocated:
            servers = LLMServerManager.create(config=config, worker_group=actor, rollout_resource_pool=pool)
        else:
            servers = LLMServerManager.create(config=config)  # standalone: the rollout GPUs of its own
        weights = CheckpointEngineManager(
            config=omega_conf_to_dataclass(config.actor_rollout_ref.rollout.checkpoint_engine),
            actor_wg=actor,
            replicas=servers.get_replicas(),
        )
        if colocated:
            weights.sleep_replicas()  # as verl does: the first push loads the weights and wakes them
        return cls(config, actor, servers, weights, colocated, owns_ray)

    @property
    def addresses(self) -> list[str]:
        """Each replica's OpenAI base URL (vLLM's own app, reached over the cluster's network)."""
        return [f"http://{address}/v1" for address in self.servers.get_addresses()]

    @property
    def data_parallel_size(self) -> int:
        """How many ways verl splits a batch for the actor."""
        ranks = self.actor._query_dispatch_info("actor")
        return int(max(ranks)) + 1

    @property
    def rows_multiple(self) -> int:
        """What a batch's row count must divide by (`rows_multiple_for`)."""
        return rows_multiple_for(self.config, self.data_parallel_size)

    def push_weights(self, version: int) -> None:
        """The actor's current weights to every replica (colocated: also wakes them). Call only when
        no rollout is in flight: verl's push aborts requests in progress."""
        self.weights.update_weights(version)

    def release(self) -> None:
        """After a batch's rollouts, colocated: put the replicas to sleep so the actor has the GPUs."""
        if self.colocated:
            self.weights.sleep_replicas()

    def log_probs(self, batch: Any) -> torch.Tensor:
        """The actor's log-probabilities of each response token of ``batch`` (a DataProto) [B, R]."""
        from verl.utils import tensordict_utils as tu
        from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

        data = left_right_2_no_padding(batch.to_tensordict())
        tu.assign_non_tensor(data, calculate_entropy=True, compute_loss=False)
        output = self.actor.compute_log_prob(data)
        return no_padding_2_padding(tu.get(output, "log_probs"), data).float()

    def update_actor(self, batch: Any, *, epochs: int, seed: int) -> dict[str, float]:
        """One optimizer step per epoch on the whole ``batch`` as a single mini-batch (its loss weights
        sum to 1 over all rows, so a split would change the loss). Returns verl's metrics, averaged."""
        from verl.utils import tensordict_utils as tu
        from verl.utils.metric import reduce_metrics
        from verl.workers.utils.padding import left_right_2_no_padding

        rows = len(batch)
        data = left_right_2_no_padding(batch.to_tensordict())
        tu.assign_non_tensor(
            data,
            calculate_entropy=False,
            distillation_use_topk=False,
            distillation_only=False,
            global_batch_size=rows,
            mini_batch_size=rows,
            epochs=epochs,
            seed=seed,
            dataloader_kwargs={"shuffle": False},
            compute_loss=True,
        )
        output = self.actor.update_actor(data)
        return actor_metrics(reduce_metrics(tu.get(output, "metrics")))

    def save(self, step: int) -> Path:
        """verl's checkpoint of the actor at ``step`` (FSDP shards, optimizer, and with ``hf_model`` in
        ``checkpoint.save_contents`` a Hugging Face folder); returns that folder. The path is made absolute
        here: the workers save from working directories of their own, possibly on other nodes."""
        root = Path(self.config.trainer.default_local_dir).resolve()
        actor = root / f"global_step_{step}" / "actor"
        keep = self.config.trainer.get("max_actor_ckpt_to_keep", None)
        self.actor.save_checkpoint(str(actor), None, step, max_ckpt_to_keep=keep)
        root.mkdir(parents=True, exist_ok=True)  # the workers may have written it on another node
        (root / "latest_checkpointed_iteration.txt").write_text(str(step))  # what verl's resume reads
        return actor / "huggingface"

    def stop(self) -> None:
        """Stop Ray if this fit started it (its actors go with it); on a cluster joined, leave it up."""
        if self.owns_ray:
            import ray

            ray.shutdown()


def check_weight_push_backend(config: Any) -> None:
    """Load verl's weight-push backend (``checkpoint_engine.backend``) here, before Ray starts, as its
    manager and the actor's workers will: ``nccl`` (mode one_step_off) imports cupy and pyzmq, and
    without them verl's workers fail only in ``init_model``, after the model has loaded. verl's error
    names the module that failed to import."""
    from verl.checkpoint_engine import CheckpointEngineRegistry
    from verl.utils.import_utils import import_external_libs

    engine = config.actor_rollout_ref.rollout.checkpoint_engine
    import_external_libs(engine.custom_backend_module or None)
    CheckpointEngineRegistry.get(engine.backend)


def rows_multiple_for(config: Any, data_parallel_size: int) -> int:
    """What a batch's row count must divide by. verl splits a batch evenly over the actor's
    data-parallel ranks; without dynamic batch sizes each rank then cuts its share into micro-batches
    of a fixed size, asserting that they come out even, for the update
    (``ppo_micro_batch_size_per_gpu``) and for log-probabilities (``log_prob_micro_batch_size_per_gpu``)
    alike. A batch's row count varies from step to step (over-long rows dropped, several rows per
    rollout, groups dropped), so it is padded up to this."""
    actor = config.actor_rollout_ref.actor
    if actor.use_dynamic_bsz:
        return data_parallel_size
    micro = math.lcm(
        actor.ppo_micro_batch_size_per_gpu, config.actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu
    )
    return data_parallel_size * micro


def to_proto(batch: VerlBatch, *, temperature: float) -> Any:
    """The batch as verl's ``DataProto``; ``temperature`` is what the actor divides logits by before its
    log-probabilities (the sampling temperature, as verl's trainer passes it)."""
    from verl import DataProto

    return DataProto.from_single_dict(batch.data, meta_info={"temperature": temperature, "multi_turn": False})


def estimator_advantages(proto: Any, algorithm: Any) -> torch.Tensor:
    """verl's own advantage estimator (``algorithm.adv_estimator``) over the rows of ``proto``, each row
    its own sample and ``uid`` its group; the caller makes sure every rollout is one row.

    The estimator sees the real rows only; rows `conversion.pad_to_multiple` added get 0. Given them,
    ``gpg`` scales every advantage by the row count over the rewarded rows (padding inflates it), and
    ``opo`` gives their group 0 / 0 = NaN, which verl's loss masks out of its value but not out of
    its gradient (NaN times the masked 0), so verl would skip the optimizer step for a NaN gradient
    norm: steps that silently train at the wrong scale, or not at all."""
    from verl.trainer.ppo.ray_trainer import compute_advantage

    from agl.trainer.verl.conversion import PADDING

    real = proto.non_tensor_batch["uid"] != PADDING
    rows = proto.select_idxs(real)
    rows.batch["token_level_rewards"] = rows.batch["token_level_scores"]
    scored = compute_advantage(
        rows,
        adv_estimator=algorithm.adv_estimator,
        gamma=algorithm.gamma,
        lam=algorithm.lam,
        norm_adv_by_std_in_grpo=algorithm.norm_adv_by_std_in_grpo,
        config=algorithm,
    )
    advantages = torch.zeros_like(proto.batch["token_level_scores"])
    advantages[torch.from_numpy(real)] = scored.batch["advantages"]
    return advantages


def actor_metrics(reduced: Mapping[str, Any]) -> dict[str, float]:
    """verl's update metrics, reduced, as the step's metrics: the scalars, each under ``actor/``. verl
    names some so already (``actor/ppo_kl``, ``actor/pg_loss``) and others not (``grad_norm``, ``lr``),
    so the prefix is added only where it is missing, as verl's trainer does (``rename_dict``)."""
    return {
        name if name.startswith(ACTOR_PREFIX) else ACTOR_PREFIX + name: scalar
        for name, value in reduced.items()
        if (scalar := _scalar(value)) is not None
    }


def _scalar(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    return None
