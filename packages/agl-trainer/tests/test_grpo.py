"""The built-in ``grpo`` end to end on a tiny random model: real engine, proxy, store and runners.

The toy task: reward = the share of digits among the non-space characters of the answer. A
random 100k-parameter model writes digits rarely (~3%), a policy gradient finds them fast: with
the test's settings, validation reward rose from 0.024 to 0.62, 0.012 to 0.58 and 0.014 to 0.27
in 12 steps on seeds 0, 1 and 2 (model and trainer seed); the test fixes seed 0.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from digits_task import TRAIN, VAL, digit_share, digits_agent
from openai import OpenAI
from step_log import StepLog

from agl.core.agent import rollout
from agl.core.store.base import LightningStore
from agl.core.types import LLM, PromptTemplate, ProxyLLM
from agl.trainer import Trainer, hookimpl
from agl.trainer.algorithms.grpo import CHECKPOINT_MARKER, GRPO
from agl.trainer.testing import build_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


async def test_grpo_raises_validation_reward_training_on_the_engine_token_ids(
    store: LightningStore, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agl.trainer.learning import batches
    from agl.trainer.serving.transformers_engine import TransformersEngine

    generated: list[tuple[list[int], list[int], list[float]]] = []
    trained: list[batches.Item] = []
    engine_generate, build_batch = TransformersEngine.generate, batches.build_batch

    async def recording_generate(self: TransformersEngine, prompt: list[int], params: Any) -> Any:
        generation = await engine_generate(self, prompt, params)
        generated.append((list(generation.prompt_token_ids), list(generation.token_ids), list(generation.logprobs)))
        return generation

    def recording_build_batch(items: Any, **options: Any) -> Any:
        trained.extend(items)
        return build_batch(items, **options)

    monkeypatch.setattr(TransformersEngine, "generate", recording_generate)
    monkeypatch.setattr(batches, "build_batch", recording_build_batch)

    steps = StepLog()
    options = {
        "model": str(tiny_model),
        "n": 8,
        "tasks_per_step": 2,
        "steps": 12,
        "lr": 1e-2,
        "updates_per_step": 2,
        "max_tokens": 8,
        "val_every": 100,
        "seed": 0,
        "checkpoint_dir": str(tmp_path / "final"),
        "timeout": 60.0,
    }
    trainer = Trainer("grpo", store=store, n_runners=8, plugins=[steps], algorithm_options=options)
    result = await trainer.fit_async(digits_agent, TRAIN, VAL)

    before, after = result["val_reward_before"], result["val_reward_after"]
    assert before < 0.1 and after > before + 0.2, (before, after)
    assert [step for step, _ in steps.seen] == list(range(13))
    last = steps.seen[-1][1]
    assert last["val/reward_mean"] == after and last["rollouts"] == 16 and last["failed"] == 0
    assert last["dropped"] == 0 and last["skipped"] == 0 and last["train/temperature_mismatch"] == 0
    # The engine's logprobs and the trainer's agree before the update (ratio 1, up to batching noise);
    # the second update of each step moves the ratio far enough for the clip to bite.
    updated = [metrics for step, metrics in steps.seen if "loss" in metrics]  # a step where all groups tie skips
    assert len(updated) >= 10
    assert all(abs(metrics["ratio_mean"] - 1.0) < 1e-3 for metrics in updated)
    assert all(metrics["clip_fraction"] > 0 for metrics in updated)

    # Every trained triplet is one engine generation, ids and logprobs exactly as sampled.
    assert len(trained) == 12 * 16
    by_ids = {(tuple(p), tuple(r)): lp for p, r, lp in generated}
    for item in trained:
        key = (tuple(item.triplet.prompt_token_ids or ()), tuple(item.triplet.response_token_ids or ()))
        assert key in by_ids and item.triplet.response_logprobs == pytest.approx(by_ids[key])

    # The rollouts ran on the proxy; the stopped proxy is not left the latest resources; the final
    # checkpoint loads as a plain model.
    [first, *_] = await store.query_rollouts(mode="train")
    served = await store.get_resources_by_id(first.resources_id or "")
    assert served is not None and isinstance(served.resources["llm"], ProxyLLM)
    latest = await store.get_latest_resources()
    assert latest is not None and latest.resources_id != served.resources_id and latest.resources == {}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(result["checkpoint"]) is not None
    assert AutoTokenizer.from_pretrained(result["checkpoint"]).chat_template


@rollout
def two_call_agent(task: dict[str, Any], llm: LLM) -> float:
    """Two calls per rollout, the second continuing the conversation of the first."""
    client = OpenAI(base_url=llm.endpoint, api_key=llm.api_key or "unused", max_retries=0)
    messages: list[Any] = [{"role": "user", "content": task["prompt"]}]
    texts = []
    for follow_up in ("Again.", None):
        reply = client.chat.completions.create(model=llm.model, messages=messages, **llm.sampling_parameters)
        texts.append(reply.choices[0].message.content or "")
        messages += [{"role": "assistant", "content": texts[-1]}, {"role": "user", "content": follow_up}]
    return digit_share(" ".join(texts))


async def test_grpo_with_lora_kl_and_two_calls_per_rollout_weighs_rollouts_equally(
    store: LightningStore, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agl.trainer.learning import batches

    built: list[batches.Batch] = []
    build_batch = batches.build_batch

    def recording_build_batch(items: Any, **options: Any) -> Any:
        built.append(build_batch(items, **options))
        return built[-1]

    monkeypatch.setattr(batches, "build_batch", recording_build_batch)
    steps = StepLog()
    options = {
        "model": str(tiny_model),
        "n": 4,
        "tasks_per_step": 2,
        "steps": 2,
        "lr": 1e-2,
        "updates_per_step": 2,
        "lora_rank": 4,
        "kl_coef": 0.1,
        "max_tokens": 6,
        "checkpoint_dir": str(tmp_path / "final"),
        "timeout": 60.0,
    }
    trainer = Trainer("grpo", store=store, n_runners=8, plugins=[steps], algorithm_options=options)
    result = await trainer.fit_async(two_call_agent, TRAIN)

    assert result["val_reward_before"] is None and [step for step, _ in steps.seen] == [1, 2]
    assert all(metrics["kl"] > 0 for _, metrics in steps.seen)  # the second update moved off the reference
    for batch in built:
        assert batch.num_rollouts == 8 and batch.rows >= 8
        totals: dict[str, float] = {}
        for rollout_id, row in zip(batch.rollout_ids, batch.weights, strict=True):
            totals[rollout_id] = totals.get(rollout_id, 0.0) + float(row.sum())
        assert list(totals.values()) == pytest.approx([1 / 8] * 8)
    for finished in await store.query_rollouts():
        spans = await store.query_spans(finished.rollout_id, "latest")
        calls = [span for span in spans if span.attributes.get("agl.llm.call")]
        assert len(calls) == 2

    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(result["checkpoint"])
    assert not any("lora_" in name for name, _ in saved.named_parameters())


async def test_grpo_through_a_model_server_pushes_the_weights_after_every_step(
    store: LightningStore, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The out-of-process path (as with vLLM), through the registered "transformers" server, which
    runs its own engine: the trainer's copy trains and each step's weights are pushed to it."""
    from agl.trainer.serving.embedded import EmbeddedModelServer

    pushed: list[Path] = []
    server_load = EmbeddedModelServer.load_weights

    def recording_load(self: EmbeddedModelServer, folder: str | Path) -> None:
        server_load(self, folder)
        pushed.append(Path(folder))

    monkeypatch.setattr(EmbeddedModelServer, "load_weights", recording_load)
    steps = StepLog()
    options = {
        "model": str(tiny_model),
        "model_server": "transformers",
        "model_server_options": {"seed": 0},
        "n": 4,
        "tasks_per_step": 2,
        "steps": 3,
        "lr": 1e-2,
        "max_tokens": 8,
        "timeout": 60.0,
    }
    trainer = Trainer("grpo", store=store, n_runners=8, plugins=[steps], algorithm_options=options)
    await trainer.fit_async(digits_agent, TRAIN)

    updated = [step for step, metrics in steps.seen if "loss" in metrics]  # a step where all groups tie skips
    assert [folder.name for folder in pushed] == [f"step-{step}" for step in updated] and len(updated) >= 2
    assert not any(folder.exists() for folder in pushed)  # scratch checkpoints are removed
    # Later steps sampled from the pushed weights: the engine's logprobs equal the trainer's.
    assert all(abs(metrics["ratio_mean"] - 1.0) < 1e-3 for _, metrics in steps.seen if "loss" in metrics)

    with pytest.raises(ValueError, match="no model server named 'nope'"):
        await Trainer("grpo", store=store, algorithm_options={**options, "model_server": "nope"}).fit_async(
            digits_agent, TRAIN
        )


@rollout
def constant_agent(task: dict[str, Any], llm: LLM) -> float:
    client = OpenAI(base_url=llm.endpoint, api_key=llm.api_key or "unused", max_retries=0)
    client.chat.completions.create(
        model=llm.model, messages=[{"role": "user", "content": task["prompt"]}], **llm.sampling_parameters
    )
    return 1.0


async def test_grpo_takes_no_step_when_every_group_ties(
    store: LightningStore, tiny_model: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    steps = StepLog()
    options = {"model": str(tiny_model), "n": 2, "tasks_per_step": 1, "steps": 2, "lr": 1e-2, "max_tokens": 4}
    options["checkpoint_dir"] = str(tmp_path / "final")
    trainer = Trainer("grpo", store=store, n_runners=2, plugins=[steps], algorithm_options=options)
    result = await trainer.fit_async(constant_agent, TRAIN)

    assert [metrics.get("update_skipped") for _, metrics in steps.seen] == [1.0, 1.0]
    # Saved once, at the end (save_every 0), and marked as the last step's weights.
    assert not any("checkpoint_step" in metrics for _, metrics in steps.seen)
    assert json.loads((Path(result["checkpoint"]) / CHECKPOINT_MARKER).read_text()) == {"step": 2}
    before = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    after = AutoModelForCausalLM.from_pretrained(result["checkpoint"]).state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


@rollout
def half_tied_agent(task: dict[str, Any], llm: LLM) -> float:
    """A task of kind "tie" scores 1 whatever the answer (give or take its ``noise`` times a checksum of
    the answer: rounding noise, as a score computed in float32 has), so its groups always tie; any
    other scores a checksum of the answer, so different answers score differently."""
    client = OpenAI(base_url=llm.endpoint, api_key=llm.api_key or "unused", max_retries=0)
    reply = client.chat.completions.create(
        model=llm.model, messages=[{"role": "user", "content": task["prompt"]}], **llm.sampling_parameters
    )
    checksum = zlib.crc32((reply.choices[0].message.content or "").encode()) / 2**32
    return 1.0 - task.get("noise", 0.0) * checksum if task["kind"] == "tie" else checksum


@pytest.mark.parametrize("noise", [0.0, 1e-9], ids=["exact", "within-rounding"])
async def test_grpo_resample_tied_draws_fresh_tasks_in_place_of_groups_that_tied(
    store: LightningStore, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, noise: float
) -> None:
    """A group whose rewards differ by rounding noise only gets all-zero advantages (their std is under
    `group_advantages`' eps), so it ties too: it was neither trained on nor replaced."""
    from agl.trainer.learning import batches
    from agl.trainer.learning.rollouts import task_cycle

    trained: list[list[batches.Item]] = []
    build_batch = batches.build_batch

    def recording_build_batch(items: Any, **options: Any) -> Any:
        trained.append(list(items))
        return build_batch(items, **options)

    monkeypatch.setattr(batches, "build_batch", recording_build_batch)
    tasks = [{"prompt": "Say something.", "kind": "tie", "noise": noise}, {"prompt": "Hello!", "kind": "vary"}]
    rounds, steps_count = 3, 6
    steps = StepLog()
    options = {"model": str(tiny_model), "n": 2, "tasks_per_step": 1, "steps": steps_count, "max_tokens": 4}
    trainer = Trainer(
        "grpo", store=store, n_runners=2, plugins=[steps], algorithm_options={**options, "resample_tied": rounds}
    )
    await trainer.fit_async(half_tied_agent, tasks)

    # The draws the option should make: a tied task is replaced by the next one, up to `rounds` times.
    draws, expected = task_cycle(tasks, 0), []
    for _ in range(steps_count):
        replaced = 0
        while next(draws)["kind"] == "tie" and replaced < rounds:
            replaced += 1
        expected.append(replaced)
    assert sum(expected) > 0  # the seed draws a tied task first in some step
    assert [metrics["resampled"] for _, metrics in steps.seen] == expected
    assert [metrics["rollouts"] for _, metrics in steps.seen] == [2.0 * (1 + r) for r in expected]
    # Every step trained on one group, of the varied task: no tied group was left in a batch.
    assert len(trained) == steps_count
    inputs = {rollout.rollout_id: rollout.input for rollout in await store.query_rollouts()}
    for items in trained:
        rollouts = {item.rollout_id for item in items}
        assert len(rollouts) == 2
        assert {inputs[rollout_id]["kind"] for rollout_id in rollouts} == {"vary"}


class FailsAtTheFirstStep:
    @hookimpl
    def agl_step_end(self, step: int, metrics: dict[str, float]) -> None:
        raise RuntimeError("a plugin failed")


async def test_grpo_publishes_the_resources_it_was_given_again_when_its_model_stops(
    store: LightningStore, tiny_model: Path
) -> None:
    """The proxy stayed the latest resources after the fit had stopped it: an agent run afterwards
    on the latest resources got a connection error, whether the fit ended or failed."""
    initial = {"prompt": PromptTemplate(template="Say {x}.")}
    options = {"model": str(tiny_model), "n": 2, "tasks_per_step": 1, "steps": 1, "max_tokens": 4}
    trainer = Trainer("grpo", store=store, n_runners=2, algorithm_options=options)
    await trainer.fit_async(constant_agent, TRAIN, None, initial)
    [served] = [found for found in await store.query_resources() if "llm" in found.resources]
    latest = await store.get_latest_resources()
    assert isinstance(served.resources["llm"], ProxyLLM)  # the record of what the rollouts ran with
    assert latest is not None and latest.resources == initial and latest.resources_id != served.resources_id

    # An agent run afterwards on the latest resources is told what is missing, not refused a connection.
    earlier = {found.rollout_id for found in await store.query_rollouts()}
    assert (await Trainer("baseline", store=store).fit_async(constant_agent, TRAIN[:1]))["train/succeeded"] == 0.0
    [after] = [found for found in await store.query_rollouts() if found.rollout_id not in earlier]
    attempt = await store.get_latest_attempt(after.rollout_id)
    error = attempt.metadata.get("error") if attempt is not None else None
    assert "needs a resource that this rollout's resources do not have (they have: prompt)" in str(error)

    known = {found.resources_id for found in await store.query_resources()}
    failing = Trainer("grpo", store=store, n_runners=2, plugins=[FailsAtTheFirstStep()], algorithm_options=options)
    with pytest.raises(RuntimeError, match="a plugin failed"):
        await failing.fit_async(constant_agent, TRAIN, None, initial)
    latest = await store.get_latest_resources()
    assert latest is not None and latest.resources_id not in known and latest.resources == initial


@pytest.mark.parametrize(
    ("bad", "option"),
    [
        ({"n": 1}, "n"),
        ({"steps": 0}, "steps"),
        ({"lr": 0}, "lr"),
        ({"clip": -0.1}, "clip"),
        ({"top_layers": 2, "lora_rank": 4}, "top_layers"),
        ({"failed_rollouts": "retry"}, "failed_rollouts"),
        ({"resample_tied": -1}, "resample_tied"),
        ({"model": ""}, "model"),
    ],
)
def test_bad_options_are_refused_by_name(bad: dict[str, Any], option: str) -> None:
    with pytest.raises(ValueError, match=option):
        GRPO(**{"model": "m", **bad})


@rollout
def nucleus_agent(task: dict[str, Any], llm: LLM) -> float:
    """Samples with top-p 0.9 and the server's default temperature, not the published ones."""
    client = OpenAI(base_url=llm.endpoint, api_key=llm.api_key or "unused", max_retries=0)
    reply = client.chat.completions.create(
        model=llm.model, messages=[{"role": "user", "content": task["prompt"]}], max_tokens=4, top_p=0.9
    )
    return digit_share(reply.choices[0].message.content or "")


async def test_grpo_counts_rollouts_sampled_unlike_its_logprobs(store: LightningStore, tiny_model: Path) -> None:
    """The trainer's logprobs use the published temperature over the whole vocabulary: a call that
    ran at the default temperature (named none) or within a top-p nucleus skews the ratio; both say so."""
    steps = StepLog()
    options = {"model": str(tiny_model), "n": 2, "tasks_per_step": 1, "steps": 1, "temperature": 0.7, "timeout": 60.0}
    trainer = Trainer("grpo", store=store, n_runners=2, plugins=[steps], algorithm_options=options)
    await trainer.fit_async(nucleus_agent, TRAIN[:1])

    [(_, metrics)] = steps.seen
    assert metrics["train/temperature_mismatch"] == 2 and metrics["train/top_p_mismatch"] == 2
