"""The pure learning parts on hand-checked tensors: masks, per-rollout weights, advantages, losses."""

from __future__ import annotations

import math

import pytest
import torch
from token_triplets import triplet

from agl.core.types.triplets import Triplet
from agl.trainer.learning.advantages import group_advantages
from agl.trainer.learning.batches import Item, build_batch
from agl.trainer.learning.losses import policy_loss, sft_loss, token_logprobs
from agl.trainer.learning.step import backward


def test_rows_masks_and_old_logprobs_align_with_the_ids() -> None:
    merged = triplet([5, 6], [7, 8, 9, 10], mask=[1, 0, 0, 1], logprobs=[-0.5, 0.0, 0.0, -1.5])
    batch = build_batch([Item("r1", merged, 2.0), Item("r2", triplet([5], [11]), -1.0)], max_length=16, pad_token_id=3)

    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 10], [5, 11, 3, 3, 3, 3]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]
    # Prompt masked; the two inserted tokens (tool output between merged calls) masked; padding masked.
    assert batch.loss_mask.tolist() == [[0, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0]]
    assert batch.old_logprobs.tolist() == [[0, 0, -0.5, 0, 0, -1.5], [0, 0, 0, 0, 0, 0]]
    assert batch.has_old_logprobs.tolist() == [True, False]
    assert batch.advantages.tolist() == [2.0, -1.0]
    assert (batch.num_rollouts, batch.num_tokens, batch.dropped, batch.skipped) == (2, 3, 0, 0)


def test_a_rollout_with_two_triplets_weighs_what_a_rollout_with_one_does() -> None:
    items = [
        Item("two-calls", triplet([1], [2, 3])),  # 2 trained tokens
        Item("two-calls", triplet([1], [4, 5, 6, 7])),  # 4 trained tokens
        Item("one-call", triplet([1], [8])),  # 1 trained token
    ]
    weights = build_batch(items, max_length=16).weights
    per_rollout = [weights[0].sum() + weights[1].sum(), weights[2].sum()]
    assert [float(w) for w in per_rollout] == pytest.approx([0.5, 0.5])
    # Within a rollout every trained token weighs the same: 1 / (R * T_r) = 1 / (2 * 6).
    assert weights[0].tolist() == pytest.approx([0, 1 / 12, 1 / 12, 0, 0])
    assert weights[1].tolist() == pytest.approx([0] + [1 / 12] * 4)
    assert weights[2].tolist() == pytest.approx([0, 0.5, 0, 0, 0])

    token = build_batch(items, max_length=16, normalize="token").weights
    assert float(token.sum()) == pytest.approx(1.0) and float(token[2].sum()) == pytest.approx(1 / 7)


def test_over_long_triplets_are_dropped_and_counted_and_their_rollout_keeps_its_weight() -> None:
    items = [
        Item("a", triplet([1, 2], [3, 4, 5])),  # 5 tokens: too long for 4
        Item("a", triplet([1], [2, 3])),
        Item("b", triplet([1], [2])),
        Item("c", triplet([1, 2, 3], [4, 5])),  # dropped: rollout c vanishes
        Item("d", Triplet(prompt="text only", response="no ids")),
    ]
    batch = build_batch(items, max_length=4)
    assert (batch.dropped, batch.skipped, batch.rows, batch.num_rollouts) == (2, 1, 2, 2)
    assert batch.rollout_ids == ["a", "b"]
    assert [float(row.sum()) for row in batch.weights] == pytest.approx([0.5, 0.5])


def test_misaligned_logprobs_are_not_used() -> None:
    batch = build_batch([Item("r", triplet([1], [2, 3], logprobs=[-1.0]))], max_length=8)
    assert batch.has_old_logprobs.tolist() == [False] and batch.old_logprobs.abs().sum() == 0


def test_micro_batches_keep_the_global_weights_and_trim_padding() -> None:
    batch = build_batch([Item("a", triplet([1], [2])), Item("b", triplet([1, 2], [3, 4, 5]))], max_length=8)
    first = batch.select(slice(0, 1))
    assert first.input_ids.tolist() == [[1, 2]] and float(first.weights.sum()) == pytest.approx(0.5)


def test_group_advantages() -> None:
    rewards = [1.0, 0.0, 0.5, 0.5, 3.0, 1.0, 2.0]
    groups = ["x", "x", "y", "y", "z", "z", "z"]
    assert group_advantages(rewards, groups) == pytest.approx([1, -1, 0, 0, math.sqrt(1.5), -math.sqrt(1.5), 0])
    assert group_advantages(rewards, groups, scale=False) == pytest.approx([0.5, -0.5, 0, 0, 1, -1, 0])
    assert group_advantages([0.7, 0.7 + 1e-9], ["g", "g"]) == [0.0, 0.0]
    with pytest.raises(ValueError):
        group_advantages([1.0], [])


def test_policy_loss_clips_by_hand() -> None:
    # Three tokens of one row: ratios e^0 = 1, e^0.5 ≈ 1.6487, e^-0.5 ≈ 0.6065.
    logprobs = torch.tensor([[0.0, -1.0, -0.5, -2.5]])
    old = torch.tensor([[0.0, -1.0, -1.0, -2.0]])
    weights = torch.tensor([[0.0, 1 / 3, 1 / 3, 1 / 3]])
    up = policy_loss(logprobs, old, torch.tensor([1.0]), weights, clip=0.2)
    # A = +1: -min(r, clip(r)) = -1, -1.2 (clipped), -0.6065 (min takes r) → mean -0.9355.
    assert up.policy == pytest.approx(-(1 + 1.2 + math.exp(-0.5)) / 3, abs=1e-6)
    assert up.clip_fraction == pytest.approx(1 / 3) and up.kl == 0.0
    down = policy_loss(logprobs, old, torch.tensor([-1.0]), weights, clip=0.2)
    # A = -1: -min(-r, -clip(r)) = max(r, clip(r)) = 1, 1.6487, 0.8 (clipped).
    assert down.policy == pytest.approx((1 + math.exp(0.5) + 0.8) / 3, abs=1e-6)
    assert down.clip_fraction == pytest.approx(1 / 3)
    asymmetric = policy_loss(logprobs, old, torch.tensor([1.0]), weights, clip=0.2, clip_high=0.28)
    assert asymmetric.policy == pytest.approx(-(1 + 1.28 + math.exp(-0.5)) / 3, abs=1e-6)


def test_policy_gradient_is_the_advantage_at_ratio_one_and_zero_where_clipped() -> None:
    logprobs = torch.tensor([[0.0, -1.0, -0.5]], requires_grad=True)
    old = torch.tensor([[0.0, -1.0, -1.0]])
    weights = torch.tensor([[0.0, 0.5, 0.5]])
    policy_loss(logprobs, old, torch.tensor([2.0]), weights, clip=0.2).loss.backward()
    assert logprobs.grad is not None
    assert logprobs.grad[0].tolist() == pytest.approx([0.0, -1.0, 0.0])  # d(-w r A)/dlogp = -w r A; clipped: 0


def test_k3_kl_by_hand() -> None:
    logprobs = torch.tensor([[0.0, -1.0, -2.0]])
    ref = torch.tensor([[0.0, -1.5, -2.0]])
    weights = torch.tensor([[0.0, 0.5, 0.5]])
    result = policy_loss(logprobs, logprobs.clone(), torch.tensor([0.0]), weights, ref_logprobs=ref, kl_coef=0.1)
    expected = 0.5 * (math.exp(-0.5) + 0.5 - 1)
    assert result.kl == pytest.approx(expected, abs=1e-6)
    assert float(result.loss) == pytest.approx(0.1 * expected, abs=1e-6)


def test_kl_ignores_untrained_positions_however_far_the_models_drift_there() -> None:
    # Position 2 is padding: nothing anchors its logprob, and a gap over ~88 nats overflows exp().
    logprobs = torch.tensor([[-5.0, -1.0, -120.0]], requires_grad=True)
    ref = torch.tensor([[-5.0, -1.5, -10.0]])
    weights = torch.tensor([[0.0, 1.0, 0.0]])
    result = policy_loss(logprobs, logprobs.detach(), torch.tensor([0.0]), weights, ref_logprobs=ref, kl_coef=0.1)
    assert result.kl == pytest.approx(math.exp(-0.5) + 0.5 - 1, abs=1e-6)
    result.loss.backward()
    assert logprobs.grad is not None
    assert logprobs.grad[0].tolist() == pytest.approx([0.0, 0.1 * (1 - math.exp(-0.5)), 0.0])


def test_sft_loss_is_the_weighted_cross_entropy_of_trained_tokens() -> None:
    logprobs = torch.tensor([[-9.0, -1.0, -3.0]])
    assert float(sft_loss(logprobs, torch.tensor([[0.0, 0.5, 0.5]]))) == pytest.approx(2.0)


class Bigram(torch.nn.Module):
    """A model whose logits depend on the current token only: easy to check by hand."""

    def __init__(self, vocab: int = 5) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool = False):
        return type("Out", (), {"logits": self.table[input_ids]})()


def test_token_logprobs_are_aligned_with_the_ids_and_use_the_temperature() -> None:
    model = Bigram()
    ids = torch.tensor([[1, 3, 2]])
    got = token_logprobs(model, ids, torch.ones_like(ids), temperature=2.0)
    table = model.table.detach() / 2.0
    expected = [0.0, *(float(torch.log_softmax(table[a], -1)[b]) for a, b in ((1, 3), (3, 2)))]
    assert got.detach()[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_micro_batched_backward_equals_one_batch() -> None:
    items = [Item(f"r{i}", triplet([1, 2], [3, i % 4 + 1, 4][: 1 + i % 3]), float(i % 2) - 0.5) for i in range(5)]
    batch = build_batch(items, max_length=8)

    def loss_of(micro, logprobs):
        result = policy_loss(logprobs, logprobs.detach(), micro.advantages, micro.weights)
        return result.loss, {"clip_fraction": result.clip_fraction}

    grads = []
    for size in (1, 2, 5):
        model = Bigram()
        totals = backward(model, batch, loss_of, micro_batch_size=size)
        assert totals["clip_fraction"] == 0.0
        assert model.table.grad is not None
        grads.append(model.table.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and torch.allclose(grads[0], grads[2], atol=1e-6)
