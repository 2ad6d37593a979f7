"""The OpenAI request bodies the app accepts, and the pieces of its answers, in vLLM's shape.

Sampling options are honoured (``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``) or,
when they would change the answer in a way this server cannot (a penalty, ``logit_bias``,
``top_k``, ``n > 1``, ``response_format``, top logprobs, ...), refused with a 400 naming the option;
their neutral values (``presence_penalty=0``, ``n=1``, ...), which clients send by default, are
accepted, and so is null for any option (OpenAI's flags ``stream`` and ``logprobs`` included).
``stream_options`` without ``stream: true`` is a 400, as from OpenAI and vLLM. An error about one
field names it in the body's ``param`` (``BadRequestError.param`` in the openai client).
``max_completion_tokens`` wins over the deprecated ``max_tokens``, as in vLLM. Other unknown fields
(``user``, ``metadata``, ...) are accepted and ignored. A request
naming a model other than the served one is a 404, as from vLLM. Token ids come only when asked
for (``"return_token_ids": true``). Earlier turns' tool calls reach the chat template with their
``function.arguments`` decoded from OpenAI's JSON string into the object templates render, as vLLM
does; arguments that are not JSON are a 400 naming the message.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agl.trainer.serving.engine import SamplingParams


class WireError(ValueError):
    """A request this server refuses: a 4xx with a one-line message, and the name of the request
    field at fault when there is one (OpenAI's ``param``, which the openai client exposes)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "best_of": (1,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "repetition_penalty": (1,),
    "logit_bias": ({},),
    "top_k": (0, -1),
    "min_p": (0,),
    "min_tokens": (0,),
    "ignore_eos": (False,),
    "use_beam_search": (False,),
    "stop_token_ids": ([],),
    "include_stop_str_in_output": (False,),
    "skip_special_tokens": (True,),
    "prompt_logprobs": (),
    "response_format": ({"type": "text"},),
    "guided_json": (),
    "guided_regex": (),
    "guided_choice": (),
    "guided_grammar": (),
    "structured_outputs": (),
}
"""Options this server cannot honour, each with the values that change nothing (``None`` always
does): those are accepted, since clients send them by default; any other value is a 400."""

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
"""OpenAI's message roles; it refuses others with a 400, and so does this server."""


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")
    unsupported: ClassVar[dict[str, tuple[Any, ...]]] = UNSUPPORTED

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    # Flags are nullable (null: false), as in OpenAI's API: the openai client sends an explicit None as null.
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    return_token_ids: bool | None = False
    return_tokens_as_token_ids: bool | None = False

    def refuse_unsupported(self) -> None:
        """A `WireError` naming the first option sent with a value this server would silently ignore."""
        sent = {**(self.model_extra or {}), **{name: getattr(self, name) for name in type(self).model_fields}}
        for name, neutral in self.unsupported.items():
            value = sent.get(name)
            if value is not None and not any(_same(value, accepted) for accepted in neutral):
                allowed = " or ".join(json.dumps(accepted) for accepted in neutral) or "null"
                message = f"{name}={json.dumps(value)[:80]} is not supported by this server (only {allowed})"
                raise WireError(message, param=name)

    def refuse_stream_options_without_stream(self) -> None:
        """As OpenAI and vLLM: ``stream_options`` (say, ``include_usage``) has no effect on a whole
        answer, and a client sending it without ``stream`` expects a stream it would not get."""
        if self.stream_options and not self.stream:
            raise WireError("stream_options can only be set when stream is true", param="stream_options")

    def check_model(self, served: str) -> None:
        """As vLLM: no model (or an empty name) means the served one; any other name is a 404."""
        if self.model and self.model != served:
            raise WireError(f"The model `{self.model[:200]}` does not exist.", 404, param="model")

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
    tool_choice: str | dict[str, Any] | None = None
    logprobs: bool | None = False
    unsupported: ClassVar[dict[str, tuple[Any, ...]]] = {
        **UNSUPPORTED,
        "top_logprobs": (0,),  # top alternatives are not computed
        # The model may call a tool or not: nothing constrains its decoding to the markup of a call.
        "tool_choice": ("auto", "none"),
        "parallel_tool_calls": (True,),  # one reply may hold several calls
        "functions": ([],),  # the legacy form of tools, which reaches no chat template
        "function_call": ("auto", "none"),
        "modalities": (["text"],),  # text out only: no audio
        "audio": (),
    }

    @property
    def may_call_tools(self) -> bool:
        """Whether the reply is read for tool calls: tools offered and not ruled out."""
        return bool(self.tools) and self.tool_choice != "none"

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
        return [_with_argument_objects(number, message) for number, message in enumerate(messages)]

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        """``max_completion_tokens`` wins over the deprecated ``max_tokens`` when both come, as in vLLM."""
        params = super().sampling(default_max_tokens)
        if self.max_completion_tokens is not None:
            params = dataclasses.replace(params, max_tokens=self.max_completion_tokens)
        return params


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    unsupported: ClassVar[dict[str, tuple[Any, ...]]] = {
        **UNSUPPORTED,
        "logprobs": (0,),  # 0: the sampled tokens' logprobs; more asks for top alternatives, not computed
        "echo": (False,),
        "suffix": ("",),
    }

    def prompt_ids(self, encode: Callable[[str], list[int]]) -> list[int]:
        """One prompt: a string, a list of token ids, or a batch of exactly one of those."""
        prompt: Any = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise WireError("this server completes one prompt per request", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            return encode(prompt)
        return [int(token) for token in prompt]


def _with_argument_objects(number: int, message: dict[str, Any]) -> dict[str, Any]:
    """``message`` with its tool calls' ``function.arguments`` decoded, as vLLM does: OpenAI sends
    them as a JSON string, chat templates render them as an object (``arguments | tojson``)."""
    calls = message.get("tool_calls")
    if calls is None:
        return message
    if not isinstance(calls, list) or not all(isinstance(call, dict) for call in calls):
        raise ValueError(f"message {number}: tool_calls must be a list of objects")
    decoded = []
    for index, call in enumerate(calls):
        function = call.get("function")
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            try:
                arguments = json.loads(function["arguments"])
            except ValueError:
                raise ValueError(f"message {number}: tool call {index}'s function.arguments is not JSON") from None
            call = {**call, "function": {**function, "arguments": arguments}}
        decoded.append(call)
    return {**message, "tool_calls": decoded}


def parse(model: type[_Sampling], body: bytes) -> Any:
    """A request model from a JSON body; a `WireError` naming the first problem otherwise."""
    try:
        request = model.model_validate_json(body)
    except ValidationError as error:
        first = error.errors()[0]
        location = first.get("loc", ())
        where = ".".join(str(part) for part in location) or "body"
        message = first.get("msg", "invalid")
        raise WireError(
            "the body is not JSON" if first.get("type") == "json_invalid" else f"{where}: {message}",
            param=str(location[0]) if location else None,  # the request field at fault, as OpenAI names it
        ) from None
    request.refuse_unsupported()
    request.refuse_stream_options_without_stream()
    return request


def _same(value: Any, accepted: Any) -> bool:
    """JSON equality: ``0`` is ``0.0``, but ``false`` is not ``0`` (``==`` alone would say it is)."""
    return isinstance(value, bool) == isinstance(accepted, bool) and bool(value == accepted)


def usage(prompt_ids: Sequence[int], token_ids: Sequence[int]) -> dict[str, int]:
    return {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": len(token_ids),
        "total_tokens": len(prompt_ids) + len(token_ids),
    }


RESPONSES_API = (
    "the Responses API is not served here, only chat completions and completions: for the OpenAI "
    'Agents SDK, set_default_openai_api("chat_completions") or use OpenAIChatCompletionsModel'
)
"""A 404's message for ``…/responses``: the Agents SDK calls that API by default."""


def not_found(path: str, otherwise: str) -> str:
    """What a 404 for ``path`` says: the Responses API's own message, else ``otherwise``."""
    return RESPONSES_API if path.rstrip("/").endswith("/responses") or "/responses/" in path else otherwise


def error_body(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, which the openai client turns into its typed exceptions; ``param``
    names the request field at fault (``BadRequestError.param``)."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}
