"""The OpenAI request bodies the app accepts, and the pieces of its answers, in vLLM's shape.

Unknown request fields are accepted and ignored (clients send many), except those that would
change the answer in a way this server cannot honour (``n > 1``, ``echo``, ``best_of``), which
are refused with a 400. Token ids come only when asked for (``"return_token_ids": true``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agl.trainer.serving.engine import SamplingParams


class WireError(ValueError):
    """A request this server refuses: a 4xx with a one-line message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
"""OpenAI's message roles; it refuses others with a 400, and so does this server."""


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    return_token_ids: bool = False
    return_tokens_as_token_ids: bool = False

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n not in (None, 1):
            raise ValueError("this server answers one choice per request (n=1)")
        return n

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        stop = tuple(s for s in ([self.stop] if isinstance(self.stop, str) else self.stop or ()) if s)
        return SamplingParams(
            max_tokens=self.max_tokens or default_max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            stop=stop,
        )

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatRequest(_Sampling):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @field_validator("messages")
    @classmethod
    def _text_messages(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Known roles and text content only: anything else would be dropped or mangled on its
        way into the chat template, and the model would answer a prompt the client never sent."""
        for number, message in enumerate(messages):
            role = message.get("role")
            if not isinstance(role, str):
                raise ValueError(f"message {number} has no role")
            if role not in ROLES:
                raise ValueError(f"message {number} has role {role[:40]!r}; roles are {', '.join(sorted(ROLES))}")
            content = message.get("content")
            if isinstance(content, list):
                for index, part in enumerate(content):
                    kind = str(part.get("type"))[:40] if isinstance(part, dict) else type(part).__name__
                    if kind != "text":
                        raise ValueError(f"message {number}: content part {index} is {kind}; only text is served")
                    if not isinstance(part.get("text"), str):
                        raise ValueError(f"message {number}: content part {index} has no text")
            elif content is not None and not isinstance(content, str):
                raise ValueError(f"message {number}: content must be a string or a list of text parts")
        return messages

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        params = super().sampling(default_max_tokens)
        if self.max_completion_tokens is not None and self.max_tokens is None:
            params = SamplingParams(
                self.max_completion_tokens, params.temperature, params.top_p, params.seed, params.stop
            )
        return params


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = None

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool) -> bool:
        if echo:
            raise ValueError("echo is not supported")
        return echo

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, best_of: int | None) -> int | None:
        if best_of not in (None, 1):
            raise ValueError("best_of is not supported")
        return best_of

    def prompt_ids(self, encode: Callable[[str], list[int]]) -> list[int]:
        """One prompt: a string, a list of token ids, or a batch of exactly one of those."""
        prompt: Any = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise WireError("this server completes one prompt per request")
            prompt = prompt[0]
        if isinstance(prompt, str):
            return encode(prompt)
        return [int(token) for token in prompt]


def parse(model: type[BaseModel], body: bytes) -> Any:
    """A request model from a JSON body; a `WireError` naming the first problem otherwise."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "body"
        message = first.get("msg", "invalid")
        raise WireError(
            "the body is not JSON" if first.get("type") == "json_invalid" else f"{where}: {message}"
        ) from None


def usage(prompt_ids: Sequence[int], token_ids: Sequence[int]) -> dict[str, int]:
    return {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": len(token_ids),
        "total_tokens": len(prompt_ids) + len(token_ids),
    }


def error_body(message: str, status: int) -> dict[str, Any]:
    """OpenAI's error shape, which the openai client turns into its typed exceptions."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}
