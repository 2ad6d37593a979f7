"""`triplet`: a triplet made of token ids alone, for the batch and conversion tests."""

from __future__ import annotations

from agl.core.types.triplets import Triplet


def triplet(
    prompt: list[int] | None,
    response: list[int] | None,
    mask: list[int] | None = None,
    logprobs: list[float] | None = None,
) -> Triplet:
    return Triplet(
        prompt=None,
        response=None,
        prompt_token_ids=prompt,
        response_token_ids=response,
        response_mask=mask,
        response_logprobs=logprobs,
    )
