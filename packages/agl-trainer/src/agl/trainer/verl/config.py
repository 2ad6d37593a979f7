"""verl's configuration for one fit: verl's own ``ppo_trainer`` defaults, the plugin's settings, the user's.

Three layers, merged in this order:

1. verl's ``ppo_trainer`` config, composed with Hydra from the config folder verl ships (the same
   defaults ``python -m verl.trainer.main_ppo`` starts from);
2. `plugin_settings`: what agl's semantics need (a token sum of per-rollout weighted advantages,
   no KL or entropy term aggregated per token, vLLM as the engine, the lengths, the layout);
3. the ``verl`` option, a nested mapping (for parallelism, offload, engine settings...).

The merge keeps verl's struct mode, so a misspelt key is an error naming it, except in verl's empty
mappings of free keyword arguments (``override_config``, ``engine_kwargs``); the result is checked
with verl's own validation (`verl.utils.config.validate_config`, which builds verl's ``ActorConfig``
dataclass) and against what verl's actor worker asserts at its start (`check_worker_batch_sizes`),
and the rollout and checkpoint-engine sections are built as verl's dataclasses too.
`plugin_settings` is plain Python; `build_config` imports verl. Without the flash-attn package
(a source build), `build_config` gives the actor PyTorch's attention (see `fit_attention`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

from agl.trainer.verl.options import VerlOptions

logger = logging.getLogger(__name__)

NO_DUAL_CLIP = 1e9
"""``clip_ratio_c``: verl's dual clip (3.0 by default) bounds the loss of negative advantages; `grpo`
has no such bound, so it is moved out of reach."""


def plugin_settings(options: VerlOptions, checkpoint_dir: str | None) -> dict[str, Any]:
    """The verl config keys the plugin sets, as a nested mapping (see `options.LOCKED` for which of
    them a ``verl`` override may not change)."""
    separate = options.separate_rollout
    clip_high = options.clip if options.clip_high is None else options.clip_high
    save_contents = ["model", "optimizer", "extra", "hf_model"]  # hf_model: a folder `agl serve` loads
    return {
        "data": {
            "max_prompt_length": options.max_prompt_length,
            "max_response_length": options.max_response_length,
            "train_batch_size": options.tasks_per_step,
        },
        "actor_rollout_ref": {
            "hybrid_engine": not separate,
            "model": {"path": options.model},
            "actor": {
                "strategy": "fsdp",
                "loss_agg_mode": "token-sum",
                "use_kl_loss": False,
                "entropy_coeff": 0,
                "clip_ratio_low": options.clip,
                "clip_ratio_high": clip_high,
                "clip_ratio_c": NO_DUAL_CLIP,
                "ppo_epochs": options.updates_per_step,
                "ppo_mini_batch_size": options.tasks_per_step,
                "ppo_micro_batch_size_per_gpu": options.micro_batch_size,
                # No weight decay, as `grpo` (verl's default is 0.01); the `verl` option may set one.
                "optim": {"lr": options.lr, "weight_decay": 0.0, "total_training_steps": options.steps},
                "checkpoint": {"save_contents": save_contents},
            },
            "rollout": {
                "name": "vllm",
                "mode": "async",
                "n": options.n,
                "temperature": options.temperature,
                "tensor_model_parallel_size": options.tensor_parallel,
                "gpu_memory_utilization": options.gpu_memory_utilization,
                "log_prob_micro_batch_size_per_gpu": options.micro_batch_size,
                "calculate_log_probs": True,
                "seed": options.seed,
                # Colocated, the replicas sleep while the actor trains and get weights in process;
                # on GPUs of their own they stay up and get weights over NCCL.
                "free_cache_engine": not separate,
                "checkpoint_engine": {"backend": "nccl" if separate else "naive"},
                "nnodes": options.rollout_nnodes if separate else 0,
                "n_gpus_per_node": options.rollout_gpus_per_node if separate else options.gpus_per_node,
            },
        },
        "algorithm": {
            # Read only when `advantages` names a verl estimator; "grpo" keeps verl's checks quiet otherwise.
            "adv_estimator": "grpo" if options.advantages == "rollout" else options.advantages,
            "norm_adv_by_std_in_grpo": options.scale_advantages,
            "use_kl_in_reward": False,
        },
        "critic": {"enable": False},
        "trainer": {
            "nnodes": options.nnodes,
            "n_gpus_per_node": options.gpus_per_node,
            "total_training_steps": options.steps,
            "save_freq": options.save_every,
            **({"default_local_dir": checkpoint_dir} if checkpoint_dir is not None else {}),
        },
    }


def build_config(options: VerlOptions, checkpoint_dir: str | None) -> Any:
    """verl's config (an OmegaConf ``DictConfig``) for this fit, merged and validated (module doc)."""
    import verl
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    folder = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=folder, version_base=None):
        config = compose(config_name="ppo_trainer")
    # verl's config is in struct mode: a key it does not define is an error (naming the key), not a new key.
    config = OmegaConf.merge(config, plugin_settings(options, checkpoint_dir))
    _open_free_form_mappings(config)
    try:
        config = OmegaConf.merge(config, options.verl)
    except Exception as error:  # omegaconf's errors name the full key
        raise ValueError(f"verl option verl does not fit verl's config: {error}") from error
    fit_attention(config, options.verl, has_flash_attn=importlib.util.find_spec("flash_attn") is not None)
    try:
        OmegaConf.resolve(config)
        validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
        check_worker_batch_sizes(config)
        omega_conf_to_dataclass(config.actor_rollout_ref.rollout)
        omega_conf_to_dataclass(config.actor_rollout_ref.rollout.checkpoint_engine)
    except Exception as error:  # verl's checks raise assertions, ValueErrors and Hydra's wrappers of them
        raise ValueError(f"verl rejects the config the verl options give: {error}") from error
    return config


def fit_attention(config: Any, overrides: dict[str, Any], *, has_flash_attn: bool) -> None:
    """Without flash-attn, PyTorch's attention (``sdpa``) on padded rows, where the ``verl`` option
    chose neither: verl's actor loads the model with FlashAttention 2 and packs rows for its
    variable-length kernels ("remove padding"), which need the package (transformers refuses
    FlashAttention 2 without it). flash-attn has no wheels; it builds from source against the installed torch."""
    if has_flash_attn:
        return
    chosen = overrides.get("actor_rollout_ref", {}).get("model", {})
    model = config.actor_rollout_ref.model
    if "attn_implementation" not in chosen.get("override_config", {}):
        model.override_config.attn_implementation = "sdpa"
    if "use_remove_padding" not in chosen:
        model.use_remove_padding = False
    logger.info(
        "flash-attn is not installed: the verl actor uses attention %s, remove padding %s",
        model.override_config.attn_implementation,
        model.use_remove_padding,
    )


def _open_free_form_mappings(node: Any) -> None:
    """Let the user's keys into verl's empty mappings (``override_config: {}``, ``engine_kwargs: {}``):
    they hold keyword arguments of verl's choosing, which verl's own command line adds with
    ``+key=value``. Every other mapping stays closed, so a misspelt verl key is still an error."""
    from omegaconf import DictConfig, OmegaConf

    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            if len(child) == 0:
                OmegaConf.set_struct(child, False)
            else:
                _open_free_form_mappings(child)


def check_worker_batch_sizes(config: Any) -> None:
    """What verl's actor worker asserts when it loads the model (``ActorRolloutRefWorker.init_model`` in
    ``verl/workers/engine_workers.py``) but ``validate_config`` does not check: on a GPU a mismatch is a
    bare AssertionError from a Ray worker after the cluster has started; here it is a ValueError naming
    the keys, before anything starts. (The deprecated ``ppo_micro_batch_size`` and
    ``log_prob_micro_batch_size`` pass verl's validation but not its worker.)"""
    actor, rollout = config.actor_rollout_ref.actor, config.actor_rollout_ref.rollout
    if actor.use_dynamic_bsz != rollout.log_prob_use_dynamic_bsz:
        raise ValueError(
            f"actor_rollout_ref.actor.use_dynamic_bsz ({actor.use_dynamic_bsz}) and"
            f" actor_rollout_ref.rollout.log_prob_use_dynamic_bsz ({rollout.log_prob_use_dynamic_bsz}) must be equal"
        )
    sizes = (
        {"actor": "ppo_max_token_len_per_gpu", "rollout": "log_prob_max_token_len_per_gpu"}
        if actor.use_dynamic_bsz
        else {"actor": "ppo_micro_batch_size_per_gpu", "rollout": "log_prob_micro_batch_size_per_gpu"}
    )
    for section, key in sizes.items():
        if config.actor_rollout_ref[section][key] is None:
            raise ValueError(
                f"actor_rollout_ref.{section}.{key} must be set (use_dynamic_bsz is {bool(actor.use_dynamic_bsz)})"
            )
