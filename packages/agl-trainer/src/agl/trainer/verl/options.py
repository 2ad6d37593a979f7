"""The `verl` plugin's options: checked once, each error naming the option. Plain Python: no torch, no verl.

The plugin's own options cover what agl decides (rollouts per task, lengths, failure and staleness
policy, the loss's per-rollout semantics, where checkpoints go); ``verl`` is a nested mapping merged
last into verl's own configuration (`verl.config`), for everything else verl offers (parallelism,
FSDP offload, vLLM engine settings). Keys the per-rollout loss depends on, and keys the plugin reads
from its own options, are refused there, with the reason, rather than silently changing what is
trained or being silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agl.trainer.learning.options import check_model, non_negative_number, positive_int, positive_number
from agl.trainer.verl.policy import Schedule

ALGORITHM = "verl"

ADVANTAGES = ("rollout", "grpo", "rloo", "reinforce_plus_plus", "opo", "gpg", "grpo_passk")
"""``rollout``: agl's per-rollout group advantages (as `grpo`). The others are verl's estimators
(``algorithm.adv_estimator``) that need no critic; they score rows, so the plugin runs them only on
batches where every rollout is one row. ``gae`` (PPO with a critic) is not offered: it needs a
critic worker group and values per row, which the plugin does not build."""

LOCKED = {
    ("actor_rollout_ref", "actor", "loss_agg_mode"): "the per-rollout loss is a token sum of weighted advantages",
    ("actor_rollout_ref", "actor", "use_kl_loss"): "verl aggregates the KL term per token, not per rollout",
    ("actor_rollout_ref", "actor", "entropy_coeff"): "verl aggregates the entropy term per token, not per rollout",
    ("actor_rollout_ref", "actor", "ppo_mini_batch_size"): "the whole batch is one mini-batch (weights sum to 1)",
    ("actor_rollout_ref", "rollout", "n"): "the plugin queues n rollouts per task itself (option n)",
    ("actor_rollout_ref", "rollout", "name"): "the plugin puts vLLM's OpenAI server behind the LLM proxy",
    ("actor_rollout_ref", "hybrid_engine"): "follows the option mode",
    ("actor_rollout_ref", "rollout", "checkpoint_engine", "backend"): "follows the option mode",
    ("algorithm", "adv_estimator"): "use the option advantages",
    ("algorithm", "use_kl_in_reward"): "rewards come from the agents' rollouts",
    ("critic", "enable"): "no critic is built (option advantages)",
    # Read from the options, not from verl's config, where the plugin uses them: an override would be
    # silently ignored.
    ("actor_rollout_ref", "actor", "ppo_epochs"): "each update is asked for option updates_per_step epochs",
    ("actor_rollout_ref", "rollout", "temperature"): "the LLM proxy and the actor use option temperature",
    ("data", "max_prompt_length"): "the conversion drops rows by option max_prompt_length",
    ("data", "max_response_length"): "the conversion drops rows by option max_response_length",
    ("data", "train_batch_size"): "each step queues option tasks_per_step tasks",
    ("trainer", "total_training_steps"): "the fit runs option steps steps",
    ("trainer", "save_freq"): "checkpoints follow option save_every",
}
"""verl keys the plugin sets itself, and why; a ``verl`` override of one is an error."""


@dataclass(frozen=True)
class VerlOptions:
    """The plugin's options (defaults in brackets; see `agl.trainer.verl.algorithm.Verl`)."""

    model: str
    n: int = 8
    tasks_per_step: int = 8
    steps: int = 20
    lr: float = 1e-6
    clip: float = 0.2
    clip_high: float | None = None
    updates_per_step: int = 1
    max_prompt_length: int = 1024
    max_response_length: int = 1024
    temperature: float = 1.0
    micro_batch_size: int = 4
    normalize: str = "rollout"
    scale_advantages: bool = True
    advantages: str = "rollout"
    schedule: Schedule = field(default_factory=Schedule)
    nnodes: int = 1
    gpus_per_node: int = 1
    rollout_nnodes: int = 1
    rollout_gpus_per_node: int = 1
    tensor_parallel: int = 1
    gpu_memory_utilization: float = 0.5
    save_every: int = 0
    checkpoint_dir: str | None = None
    resource: str = "llm"
    proxy_host: str = "127.0.0.1"
    proxy_token: str | None = None
    ray_address: str | None = None
    timeout: float | None = None
    seed: int = 0
    verl: dict[str, Any] = field(default_factory=dict)

    @property
    def separate_rollout(self) -> bool:
        """Whether the vLLM replicas run on GPUs of their own (one-step-off) or share the actor's."""
        return self.schedule.mode == "one_step_off"


def parse_options(
    *,
    model: Any,
    mode: Any = "sync",
    max_staleness: Any = None,
    failed_rollouts: Any = "zero",
    rollout_timeout: Any = None,
    verl: Any = None,
    **options: Any,
) -> VerlOptions:
    """`VerlOptions` from the keyword options ``agl train --option`` gives; raises ValueError naming
    the bad option, TypeError for an unknown one."""
    known = {f for f in VerlOptions.__dataclass_fields__ if f not in ("model", "schedule", "verl")}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown {ALGORITHM} option(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    schedule = Schedule(
        mode=mode, max_staleness=max_staleness, failed_rollouts=failed_rollouts, rollout_timeout=rollout_timeout
    )
    parsed = VerlOptions(model=check_model(ALGORITHM, model), schedule=schedule, verl=check_overrides(verl), **options)
    _check(parsed)
    return parsed


def _check(options: VerlOptions) -> None:
    for name in (
        "n",
        "tasks_per_step",
        "steps",
        "updates_per_step",
        "max_prompt_length",
        "max_response_length",
        "micro_batch_size",
        "nnodes",
        "gpus_per_node",
        "rollout_nnodes",
        "rollout_gpus_per_node",
        "tensor_parallel",
    ):
        positive_int(ALGORITHM, name, getattr(options, name))
    if options.n < 2:
        raise ValueError(f"{ALGORITHM} option n must be at least 2 (advantages compare rollouts of a task), not 1")
    for name in ("lr", "temperature"):
        positive_number(ALGORITHM, name, getattr(options, name))
    non_negative_number(ALGORITHM, "clip", options.clip)
    if options.clip_high is not None:
        non_negative_number(ALGORITHM, "clip_high", options.clip_high)
    utilization = options.gpu_memory_utilization
    positive_number(ALGORITHM, "gpu_memory_utilization", utilization)
    if utilization > 1:
        raise ValueError(f"{ALGORITHM} option gpu_memory_utilization must be at most 1, not {utilization!r}")
    if isinstance(options.save_every, bool) or not isinstance(options.save_every, int) or options.save_every < 0:
        raise ValueError(f"{ALGORITHM} option save_every must be a non-negative integer, not {options.save_every!r}")
    if options.normalize not in ("rollout", "token"):
        raise ValueError(f"{ALGORITHM} option normalize must be 'rollout' or 'token', not {options.normalize!r}")
    if not isinstance(options.scale_advantages, bool):
        raise ValueError(f"{ALGORITHM} option scale_advantages must be true or false, not {options.scale_advantages!r}")
    if options.advantages not in ADVANTAGES:
        raise ValueError(
            f"{ALGORITHM} option advantages must be one of {', '.join(ADVANTAGES)}, not {options.advantages!r}"
            + (" (gae needs a critic, which this plugin does not build)" if options.advantages == "gae" else "")
        )
    for name in ("checkpoint_dir", "proxy_token", "ray_address"):
        value = getattr(options, name)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{ALGORITHM} option {name} must be a non-empty string, not {value!r}")
    for name in ("resource", "proxy_host"):
        value = getattr(options, name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{ALGORITHM} option {name} must be a non-empty string, not {value!r}")
    replica_gpus = (
        options.rollout_nnodes * options.rollout_gpus_per_node
        if options.separate_rollout
        else options.nnodes * options.gpus_per_node
    )
    if replica_gpus % options.tensor_parallel:
        where = "rollout_nnodes * rollout_gpus_per_node" if options.separate_rollout else "nnodes * gpus_per_node"
        raise ValueError(
            f"{ALGORITHM} option tensor_parallel ({options.tensor_parallel}) must divide the {replica_gpus} GPUs"
            f" the vLLM replicas get ({where}): each replica takes tensor_parallel of them"
        )
    if options.timeout is not None:
        positive_number(ALGORITHM, "timeout", options.timeout)
    if isinstance(options.seed, bool) or not isinstance(options.seed, int):
        raise ValueError(f"{ALGORITHM} option seed must be an integer, not {options.seed!r}")


def check_overrides(overrides: Any) -> dict[str, Any]:
    """The ``verl`` option: a nested mapping of verl config keys, none of them one the plugin sets."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"{ALGORITHM} option verl must be a mapping of verl config keys, not {overrides!r}")
    for path in _leaf_paths(overrides):
        for locked, reason in LOCKED.items():
            if path[: len(locked)] == locked:
                raise ValueError(
                    f"{ALGORITHM} option verl sets {'.'.join(path)}, which the plugin sets itself ({reason})"
                )
    return _plain(overrides)


def _leaf_paths(mapping: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise ValueError(f"{ALGORITHM} option verl has a non-string key {key!r} under {'.'.join(prefix) or 'top'}")
        path = (*prefix, key)
        paths.extend(_leaf_paths(value, path) if isinstance(value, Mapping) and value else [path])
    return paths


def _plain(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _plain(value) if isinstance(value, Mapping) else value for key, value in mapping.items()}
