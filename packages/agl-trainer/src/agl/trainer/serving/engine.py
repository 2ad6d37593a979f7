"""What every inference engine offers the OpenAI app, the proxy and the trainers: exact token ids in and out.

An engine works on token ids, not text, so that what was sampled is what a trainer learns from:
`Generation.token_ids` are the ids exactly as sampled (EOS included when produced) and
`Generation.logprobs` their log-probabilities under the distribution actually sampled from
(temperature and top-p applied). Text is derived from ids, never the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


class PromptError(ValueError):
    """A request an engine cannot take (empty or too long a prompt, ids outside the vocabulary,
    messages the chat template refuses): the client's mistake, answered with a 400."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion. ``temperature == 0`` means greedy; a ``seed`` makes it reproducible."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Generation:
    """One completion of one prompt."""

    prompt_token_ids: list[int]
    token_ids: list[int]
    """Generated ids, exactly as sampled (including EOS if produced)."""
    logprobs: list[float]
    """One per generated id, under the sampling distribution actually used (temperature applied)."""
    finish_reason: str
    """``"stop"`` (EOS or a stop string) or ``"length"`` (``max_tokens`` reached)."""
    text: str
    """``decode(token_ids)``, special tokens skipped (and cut before a stop string)."""


@runtime_checkable
class Engine(Protocol):
    """An inference engine serving one model. It may also offer ``token_bytes(token_id) -> bytes``, a
    token's own bytes, for logprobs' ``bytes`` (without it: the UTF-8 of ``decode([token_id])``)."""

    model_name: str

    def chat_prompt_token_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """The model's chat template applied to ``messages`` (and ``tools``), generation prompt included."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text (no special tokens added)."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of ``token_ids``, special tokens skipped."""
        ...

    async def generate(self, prompt_token_ids: list[int], params: SamplingParams) -> Generation:
        """Sample one completion of ``prompt_token_ids``."""
        ...

    async def load_weights(self, folder: str | Path) -> None:
        """Replace the served weights with a saved checkpoint (full weights or an adapter), no restart."""
        ...

    async def close(self) -> None:
        """Release the engine's threads and memory."""
        ...
