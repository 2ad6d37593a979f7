"""Finished rollouts (their stored spans, as triplets) → a batch in verl's PPO layout, free of verl types.

The result is a plain dict of torch tensors (batch dimension first) and numpy object arrays, which
is exactly what ``verl.DataProto.from_single_dict(data, meta_info=...)`` takes; nothing here imports
verl, so the conversion is tested without it (verl's base requires an older transformers than agl's).

Semantics — the same as the `grpo` plugin's (`agl.trainer.learning`), so results compare:

- One row per triplet. Triplets come from `spans_to_triplets(spans, merge=True)`: consecutive LLM
  calls of a rollout share one row only where the later prompt's token ids start with everything
  so far; the tokens a later prompt inserted (tool output, the next user turn) are in the response
  with ``response_mask`` 0. Token ids are the engine's own, never re-tokenised.
- verl's layout: ``prompts`` [B, P] left-padded, ``responses`` [B, R] right-padded (P and R fixed
  by the options), ``input_ids`` and ``attention_mask`` [B, P + R] their concatenation,
  ``position_ids`` [B, P + R] counting real tokens from 0 (0 on left padding), ``response_mask``
  [B, R] 1 on generated tokens only. A triplet whose prompt is longer than P, or whose response is
  longer than R, is dropped and counted (never truncated: a cut sequence would train on a prefix
  whose reward the cut part earned). A triplet without token ids is skipped and counted.
- Failed or timed-out rollouts follow ``failed_rollouts`` (`learning.rollouts.FailurePolicy`):
  "zero" scores them 0 and keeps what they generated, "drop_group" removes their task's group.
- ``uid`` (numpy, per row) names the task group: every rollout of one task shares it, as verl
  groups by ``uid``. ``rollout_id`` (numpy, per row) names the rollout.
- ``token_level_scores`` [B, R]: the rollout's reward on the last generated token of its last kept
  row (0 elsewhere), so a rollout's scores sum to its reward however many rows it has.
- ``advantages`` [B, R]: `learning.advantages.group_advantages` per *rollout* (against its task's
  group, population std, a tied group 0), broadcast over the rollout's generated tokens; computed
  before over-long rows are dropped, as `grpo` does. verl's own estimators score *rows*, which
  differs as soon as a rollout has more than one row; this batch carries the per-rollout values.
- ``loss_weights`` [B, R]: `learning.batches` weights on the response positions: with
  normalize="rollout" each rollout with a trained token weighs ``1 / R_kept`` in total, spread
  evenly over its generated tokens in all its rows; "token": every generated token ``1 / T``. They
  sum to 1 over the batch. ``sum(loss_weights * per_token_loss)`` is then `grpo`'s loss; in verl,
  ``advantages * loss_weights`` as the advantages with ``loss_agg_mode="token-sum"`` gives the same
  clipped policy loss (a positive weight scales each token's clipped term exactly).
- ``rollout_log_probs`` [B, R]: the engine's logprob of each generated token (0 on inserted tokens
  and padding); ``has_rollout_log_probs`` [B] says which rows carried aligned logprobs. When every
  row does, ``old_log_probs`` is set to the same values (`grpo` takes the engine's logprobs as the
  PPO anchor); otherwise it is absent and the old logprobs are recomputed by the actor.
- A triplet without prompt ids or without response ids is skipped (``stats.skipped``): verl's
  unpadded layout places each response after at least one prompt token (its ``no_padding_2_padding``
  asserts it), and an empty response has nothing to train.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from agl.core.adapters import spans_to_triplets
from agl.core.types.spans import Span
from agl.core.types.triplets import Triplet
from agl.trainer.learning.advantages import group_advantages
from agl.trainer.learning.batches import Normalize, _weights
from agl.trainer.learning.rollouts import FailurePolicy, apply_failure_policy
from agl.trainer.verl.policy import FAILURE_POLICIES

if TYPE_CHECKING:
    from agl.trainer.learning.rollouts import Scored


@dataclass
class FinishedRollout:
    """What the conversion needs of one finished rollout: its task's group, reward, status and triplets."""

    rollout_id: str
    group: Hashable
    """Rollouts of the same task share it; becomes the ``uid`` verl groups by."""
    reward: float | None
    triplets: list[Triplet] = field(default_factory=list)
    succeeded: bool = True
    """False when the rollout failed (a timed-out attempt fails its rollout once no retry is left)."""
    resources_id: str | None = None
    """The resources it ran with, as the store recorded them (for reports; weights versions for the
    staleness check are tracked by the caller, which knows what it served when it queued a batch)."""

    @property
    def failed(self) -> bool:
        """As `learning.rollouts.Scored.failed`: not succeeded, or no reward reported."""
        return not self.succeeded or self.reward is None

    @classmethod
    def from_spans(
        cls,
        rollout_id: str,
        group: Hashable,
        spans: Sequence[Span],
        reward: float | None,
        *,
        succeeded: bool = True,
        resources_id: str | None = None,
    ) -> FinishedRollout:
        """The rollout's latest attempt's spans → triplets, calls merged where their ids continue exactly."""
        return cls(rollout_id, group, reward, spans_to_triplets(spans, merge=True), succeeded, resources_id)

    @classmethod
    def from_scored(cls, scored: Scored) -> FinishedRollout:
        """A rollout as `learning.rollouts.run_groups` reads it back from the store."""
        rollout = scored.rollout
        return cls(
            rollout.rollout_id,
            scored.group,
            scored.reward,
            list(scored.triplets),
            rollout.status == "succeeded",
            rollout.resources_id,
        )


@dataclass(frozen=True)
class ConversionStats:
    rollouts: int
    """Rollouts given."""
    failed: int
    """Of them, failed or timed out (before the failure policy)."""
    kept_rollouts: int
    """Rollouts left after the failure policy (their advantages are computed among these)."""
    rows: int
    dropped_prompt: int
    """Triplets dropped because the prompt exceeds ``max_prompt_length``."""
    dropped_response: int
    """Triplets dropped because the response exceeds ``max_response_length``."""
    skipped: int
    """Triplets without token ids."""
    trained_tokens: int


@dataclass
class VerlBatch:
    tensors: dict[str, torch.Tensor]
    non_tensors: dict[str, np.ndarray]
    meta_info: dict[str, Any]
    stats: ConversionStats

    @property
    def data(self) -> dict[str, torch.Tensor | np.ndarray]:
        """Tensors and numpy arrays in one dict, for ``DataProto.from_single_dict(data, meta_info=meta_info)``."""
        return {**self.tensors, **self.non_tensors}

    @property
    def rows(self) -> int:
        return int(self.tensors["input_ids"].shape[0])


@dataclass
class _Row:
    rollout: int
    prompt: list[int]
    response: list[int]
    mask: list[int]
    logprobs: list[float] | None


def to_verl_batch(
    rollouts: Sequence[FinishedRollout],
    *,
    max_prompt_length: int,
    max_response_length: int,
    pad_token_id: int = 0,
    failed_rollouts: FailurePolicy = "zero",
    normalize: Normalize = "rollout",
    scale_advantages: bool = True,
) -> VerlBatch:
    """The rows of ``rollouts`` in verl's layout, with per-rollout advantages and loss weights (module doc)."""
    for name, value in (("max_prompt_length", max_prompt_length), ("max_response_length", max_response_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"verl option {name} must be a positive integer, not {value!r}")
    if failed_rollouts not in FAILURE_POLICIES:
        raise ValueError(f"verl option failed_rollouts must be 'zero' or 'drop_group', not {failed_rollouts!r}")
    if normalize not in ("rollout", "token"):
        raise ValueError(f"verl option normalize must be 'rollout' or 'token', not {normalize!r}")

    # Copies: the failure policy rewrites rewards, and the caller's records stay as stored.
    copies = [dataclasses.replace(r, triplets=list(r.triplets)) for r in rollouts]
    kept_any, failed = apply_failure_policy(cast(list[Any], copies), failed_rollouts)
    kept = cast(list[FinishedRollout], kept_any)
    advantages = group_advantages(
        [float(r.reward or 0.0) for r in kept], [r.group for r in kept], scale=scale_advantages
    )

    rows: list[_Row] = []
    dropped_prompt = dropped_response = skipped = 0
    for index, rollout in enumerate(kept):
        for triplet in rollout.triplets:
            prompt, response = triplet.prompt_token_ids, triplet.response_token_ids
            if not prompt or not response:
                skipped += 1
                continue
            if len(prompt) > max_prompt_length:
                dropped_prompt += 1
                continue
            if len(response) > max_response_length:
                dropped_response += 1
                continue
            mask = [int(bool(m)) for m in triplet.response_mask] if triplet.response_mask is not None else None
            mask = mask if mask is not None else [1] * len(response)
            if len(mask) != len(response):
                raise ValueError(f"response_mask has {len(mask)} entries for {len(response)} response ids")
            logprobs = triplet.response_logprobs
            if logprobs is not None and len(logprobs) != len(response):
                logprobs = None  # misaligned logprobs are worse than none
            rows.append(_Row(index, list(prompt), list(response), mask, None if logprobs is None else list(logprobs)))

    tensors = _tensors(rows, max_prompt_length, max_response_length, pad_token_id)
    response_mask = tensors["response_mask"]

    advantage = torch.tensor([advantages[row.rollout] for row in rows], dtype=torch.float32)
    tensors["advantages"] = advantage.unsqueeze(-1) * response_mask.float()
    rollout_ids = [kept[row.rollout].rollout_id for row in rows]
    tensors["loss_weights"] = _weights(response_mask.float(), rollout_ids, normalize)
    tensors["token_level_scores"] = _scores(rows, kept, response_mask)
    if rows and bool(tensors["has_rollout_log_probs"].all()):
        tensors["old_log_probs"] = tensors["rollout_log_probs"].clone()

    non_tensors = {
        "uid": np.array([str(kept[row.rollout].group) for row in rows], dtype=object),
        "rollout_id": np.array(rollout_ids, dtype=object),
    }
    stats = ConversionStats(
        rollouts=len(rollouts),
        failed=failed,
        kept_rollouts=len(kept),
        rows=len(rows),
        dropped_prompt=dropped_prompt,
        dropped_response=dropped_response,
        skipped=skipped,
        trained_tokens=int(response_mask.sum().item()),
    )
    meta_info: dict[str, Any] = {
        "agl_normalize": normalize,
        "agl_failed_rollouts": failed_rollouts,
        "agl_stats": dataclasses.asdict(stats),
    }
    return VerlBatch(tensors, non_tensors, meta_info, stats)


def _tensors(rows: list[_Row], prompt_length: int, response_length: int, pad: int) -> dict[str, torch.Tensor]:
    count = len(rows)
    prompts = torch.full((count, prompt_length), pad, dtype=torch.long)
    responses = torch.full((count, response_length), pad, dtype=torch.long)
    prompt_attention = torch.zeros((count, prompt_length), dtype=torch.long)
    response_attention = torch.zeros((count, response_length), dtype=torch.long)
    response_mask = torch.zeros((count, response_length), dtype=torch.long)
    logprobs = torch.zeros((count, response_length), dtype=torch.float32)
    has_logprobs = torch.zeros(count, dtype=torch.bool)
    for index, row in enumerate(rows):
        start = prompt_length - len(row.prompt)
        if row.prompt:
            prompts[index, start:] = torch.tensor(row.prompt, dtype=torch.long)
            prompt_attention[index, start:] = 1
        length = len(row.response)
        if length:
            responses[index, :length] = torch.tensor(row.response, dtype=torch.long)
            response_attention[index, :length] = 1
            response_mask[index, :length] = torch.tensor(row.mask, dtype=torch.long)
        if row.logprobs is not None:
            if length:
                logprobs[index, :length] = torch.tensor(row.logprobs, dtype=torch.float32)
            has_logprobs[index] = True
    logprobs *= response_mask  # inserted tokens carry a placeholder 0.0; keep only generated ones
    attention_mask = torch.cat([prompt_attention, response_attention], dim=1)
    return {
        "prompts": prompts,
        "responses": responses,
        "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": attention_mask,
        "position_ids": torch.clamp(torch.cumsum(attention_mask, dim=1) - 1, min=0),
        "response_mask": response_mask,
        "rollout_log_probs": logprobs,
        "has_rollout_log_probs": has_logprobs,
    }


def _scores(rows: list[_Row], kept: list[FinishedRollout], response_mask: torch.Tensor) -> torch.Tensor:
    """Each rollout's reward on the last generated token of its last row that has one."""
    scores = torch.zeros(response_mask.shape, dtype=torch.float32)
    placed: set[int] = set()
    for index in range(len(rows) - 1, -1, -1):
        rollout = rows[index].rollout
        if rollout in placed:
            continue
        generated = response_mask[index].nonzero()
        if len(generated):
            scores[index, int(generated[-1])] = float(kept[rollout].reward or 0.0)
            placed.add(rollout)
    return scores


PADDING = "agl-padding"
"""The ``uid`` and ``rollout_id`` of rows added by `pad_to_multiple`."""

_UNTRAINED = ("response_mask", "advantages", "loss_weights", "token_level_scores")


def pad_to_multiple(batch: VerlBatch, multiple: int) -> VerlBatch:
    """The batch with rows added until their count divides by ``multiple`` (verl splits a batch evenly
    over its data-parallel ranks). Added rows repeat real rows (so every row is a well-formed
    sequence) with ``response_mask``, ``advantages``, ``loss_weights`` and ``token_level_scores`` all
    0: they add nothing to the loss or the weights' total. Their ``uid`` and ``rollout_id`` are
    `PADDING`; ``meta_info["agl_padding_rows"]`` counts them."""
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive integer, not {multiple!r}")
    rows = batch.rows
    missing = (-rows) % multiple
    if missing == 0 or rows == 0:
        return VerlBatch(
            dict(batch.tensors), dict(batch.non_tensors), {**batch.meta_info, "agl_padding_rows": 0}, batch.stats
        )
    source = torch.arange(missing) % rows
    tensors = {}
    for name, tensor in batch.tensors.items():
        extra = tensor[source].clone()
        if name in _UNTRAINED:
            extra.zero_()
        tensors[name] = torch.cat([tensor, extra], dim=0)
    non_tensors = {
        name: np.concatenate([array, np.array([PADDING] * missing, dtype=object)])
        if name in ("uid", "rollout_id")
        else np.concatenate([array, array[source.numpy()]])
        for name, array in batch.non_tensors.items()
    }
    return VerlBatch(tensors, non_tensors, {**batch.meta_info, "agl_padding_rows": missing}, batch.stats)
