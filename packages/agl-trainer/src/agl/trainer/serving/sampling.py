"""Choosing the next token from a model's logits, honest to `SamplingParams`.

The log-probability returned is that of the chosen token under the distribution it was actually
drawn from (temperature applied, top-p mass renormalised), so a trainer's importance ratios start
from what happened. Greedy decoding (temperature 0) draws from no distribution; it reports the
model's own log-probability (temperature 1), as vLLM does; so does a temperature below 1e-5.
"""

from __future__ import annotations

import torch

from agl.trainer.serving.engine import SamplingParams

GREEDY_BELOW = 1e-5
"""Temperatures below this decode greedily (as vLLM does): dividing by them overflows the logits."""


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> tuple[int, float]:
    """One token id and its logprob from one row of logits (shape ``[vocab]``)."""
    logits = logits.float()
    if params.temperature < GREEDY_BELOW:
        token = int(torch.argmax(logits))
        return token, float(torch.log_softmax(logits, dim=-1)[token])
    logprobs = torch.log_softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        logprobs = _top_p(logprobs, params.top_p)
    token = int(torch.multinomial(logprobs.exp(), 1, generator=generator))
    return token, float(logprobs[token])


def _top_p(logprobs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most likely tokens whose mass reaches ``top_p`` (at least one), renormalised."""
    sorted_logprobs, order = torch.sort(logprobs, descending=True)
    mass_before = torch.cumsum(sorted_logprobs.exp(), dim=-1) - sorted_logprobs.exp()
    drop_sorted = mass_before >= top_p
    drop_sorted[0] = False
    kept = logprobs.masked_fill(torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted), float("-inf"))
    return torch.log_softmax(kept, dim=-1)
