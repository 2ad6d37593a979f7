"""One weighted backward pass over a `Batch`, in micro-batches so a large batch fits in memory.

The batch's weights are global (they sum to 1 over the whole batch), so the micro-batch losses
simply add up to the batch loss and their gradients accumulate to exactly the big-batch gradient;
the caller clips and steps the optimizer once afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from agl.trainer.learning.batches import Batch
from agl.trainer.learning.losses import token_logprobs

LossOf = Callable[[Batch, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]
"""``(micro_batch, its logprobs) -> (loss to backpropagate, metrics to sum over micro-batches)``."""


def backward(
    model: torch.nn.Module, batch: Batch, loss_of: LossOf, *, micro_batch_size: int = 8, temperature: float = 1.0
) -> dict[str, float]:
    """Forward and backward every micro-batch; returns each metric summed over them (``loss`` included)."""
    totals: dict[str, float] = {}
    device = _device(model)
    for start in range(0, batch.rows, micro_batch_size):
        micro = batch.select(slice(start, start + micro_batch_size)).to(device)
        logprobs = token_logprobs(model, micro.input_ids, micro.attention_mask, temperature=temperature)
        loss, metrics = loss_of(micro, logprobs)
        loss.backward()
        for name, value in {"loss": float(loss.detach()), **metrics}.items():
            totals[name] = totals.get(name, 0.0) + value
    return totals


@torch.no_grad()
def logprobs_of(
    model: torch.nn.Module, batch: Batch, *, micro_batch_size: int = 8, temperature: float = 1.0
) -> torch.Tensor:
    """Logprobs of the whole batch under ``model`` without gradients ([B, L]): a frozen reference's,
    or old logprobs for rows whose triplets carried none."""
    out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
    device = _device(model)
    for start in range(0, batch.rows, micro_batch_size):
        micro = batch.select(slice(start, start + micro_batch_size)).to(device)
        width = micro.input_ids.shape[1]
        logprobs = token_logprobs(model, micro.input_ids, micro.attention_mask, temperature=temperature)
        out[start : start + micro.rows, :width] = logprobs.cpu()
    return out


def _device(model: torch.nn.Module) -> torch.device:
    """Where the model's weights are (batches are built on the CPU and moved there per micro-batch)."""
    return next(model.parameters()).device
