"""Triplets → padded tensors for a gradient step, with the loss normalised per rollout.

Token ids come from the triplets exactly as the serving engine produced them (through the proxy's
spans); text is never re-tokenised here, since re-tokenised text gives other ids than the model
sampled and the step would then train on tokens it never produced.

Weights — the exact convention. Every row is one triplet: its prompt ids then its response ids.
A position is *trained* when it holds a response token the model generated (``response_mask`` 1;
tokens inserted between merged calls, such as tool output, are 0; prompt tokens are never trained).
With ``normalize="rollout"`` each rollout that keeps at least one trained token gets total weight
``1 / R`` (``R`` = such rollouts in the batch), spread evenly over all its trained tokens across all
its triplets: a token of rollout ``r`` weighs ``1 / (R * T_r)`` where ``T_r`` counts its trained
tokens. So a rollout that made more LLM calls (more triplets) or wrote longer answers does not
weigh more. With ``normalize="token"`` every trained token weighs ``1 / T`` (``T`` over the batch).
Either way the weights of the whole batch sum to 1, so a loss ``sum(weight * per_token_loss)`` is
a mean, and summing it over micro-batches (the weights are global) gives the same gradient as one
big batch.

A triplet longer than ``max_length`` is dropped (counted in ``dropped``) rather than truncated: a
cut sequence would train on a prefix whose reward was earned by the part cut away. Its rollout's
weight then spreads over the rollout's remaining triplets. A triplet without token ids is skipped
(counted in ``skipped``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from agl.core.types.triplets import Triplet

Normalize = Literal["rollout", "token"]


@dataclass(frozen=True)
class Item:
    """One triplet to train on, with the rollout it belongs to and that rollout's advantage."""

    rollout_id: str
    triplet: Triplet
    advantage: float = 0.0


@dataclass
class Batch:
    """Padded rows (right padding); every per-token tensor is aligned with ``input_ids``: position
    ``t`` describes token ``input_ids[t]`` (its old logprob, whether and how much it trains)."""

    input_ids: torch.Tensor
    """[B, L] long."""
    attention_mask: torch.Tensor
    """[B, L] long; 0 on padding."""
    loss_mask: torch.Tensor
    """[B, L] float; 1 on generated response tokens."""
    old_logprobs: torch.Tensor
    """[B, L] float; the engine's logprob of each generated token (0 elsewhere)."""
    has_old_logprobs: torch.Tensor
    """[B] bool; False where the triplet carried no logprobs (the caller recomputes them)."""
    advantages: torch.Tensor
    """[B] float; the row's rollout's advantage."""
    weights: torch.Tensor
    """[B, L] float; the loss weight of each token (see the module docstring); sums to 1 over the batch."""
    rollout_ids: list[str]
    dropped: int = 0
    skipped: int = 0
    ref_logprobs: torch.Tensor | None = None
    """[B, L] float; a frozen reference model's logprobs, when a KL term is wanted (set by the caller)."""

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_rollouts(self) -> int:
        return len(set(self.rollout_ids))

    @property
    def num_tokens(self) -> int:
        """Trained tokens in the batch."""
        return int(self.loss_mask.sum().item())

    def to(self, device: torch.device | str) -> Batch:
        """The same rows with every tensor on ``device`` (the model's)."""
        return Batch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            loss_mask=self.loss_mask.to(device),
            old_logprobs=self.old_logprobs.to(device),
            has_old_logprobs=self.has_old_logprobs.to(device),
            advantages=self.advantages.to(device),
            weights=self.weights.to(device),
            rollout_ids=self.rollout_ids,
            dropped=self.dropped,
            skipped=self.skipped,
            ref_logprobs=None if self.ref_logprobs is None else self.ref_logprobs.to(device),
        )

    def select(self, rows: slice) -> Batch:
        """A micro-batch of consecutive rows, trimmed to its longest row (weights keep their global scale)."""
        width = max(int(self.attention_mask[rows].sum(dim=1).max().item()), 1) if self.rows else 1
        return Batch(
            input_ids=self.input_ids[rows, :width],
            attention_mask=self.attention_mask[rows, :width],
            loss_mask=self.loss_mask[rows, :width],
            old_logprobs=self.old_logprobs[rows, :width],
            has_old_logprobs=self.has_old_logprobs[rows],
            advantages=self.advantages[rows],
            weights=self.weights[rows, :width],
            rollout_ids=self.rollout_ids[rows],
            ref_logprobs=None if self.ref_logprobs is None else self.ref_logprobs[rows, :width],
        )


def build_batch(
    items: Sequence[Item], *, max_length: int, pad_token_id: int = 0, normalize: Normalize = "rollout"
) -> Batch:
    """Rows of prompt + response ids, with masks, old logprobs and per-token weights (see module doc)."""
    if normalize not in ("rollout", "token"):
        raise ValueError(f"normalize must be 'rollout' or 'token', not {normalize!r}")
    rows: list[tuple[Item, list[int], list[int], list[float] | None]] = []
    dropped = skipped = 0
    for item in items:
        triplet = item.triplet
        prompt, response = triplet.prompt_token_ids, triplet.response_token_ids
        if prompt is None or response is None:
            skipped += 1
            continue
        if len(prompt) + len(response) > max_length:
            dropped += 1
            continue
        mask = list(triplet.response_mask) if triplet.response_mask is not None else [1] * len(response)
        if len(mask) != len(response):
            raise ValueError(f"response_mask has {len(mask)} entries for {len(response)} response ids")
        logprobs = triplet.response_logprobs
        if logprobs is not None and len(logprobs) != len(response):
            logprobs = None  # misaligned logprobs are worse than none: the caller recomputes them
        ids = [*prompt, *response]
        # Position 0 has nothing before it to predict it from, so it never trains.
        loss = [0] * len(prompt) + [int(bool(m)) for m in mask]
        if ids:
            loss[0] = 0
        rows.append((item, ids, loss, logprobs))

    width = max((len(ids) for _, ids, _, _ in rows), default=1) or 1
    count = len(rows)
    input_ids = torch.full((count, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((count, width), dtype=torch.long)
    loss_mask = torch.zeros((count, width), dtype=torch.float32)
    old_logprobs = torch.zeros((count, width), dtype=torch.float32)
    has_old = torch.zeros(count, dtype=torch.bool)
    advantages = torch.zeros(count, dtype=torch.float32)
    for index, (item, ids, loss, logprobs) in enumerate(rows):
        length = len(ids)
        input_ids[index, :length] = torch.tensor(ids, dtype=torch.long)
        attention_mask[index, :length] = 1
        loss_mask[index, :length] = torch.tensor(loss, dtype=torch.float32)
        if logprobs is not None:
            start = length - len(logprobs)
            old_logprobs[index, start:length] = torch.tensor(logprobs, dtype=torch.float32)
            has_old[index] = True
        advantages[index] = float(item.advantage)
    old_logprobs *= loss_mask  # inserted tokens carry a placeholder 0.0 logprob; keep only generated ones

    rollout_ids = [item.rollout_id for item, _, _, _ in rows]
    weights = _weights(loss_mask, rollout_ids, normalize)
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        loss_mask=loss_mask,
        old_logprobs=old_logprobs,
        has_old_logprobs=has_old,
        advantages=advantages,
        weights=weights,
        rollout_ids=rollout_ids,
        dropped=dropped,
        skipped=skipped,
    )


def _weights(loss_mask: torch.Tensor, rollout_ids: list[str], normalize: Normalize) -> torch.Tensor:
    weights = torch.zeros_like(loss_mask)
    total = loss_mask.sum()
    if total == 0:
        return weights
    if normalize == "token":
        return loss_mask / total
    per_row = loss_mask.sum(dim=1)
    tokens: dict[str, float] = {}
    for rollout_id, count in zip(rollout_ids, per_row.tolist(), strict=True):
        tokens[rollout_id] = tokens.get(rollout_id, 0.0) + count
    kept = sum(1 for count in tokens.values() if count > 0)
    for index, rollout_id in enumerate(rollout_ids):
        if tokens[rollout_id] > 0:
            weights[index] = loss_mask[index] / (kept * tokens[rollout_id])
    return weights
