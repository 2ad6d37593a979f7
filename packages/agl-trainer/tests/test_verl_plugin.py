"""The ``verl`` algorithm plugin on CPU: registered and listed without verl, its options checked with errors
that name the option, a fit without verl stopped by one clear error, and (in the interpreter
``$AGL_VERL_PYTHON`` names, with verl and agl installed: ``python3 dev.py test`` builds ``.venvs/verl``)
the config it builds validated by verl itself and its batch carried through verl's own preprocessing
and advantage estimator, and a real fit's start refused by verl's resource pool for want of GPUs; the
plugin's loop (when weights are pushed, what staleness each step reports)
against a recording stand-in for its verl side. No verl worker, vLLM replica or optimizer step runs
here: those need GPUs (docs/verl.md)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from step_log import StepLog

from agl.core.agent import rollout
from agl.core.store.base import LightningStore
from agl.trainer import Trainer
from agl.trainer.plugins import algorithms, plugin_manager
from agl.trainer.verl.algorithm import Verl
from agl.trainer.verl.cluster import actor_metrics
from agl.trainer.verl.config import NO_DUAL_CLIP, plugin_settings
from agl.trainer.verl.options import LOCKED, parse_options
from agl.trainer.verl.runtime import VerlMissing

SOURCES = [str(Path(__file__).resolve().parents[2] / name / "src") for name in ("agl-core", "agl-trainer")]


def test_the_plugin_is_registered_through_its_entry_point_and_listed() -> None:
    registered = algorithms(plugin_manager())
    assert registered["verl"] == (Verl, "agl-trainer")


def test_listing_the_plugin_imports_neither_verl_nor_torch() -> None:
    code = "import sys, agl.trainer.verl.plugin; print(sorted({'verl', 'torch'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


@rollout
def rewarded_agent(task: dict[str, Any]) -> float:
    return 1.0


async def test_a_fit_without_verl_stops_at_its_start_naming_the_install_command(store: LightningStore) -> None:
    if importlib.util.find_spec("verl") is not None:
        pytest.skip("verl is installed here")
    trainer = Trainer("verl", store=store, algorithm_options={"model": "some/model"})
    with pytest.raises(VerlMissing, match=r"pip install agl-trainer\[verl\]"):
        await trainer.fit_async(rewarded_agent, [{"prompt": "x"}])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n": 1}, "option n must be at least 2"),
        ({"steps": 0}, "option steps must be a positive integer"),
        ({"tasks_per_step": "8"}, "option tasks_per_step must be a positive integer"),
        ({"lr": -1.0}, "option lr must be a positive number"),
        ({"clip_high": -0.1}, "option clip_high must be a non-negative number"),
        ({"gpu_memory_utilization": 1.5}, "option gpu_memory_utilization must be at most 1"),
        ({"normalize": "sequence"}, "option normalize must be 'rollout' or 'token'"),
        ({"advantages": "gae"}, "gae needs a critic"),
        ({"advantages": "best"}, "option advantages must be one of rollout, grpo"),
        ({"scale_advantages": "yes"}, "option scale_advantages must be true or false"),
        ({"save_every": -1}, "option save_every must be a non-negative integer"),
        ({"mode": "async"}, "option mode must be one of sync, one_step_off"),
        ({"mode": "one_step_off", "max_staleness": 2}, "option max_staleness must be 1 with mode 'one_step_off'"),
        ({"failed_rollouts": "retry"}, "option failed_rollouts must be 'zero' or 'drop_group'"),
        ({"rollout_timeout": 0}, "option rollout_timeout must be a positive number"),
        ({"proxy_host": ""}, "option proxy_host must be a non-empty string"),
        ({"tensor_parallel": 2}, r"option tensor_parallel \(2\) must divide the 1 GPUs .*\(nnodes \* gpus_per_node\)"),
        (
            {"mode": "one_step_off", "gpus_per_node": 4, "rollout_gpus_per_node": 6, "tensor_parallel": 4},
            r"divide the 6 GPUs the vLLM replicas get \(rollout_nnodes \* rollout_gpus_per_node\)",
        ),
        ({"verl": [1]}, "option verl must be a mapping"),
        ({"verl": {"actor_rollout_ref": {"actor": {"loss_agg_mode": "token-mean"}}}}, "loss_agg_mode, which the"),
        ({"verl": {"algorithm": {"adv_estimator": "gae"}}}, "algorithm.adv_estimator, which the plugin sets"),
        # Keys the plugin reads from its options, not from verl's config: an override would do nothing.
        ({"verl": {"actor_rollout_ref": {"actor": {"ppo_epochs": 3}}}}, "ppo_epochs, .*option updates_per_step"),
        ({"verl": {"actor_rollout_ref": {"rollout": {"temperature": 0.7}}}}, "temperature, .*option temperature"),
        ({"verl": {"data": {"max_response_length": 64}}}, "data.max_response_length, .*option max_response"),
        ({"verl": {"trainer": {"save_freq": 5}}}, "trainer.save_freq, .*option save_every"),
    ],
)
def test_bad_options_are_errors_naming_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Verl(model="some/model", **options)


def test_tensor_parallel_replicas_that_fill_their_gpus_are_accepted() -> None:
    assert Verl(model="m", gpus_per_node=4, tensor_parallel=2).options.tensor_parallel == 2
    assert Verl(model="m", mode="one_step_off", rollout_nnodes=2, tensor_parallel=2).options.tensor_parallel == 2


def test_the_actor_s_metrics_carry_one_actor_prefix_as_verl_s_trainer_names_them() -> None:
    reduced = {"actor/ppo_kl": 0.01, "actor/pg_loss": np.float32(0.5), "grad_norm": 2, "lr": 1e-6, "flag": True}
    expected = {"actor/ppo_kl": 0.01, "actor/pg_loss": 0.5, "actor/grad_norm": 2.0, "actor/lr": 1e-6}
    assert actor_metrics(reduced) == expected


def test_an_unknown_option_is_named() -> None:
    with pytest.raises(TypeError, match=r"unknown verl option.*: lr_rate"):
        Verl(model="some/model", lr_rate=1e-6)
    with pytest.raises(ValueError, match="option model must be"):
        Verl(model="")


def test_the_plugin_sets_every_key_it_refuses_to_let_an_override_change() -> None:
    settings = plugin_settings(parse_options(model="m"), None)
    for path in LOCKED:
        node: Any = settings
        for key in path:
            assert key in node, f"{'.'.join(path)} is locked but not set by the plugin"
            node = node[key]


def test_settings_give_grpo_s_loss_and_follow_the_mode() -> None:
    sync = plugin_settings(parse_options(model="m", clip=0.1, clip_high=0.3, updates_per_step=2), "/ckpt")
    actor = sync["actor_rollout_ref"]["actor"]
    assert (actor["loss_agg_mode"], actor["use_kl_loss"], actor["entropy_coeff"]) == ("token-sum", False, 0)
    assert (actor["clip_ratio_low"], actor["clip_ratio_high"], actor["clip_ratio_c"]) == (0.1, 0.3, NO_DUAL_CLIP)
    assert actor["ppo_epochs"] == 2 and "hf_model" in actor["checkpoint"]["save_contents"]
    assert sync["actor_rollout_ref"]["hybrid_engine"] is True
    assert sync["actor_rollout_ref"]["rollout"]["checkpoint_engine"]["backend"] == "naive"
    assert sync["trainer"]["default_local_dir"] == "/ckpt"

    off = plugin_settings(parse_options(model="m", mode="one_step_off", rollout_gpus_per_node=4), None)
    rollout = off["actor_rollout_ref"]["rollout"]
    assert off["actor_rollout_ref"]["hybrid_engine"] is False and rollout["free_cache_engine"] is False
    assert (rollout["checkpoint_engine"]["backend"], rollout["n_gpus_per_node"]) == ("nccl", 4)
    assert "default_local_dir" not in off["trainer"]


# --- against verl itself, in an environment of its own -----------------------------------------------

VERL_PLUGIN_CHECK = """
import numpy as np
import torch
from agl.core.types.triplets import Triplet
from agl.trainer.verl.cluster import estimator_advantages, rows_multiple_for, to_proto
from agl.trainer.verl.config import build_config, fit_attention
from agl.trainer.verl.conversion import FinishedRollout, pad_to_multiple, to_verl_batch
from omegaconf import OmegaConf
from agl.trainer.verl.options import parse_options
from verl.utils import tensordict_utils as tu
from verl.workers.engine.utils import prepare_micro_batches
from verl.workers.utils.padding import left_right_2_no_padding

sync = build_config(parse_options(model="Qwen/Qwen2.5-0.5B-Instruct", n=4, tasks_per_step=2, lr=2e-6), "/tmp/ck")
actor = sync.actor_rollout_ref.actor
assert (actor.loss_agg_mode, actor.clip_ratio_c, actor.optim.lr) == ("token-sum", 1e9, 2e-6), actor
assert sync.actor_rollout_ref.rollout.name == "vllm" and sync.actor_rollout_ref.rollout.prompt_length == 1024
assert sync.trainer.default_local_dir == "/tmp/ck"

offload = {"actor_rollout_ref": {"actor": {"fsdp_config": {"param_offload": True}}}}
off = build_config(parse_options(model="m", mode="one_step_off", verl=offload), None)
assert off.actor_rollout_ref.hybrid_engine is False and off.actor_rollout_ref.actor.fsdp_config.param_offload is True
assert off.actor_rollout_ref.rollout.checkpoint_engine.backend == "nccl"

try:
    build_config(parse_options(model="m", verl={"actor_rollout_ref": {"actor": {"ppo_epochz": 2}}}), None)
except ValueError as error:
    assert "actor_rollout_ref.actor.ppo_epochz" in str(error), error
else:
    raise AssertionError("a misspelt verl key was accepted")
try:
    build_config(parse_options(model="m", verl={"actor_rollout_ref": {"actor": {"ppo_micro_batch_size": 2}}}), None)
except ValueError as error:  # verl's own check: micro batch size set twice
    assert "ppo_micro_batch_size" in str(error), error
else:
    raise AssertionError("verl's validation did not run")

# verl's empty keyword mappings take keys of the user's choosing (verl's command line adds them with "+").
rope = {"actor_rollout_ref": {"model": {"override_config": {"rope_theta": 5e5}}}}
free = build_config(parse_options(model="m", verl=rope), None)
assert free.actor_rollout_ref.model.override_config.rope_theta == 5e5
# Without flash-attn (none here), PyTorch's attention on padded rows, unless the verl option chose.
assert free.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
assert free.actor_rollout_ref.model.use_remove_padding is False
chose = {"override_config": {"attn_implementation": "eager"}, "use_remove_padding": True}
chosen = build_config(parse_options(model="m", verl={"actor_rollout_ref": {"model": chose}}), None)
assert chosen.actor_rollout_ref.model.override_config.attn_implementation == "eager"
assert chosen.actor_rollout_ref.model.use_remove_padding is True
with_flash = OmegaConf.create({"actor_rollout_ref": {"model": {"override_config": {}, "use_remove_padding": True}}})
fit_attention(with_flash, {}, has_flash_attn=True)
assert with_flash.actor_rollout_ref.model == {"override_config": {}, "use_remove_padding": True}


def one_row(rollout_id, group, reward, prompt, response):
    triplet = Triplet(
        prompt=None, response=None, prompt_token_ids=prompt, response_token_ids=response,
        response_logprobs=[-0.5] * len(response),
    )
    return FinishedRollout(rollout_id, group, reward, [triplet])


rollouts = [
    one_row("a", 0, 1.0, [1, 2], [3, 4]),
    one_row("b", 0, 0.0, [1, 2], [5]),
    one_row("c", 1, 0.5, [7], [8, 9, 10]),
]
batch = pad_to_multiple(to_verl_batch(rollouts, max_prompt_length=4, max_response_length=4), 4)
proto = to_proto(batch, temperature=1.0)
assert len(proto) == 4 and proto.meta_info["temperature"] == 1.0
data = left_right_2_no_padding(proto.to_tensordict())
assert data["input_ids"].is_nested and data["input_ids"].offsets().diff().tolist() == [4, 3, 4, 4], data["input_ids"]
tu.assign_non_tensor(data, global_batch_size=4, mini_batch_size=4, epochs=1, compute_loss=True)
mini_batches = list(tu.make_iterator(data, mini_batch_size=4, epochs=2, seed=0, dataloader_kwargs={"shuffle": False}))
assert len(mini_batches) == 2 and all(m["input_ids"].shape[0] == 4 for m in mini_batches)  # one per epoch, whole

advantages = estimator_advantages(proto, sync.algorithm)  # verl's grpo estimator over the rows
weighted = advantages * batch.tensors["loss_weights"]
assert torch.all(weighted[3] == 0), weighted  # the padding row weighs nothing
# verl's grpo: sample std (two rewards 1 and 0 give +-0.7071), and a group of one keeps its raw score (0.5),
# where agl's per-rollout advantages give +-1 and 0 (docs/verl.md).
expected = torch.tensor([0.7071, -0.7071, 0.5, 0.0])
assert torch.allclose(advantages[:, 0], expected, atol=1e-4), advantages

# verl cuts each data-parallel rank's share into equal micro-batches, asserting they come out even: a
# batch is padded to the ranks times both micro-batch sizes (update, log-probabilities), not the ranks alone.
log_prob_micro = {"actor_rollout_ref": {"rollout": {"log_prob_micro_batch_size_per_gpu": 3}}}
uneven = build_config(parse_options(model="m", micro_batch_size=2, verl=log_prob_micro), None)
assert rows_multiple_for(uneven, 2) == 12, rows_multiple_for(uneven, 2)
dynamic = {"actor": {"use_dynamic_bsz": True}, "rollout": {"log_prob_use_dynamic_bsz": True}}
assert rows_multiple_for(build_config(parse_options(model="m", verl={"actor_rollout_ref": dynamic}), None), 2) == 2


def micro_batches_per_rank(batch, ranks, micro):
    data = left_right_2_no_padding(to_proto(batch, temperature=1.0).to_tensordict())
    counts = []
    for share in tu.chunk_tensordict(data, ranks):
        tu.assign_non_tensor(share, use_dynamic_bsz=False, micro_batch_size_per_gpu=micro)
        counts.append(len(prepare_micro_batches(share)[0]))
    return counts


unpadded = to_verl_batch(rollouts, max_prompt_length=4, max_response_length=4)
padded = pad_to_multiple(unpadded, rows_multiple_for(uneven, 2))
assert len(padded.tensors["input_ids"]) == 12
assert micro_batches_per_rank(padded, 2, 2) == [3, 3] and micro_batches_per_rank(padded, 2, 3) == [2, 2]
try:  # padded to the ranks alone: 2 rows a rank, micro-batches of 3
    micro_batches_per_rank(pad_to_multiple(unpadded, 2), 2, 3)
except AssertionError as error:
    assert "micro_batch_size_per_gpu" in str(error), error
else:
    raise AssertionError("verl took a rank's share that its micro-batches do not divide")
print("verl plugin ok")
"""


def _run_in_verl(script: str, expected: str) -> None:
    """Run ``script`` where ``$AGL_VERL_PYTHON`` names an interpreter with verl, agl-core and agl-trainer
    installed (``python3 dev.py test`` builds ``.venvs/verl``; docs/verl.md); skipped without it."""
    python = os.environ.get("AGL_VERL_PYTHON")
    if not python:
        pytest.skip("AGL_VERL_PYTHON is not set (python3 dev.py test builds .venvs/verl and sets it)")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(SOURCES)}
    probe = subprocess.run([python, "-c", "import pluggy, pydantic"], capture_output=True, env=environment)
    if probe.returncode != 0:
        pytest.fail(
            "the verl interpreter lacks agl's dependencies: pip install -e packages/agl-core -e packages/agl-trainer"
        )
    done = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=600, env=environment)
    assert done.returncode == 0, done.stderr[-4000:]
    assert expected in done.stdout


def test_verl_validates_the_config_and_takes_the_plugin_s_batch() -> None:
    _run_in_verl(VERL_PLUGIN_CHECK, "verl plugin ok")


VERL_WORKER_CHECKS = """
import importlib.util

import ray
import torch
from agl.core.types.triplets import Triplet
from agl.trainer.verl.cluster import VerlCluster, check_weight_push_backend, estimator_advantages, to_proto
from agl.trainer.verl.config import build_config, fit_attention
from agl.trainer.verl.conversion import FinishedRollout, pad_to_multiple, to_verl_batch
from omegaconf import OmegaConf
from agl.trainer.verl.options import parse_options
from verl.trainer.ppo import core_algos
from verl.utils.config import omega_conf_to_dataclass

# Keys verl's validate_config accepts but its actor worker asserts on at start (engine_workers.py).
for override, named in (
    ({"rollout": {"log_prob_use_dynamic_bsz": True}}, "log_prob_use_dynamic_bsz"),
    ({"rollout": {"log_prob_micro_batch_size": 8, "log_prob_micro_batch_size_per_gpu": None}}, "log_prob_micro"),
    ({"actor": {"ppo_micro_batch_size": 8, "ppo_micro_batch_size_per_gpu": None}}, "ppo_micro_batch_size_per_gpu"),
):
    try:
        build_config(parse_options(model="m", verl={"actor_rollout_ref": override}), None)
    except ValueError as error:
        assert named in str(error), error
    else:
        raise AssertionError(f"a config verl's worker refuses was accepted: {override}")


def one_row(rollout_id, group, reward, prompt, response):
    triplet = Triplet(
        prompt=None, response=None, prompt_token_ids=prompt, response_token_ids=response,
        response_logprobs=[-0.5] * len(response),
    )
    return FinishedRollout(rollout_id, group, reward, [triplet])


rollouts = [one_row("a", 0, 1.0, [1, 2], [3, 4]), one_row("b", 0, 0.0, [1, 2], [5])]
unpadded = to_verl_batch(rollouts, max_prompt_length=4, max_response_length=4)
batch = pad_to_multiple(unpadded, 4)
# gpg scales advantages by the row count over the rewarded rows: padding rows must not count.
gpg = build_config(parse_options(model="m", n=2, tasks_per_step=1, advantages="gpg"), None)
real = estimator_advantages(to_proto(unpadded, temperature=1.0), gpg.algorithm)
padded = estimator_advantages(to_proto(batch, temperature=1.0), gpg.algorithm)
assert torch.equal(padded[:2], real) and not padded[2:].any(), (padded, real)
# opo weighs a group by its response lengths: the padding rows' group (no generated token) is 0 / 0.
config = build_config(parse_options(model="m", n=2, tasks_per_step=1, advantages="opo"), None)
proto = to_proto(batch, temperature=1.0)
advantages = estimator_advantages(proto, config.algorithm)
assert torch.isfinite(advantages).all() and not advantages[2:].any(), advantages
# What the actor's update does with them (verl's loss, as the plugin sets it): the gradient is finite.
new_log_probs = batch.tensors["old_log_probs"].clone().requires_grad_(True)
loss, _ = core_algos.get_policy_loss_fn("vanilla")(
    old_log_prob=batch.tensors["old_log_probs"],
    log_prob=new_log_probs,
    advantages=advantages * batch.tensors["loss_weights"],
    response_mask=batch.tensors["response_mask"].bool(),
    loss_agg_mode="token-sum",
    config=omega_conf_to_dataclass(config.actor_rollout_ref.actor),
)
loss.backward()
assert torch.isfinite(new_log_probs.grad).all(), new_log_probs.grad

# one_step_off pushes weights over NCCL, which verl loads with cupy: found missing before Ray starts.
one_step_off = build_config(parse_options(model="m", mode="one_step_off"), None)
check_weight_push_backend(build_config(parse_options(model="m"), None))  # sync's in-process push
if importlib.util.find_spec("cupy") is None:
    try:
        VerlCluster.start(one_step_off, ray_address=None)
    except ValueError as error:
        assert "cupy" in str(error), error
    else:
        raise AssertionError("a one_step_off fit started without cupy")
    assert not ray.is_initialized(), "Ray started before the missing weight-push backend was found"
else:
    check_weight_push_backend(one_step_off)
print("worker checks ok")
"""


def test_configs_verl_s_worker_refuses_are_refused_and_padding_rows_stay_out_of_verl_s_estimators() -> None:
    """What verl's own checks let through but a GPU run would trip on: batch-size keys its actor worker
    asserts on when it starts (refused here, naming the key); and padding rows seen by verl's
    estimators: ``gpg`` scales by the row count (padding inflated every advantage), ``opo`` gives their
    group NaN, which verl's masked loss keeps out of the loss but not out of the gradient (a NaN
    gradient norm, and verl skips the optimizer step); and a weight-push backend verl cannot load
    (``nccl`` without cupy), found before Ray starts rather than by the workers after the model loads."""
    _run_in_verl(VERL_WORKER_CHECKS, "worker checks ok")


VERL_FIT_WITHOUT_GPUS = """
import asyncio, sys, tempfile
from pathlib import Path

import ray
import torch
from agl.core import open_store
from agl.core.agent import rollout
from agl.trainer import Trainer
from agl.trainer.testing import build_tiny_model

scratch = tempfile.TemporaryDirectory()  # removed at exit (mkdtemp left a model behind each run)
model = build_tiny_model(Path(scratch.name) / "model")
wanted = torch.cuda.device_count() + 1  # more GPUs than this machine has, whatever it has


@rollout
def agent(task):
    raise AssertionError("no rollout may run before the cluster is up")


async def fit():
    store = open_store("memory://", watchdog_interval=None)
    options = {"model": str(model), "n": 2, "tasks_per_step": 1, "steps": 1, "gpus_per_node": wanted}
    try:
        await Trainer("verl", store=store, algorithm_options=options).fit_async(agent, [{"x": 1}])
    finally:
        await store.close()


try:
    asyncio.run(fit())
except ValueError as error:
    refusal = str(error)
    assert f"desired GPUs {wanted}" in refusal, refusal
else:
    sys.exit("a fit asking for more GPUs than there are did not fail")
assert not ray.is_initialized(), "the failed start left its Ray instance running"
print("refused:", refusal)
"""


def test_a_fit_asking_for_more_gpus_than_there_are_stops_at_the_start_and_stops_its_ray() -> None:
    """The real start of a fit, as far as a CPU goes: verl's config from a local model folder, the pad
    token from its tokenizer, Ray started, verl's resource pool refusing the missing GPUs; then the Ray
    instance the fit started is shut down. Not a hang, not a worker's crash."""
    _run_in_verl(VERL_FIT_WITHOUT_GPUS, "refused: Total available GPUs")


# --- the plugin's own loop, against a recording stand-in for its verl side ---------------------------


class RecordingCluster:
    """Stands in for `VerlCluster` (verl's workers and replicas) to check the plugin's order of work:
    pushes, sleeps and batches. Not verl: nothing is trained; the agent makes no model call."""

    rows_multiple = 4

    def __init__(self, in_flight: list[int]) -> None:
        self.in_flight = in_flight
        self.events: list[tuple[str, int]] = []

    def push_weights(self, version: int) -> None:
        self.events.append(("push", version))
        assert self.in_flight[0] == 0, "weights pushed while rollouts were running"

    def release(self) -> None:
        self.events.append(("release", self.in_flight[0]))


class Scheduled(Verl):
    """`Verl` with its verl side replaced by `RecordingCluster` (the fit's steps 2-5 as written)."""

    def __init__(self, cluster: RecordingCluster, **options: Any) -> None:
        super().__init__(**options)
        self.cluster = cluster

    async def run(self, context: Any) -> dict[str, Any]:
        self.cluster.push_weights(0)
        return await self._train(context, self.cluster, context.resources_id)  # type: ignore[arg-type]


@pytest.mark.parametrize(("mode", "staleness"), [("sync", [0, 0, 0]), ("one_step_off", [0, 1, 1])])
async def test_the_loop_pushes_weights_only_between_batches_and_reports_staleness(
    store: LightningStore, mode: str, staleness: list[int]
) -> None:
    in_flight = [0]

    @rollout
    async def slow_agent(task: dict[str, Any]) -> float:
        in_flight[0] += 1
        try:
            await asyncio.sleep(0.05)
        finally:
            in_flight[0] -= 1
        return float(task["reward"])

    cluster = RecordingCluster(in_flight)
    algorithm = Scheduled(cluster, model="m", mode=mode, n=2, tasks_per_step=2, steps=3)
    steps = StepLog()
    tasks = [{"reward": 1.0}, {"reward": 0.0}]
    result = await Trainer(algorithm, store=store, n_runners=4, plugins=[steps]).fit_async(slow_agent, tasks)

    assert [int(metrics["staleness"]) for _, metrics in steps.seen] == staleness
    assert [metrics["rollouts"] for _, metrics in steps.seen] == [4.0, 4.0, 4.0]
    assert all(metrics["update_skipped"] == 1.0 for _, metrics in steps.seen)  # no model call, no rows
    assert [event for event in cluster.events if event[0] == "push"] == [("push", v) for v in (0, 1, 2)]
    if mode == "sync":  # nothing samples while the actor trains
        assert all(running == 0 for kind, running in cluster.events if kind == "release")
    assert result["train_reward_first"] == 0.5 and result["steps"] == 3
