"""What the proxy asks the engine for, and what it gives back to the agent.

The engine is always asked for token ids (vLLM's ``return_token_ids``) and the sampled tokens'
logprobs, since training needs both. The agent gets the reply in the shape it asked for: fields it
did not request are taken out again (``prompt_token_ids``/``token_ids`` removed, ``logprobs`` set
to null). An unchanged shape matters to agents that, say, check that logprobs are absent, and it
keeps streamed chunks small; when the agent asked for everything, the engine's bytes pass through
untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Endpoint = Literal["chat", "completions"]
PATHS: dict[Endpoint, str] = {"chat": "/chat/completions", "completions": "/completions"}


@dataclass(frozen=True)
class Asked:
    """What the agent's own request asked for."""

    token_ids: bool
    logprobs: bool

    @property
    def everything(self) -> bool:
        return self.token_ids and self.logprobs


def asked(endpoint: Endpoint, body: dict[str, Any]) -> Asked:
    logprobs = body.get("logprobs")
    # chat: a boolean; completions: how many alternatives per token (0 still returns the sampled one's)
    wants_logprobs = bool(logprobs) if endpoint == "chat" else logprobs is not None and logprobs is not False
    return Asked(token_ids=body.get("return_token_ids") is True, logprobs=wants_logprobs)


def upstream_body(endpoint: Endpoint, body: dict[str, Any], agent: Asked) -> dict[str, Any]:
    """The agent's request plus what training needs, its own choices kept."""
    sent = dict(body)
    sent["return_token_ids"] = True
    if not agent.logprobs:
        sent["logprobs"] = True if endpoint == "chat" else 0
    return sent


def reshape(endpoint: Endpoint, data: dict[str, Any], agent: Asked) -> dict[str, Any]:
    """A whole reply or one streamed chunk without what the agent did not ask for (in place)."""
    if not agent.token_ids:
        data.pop("prompt_token_ids", None)
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if not agent.token_ids:
            choice.pop("token_ids", None)
            choice.pop("prompt_token_ids", None)
        if not agent.logprobs and "logprobs" in choice:
            choice["logprobs"] = None
    return data
