"""What trains (top layers, LoRA, everything), merged checkpoints, and the failed-rollout policy."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("transformers")

import torch
from transformers import AutoModelForCausalLM

from agl.trainer.learning.model import decoder_layers, has_lora, prepare_trainable, save_checkpoint
from agl.trainer.learning.rollouts import Scored, apply_failure_policy, mean_reward
from agl.trainer.testing import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def test_top_layers_trains_the_last_layers_and_the_final_norm_only(tiny: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny)
    trained = prepare_trainable(model, top_layers=1)
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert names and all(name.startswith(("model.layers.1.", "model.norm.")) for name in names)
    assert len(trained) == len(names) and not model.get_input_embeddings().weight.requires_grad
    with pytest.raises(ValueError, match="top_layers"):
        prepare_trainable(model, top_layers=len(decoder_layers(model)) + 1)


def test_lora_trains_adapters_in_place_and_saves_a_merged_plain_model(tiny: Path, tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    trained = prepare_trainable(model, lora_rank=4)
    assert has_lora(model) and trained and all(p.requires_grad for p in trained)
    assert all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():  # LoRA B starts at zero: give the adapters something to merge
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    ids = torch.tensor([[5, 9, 17, 33]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits

    saved = save_checkpoint(model, None, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(saved).eval()
    assert not has_lora(plain) and has_lora(model)  # the trained module keeps its adapters
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, adapted, atol=1e-4)


def scored(group: int, reward: float | None, status: str = "succeeded") -> Scored:
    return Scored(rollout=SimpleNamespace(status=status), group=group, reward=reward)  # type: ignore[arg-type]


def test_failed_rollouts_score_zero_or_drop_their_group() -> None:
    batch = [scored(0, 1.0), scored(0, None), scored(1, 0.5), scored(1, 0.7, "failed"), scored(2, 0.2)]
    kept, failed = apply_failure_policy([scored(0, 1.0), scored(0, None), scored(2, 0.2)], "zero")
    assert failed == 1 and [s.reward for s in kept] == [1.0, 0.0, 0.2]
    kept, failed = apply_failure_policy(batch, "drop_group")
    assert failed == 2 and [(s.group, s.reward) for s in kept] == [(2, 0.2)]
    assert mean_reward([scored(0, 1.0), scored(0, None)]) == 0.5
    with pytest.raises(ValueError):
        apply_failure_policy(batch, "retry")  # type: ignore[arg-type]
