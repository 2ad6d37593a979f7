"""The losses of `grpo` and `sft`, token-level and weighted by `Batch.weights`.

Every function takes per-token tensors aligned with ``input_ids`` ([B, L]; position ``t`` is about
token ``t``) and the batch's weights, which already carry the masking and the per-rollout
normalisation; so each loss is a plain ``sum(weights * per_token)`` and micro-batch losses add up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def token_logprobs(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """``log p(input_ids[t] | input_ids[:t])`` at every position ``t`` ≥ 1 (0 at ``t = 0``), [B, L].

    The logits are divided by ``temperature`` first: the engine reports the logprobs of the
    distribution it sampled from (temperature applied), and the PPO ratio must compare like with like.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, 1:].unsqueeze(-1)
    picked = logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return torch.nn.functional.pad(picked, (1, 0))


@dataclass
class PolicyLoss:
    """The loss to backpropagate and its parts, each a weighted mean over trained tokens."""

    loss: torch.Tensor
    policy: float
    kl: float
    clip_fraction: float
    ratio_mean: float


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    *,
    clip: float = 0.2,
    clip_high: float | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> PolicyLoss:
    """PPO's clipped surrogate on the engine's logprobs, plus ``kl_coef`` times KL to a reference.

    ``ratio = exp(logprobs - old_logprobs)``; per token ``-min(ratio * A, clip(ratio, 1 - clip,
    1 + clip_high) * A)`` with ``A`` the row's advantage ([B], broadcast). The KL is the k3
    estimator ``exp(ref - new) - (ref - new) - 1`` (unbiased, always ≥ 0), on trained tokens only.
    ``clip_fraction`` is the weighted share of tokens whose clipped term was the one taken.
    """
    high = clip if clip_high is None else clip_high
    advantage = advantages.unsqueeze(-1).to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + high) * advantage
    per_token = -torch.minimum(unclipped, clipped)
    policy = (weights * per_token).sum()
    loss = policy
    kl_value = 0.0
    if ref_logprobs is not None:
        # Only trained positions: elsewhere (prompt, padding) nothing bounds the gap between the two
        # models, its exp can overflow, and a zero weight times inf is NaN (in the loss and the gradient).
        delta = torch.where(weights > 0, ref_logprobs - logprobs, torch.zeros_like(logprobs))
        kl = (weights * (torch.exp(delta) - delta - 1.0)).sum()
        kl_value = float(kl.detach())
        if kl_coef:
            loss = loss + kl_coef * kl
    taken_clipped = (clipped < unclipped).to(weights.dtype)
    return PolicyLoss(
        loss=loss,
        policy=float(policy.detach()),
        kl=kl_value,
        clip_fraction=float((weights * taken_clipped).sum()),
        ratio_mean=float((weights * ratio.detach()).sum()),
    )


def sft_loss(logprobs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the trained tokens: ``-sum(weights * logprobs)`` (prompt and padding weigh 0)."""
    return -(weights * logprobs).sum()
