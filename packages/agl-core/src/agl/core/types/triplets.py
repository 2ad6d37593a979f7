"""Training data cut from spans: what the model saw, what it said, and what it earned."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Triplet(BaseModel):
    prompt: Any
    response: Any
    reward: float | None = None
    prompt_token_ids: list[int] | None = None
    response_token_ids: list[int] | None = None
    response_logprobs: list[float] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
