"""``grpo``'s periodic checkpoints (``save_every``): a fit that fails late keeps its last saved step.

Before the option, the model was saved once, after the last step: a fit that crashed, was killed or
ran out of time at step 190 of 200 left no model at all.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from digits_task import TRAIN
from openai import OpenAI

from agl.core.agent import rollout
from agl.core.store.base import LightningStore
from agl.core.types import LLM, Rollout
from agl.trainer import Trainer, hookimpl
from agl.trainer.algorithms.grpo import CHECKPOINT_MARKER, GRPO
from agl.trainer.testing import build_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@rollout
def checksum_agent(task: dict[str, Any], llm: LLM) -> float:
    """Scores a checksum of the answer: different answers score differently, so no group ties and
    every step updates the weights."""
    client = OpenAI(base_url=llm.endpoint, api_key=llm.api_key or "unused", max_retries=0)
    reply = client.chat.completions.create(
        model=llm.model, messages=[{"role": "user", "content": task["prompt"]}], **llm.sampling_parameters
    )
    return zlib.crc32((reply.choices[0].message.content or "").encode()) / 2**32


class CrashesInTheSecondStep:
    """Keeps each step's metrics, and fails the fit in the second step's rollouts, before its update."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, dict[str, float]]] = []

    @hookimpl
    def agl_step_end(self, step: int, metrics: dict[str, float]) -> None:
        self.seen.append((step, metrics))

    @hookimpl
    def agl_rollout_end(self, rollout: Rollout) -> None:
        if self.seen:
            raise RuntimeError("the machine went away")


async def test_a_fit_that_fails_after_a_save_leaves_that_step_loadable(
    store: LightningStore, tiny_model: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    crash = CrashesInTheSecondStep()
    folder = tmp_path / "checkpoint"
    options = {
        "model": str(tiny_model),
        "n": 2,
        "tasks_per_step": 1,
        "steps": 3,
        "lr": 1e-2,
        "max_tokens": 4,
        "save_every": 1,
        "checkpoint_dir": str(folder),
        "timeout": 60.0,
    }
    trainer = Trainer("grpo", store=store, n_runners=2, plugins=[crash], algorithm_options=options)
    with pytest.raises(RuntimeError, match="the machine went away"):
        await trainer.fit_async(checksum_agent, TRAIN[:1])

    [(step, metrics)] = crash.seen
    assert step == 1 and "loss" in metrics and metrics["checkpoint_step"] == 1
    assert json.loads((folder / CHECKPOINT_MARKER).read_text()) == {"step": 1}
    assert sorted(entry.name for entry in folder.iterdir() if entry.name.startswith(".")) == []
    # The folder is a plain model folder holding the weights after step 1's update, not the initial ones.
    saved = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    initial = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    assert any(not torch.equal(saved[name], initial[name]) for name in initial)
    assert AutoTokenizer.from_pretrained(folder).chat_template


async def test_save_every_without_a_checkpoint_folder_is_refused(store: LightningStore) -> None:
    options = {"model": "unused", "n": 2, "steps": 1, "save_every": 1}
    trainer = Trainer("grpo", store=store, n_runners=1, algorithm_options=options)
    with pytest.raises(ValueError, match="save_every needs a checkpoint folder"):
        await trainer.fit_async(checksum_agent, TRAIN[:1])


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2", None])
def test_a_bad_save_every_is_refused_when_the_trainer_is_built(bad: Any) -> None:
    refusal = f"grpo option save_every must be a non-negative integer, not {bad!r}"
    with pytest.raises(ValueError, match=re.escape(refusal)):
        GRPO(model="m", save_every=bad)
