"""OpenAI chat completions as LLM-call attributes, the parts every recorder of them shares: the
request's sampling parameters under their ``gen_ai.request.*`` names, and a choice of a streamed
reply put together from its deltas into the assistant message `llm` records.

Used by the openai and autogen instrumentors and by the trainer's LLM proxy, so a call looks the
same whichever of them recorded it. Plain Python, no OpenAI SDK: callers pass plain values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

REASONING_KEYS = ("reasoning_content", "reasoning")
"""Reasoning text that OpenAI-compatible servers (vLLM, DeepSeek) add to messages and deltas."""

CHAT_PARAMETERS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "max_completion_tokens": "max_tokens",
    "max_tokens": "max_tokens",
    "seed": "seed",
    "stop": "stop_sequences",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "n": "choice.count",
}
"""A chat completion request's arguments and their names after ``gen_ai.request.``."""


def _not_none(value: Any) -> bool:
    return value is not None


def request_parameters(
    arguments: Mapping[str, Any],
    names: Mapping[str, str] = CHAT_PARAMETERS,
    *,
    given: Callable[[Any], bool] = _not_none,
) -> dict[str, Any]:
    """The sampling parameters among ``arguments`` under their ``gen_ai.request.*`` names (without
    the prefix): the first of synonyms wins, a lone stop string becomes a list; ``given`` says
    which values count as passed."""
    found: dict[str, Any] = {}
    passed = names.keys() & arguments.keys()  # usually none or a few of the names
    if not passed:
        return found
    for argument, name in names.items():  # in the names' order: the first of synonyms wins
        if argument not in passed:
            continue
        value = arguments[argument]
        if given(value) and name not in found:
            found[name] = [value] if name == "stop_sequences" and isinstance(value, str) else value
    return found


@dataclass
class ChoiceDraft:
    """One choice of a chat reply put together from its deltas: content, reasoning, tool calls,
    finish reason and the engine's token ids. How a delta is read (a dict, an SDK object) is the
    caller's; this keeps the parts and makes the message."""

    content: list[str] = field(default_factory=list)
    reasoning: dict[str, list[str]] = field(default_factory=dict)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    token_ids: list[int] = field(default_factory=list)

    def add_reasoning(self, key: str, value: Any) -> None:
        if isinstance(value, str) and value:
            self.reasoning.setdefault(key, []).append(value)

    def add_tool_call(self, index: int | None, call_id: Any, call_type: Any, name: Any, arguments: Any) -> None:
        """A tool-call delta: id and type when it has them, name and arguments appended. Without an
        index (some OpenAI-compatible servers send each call whole, unnumbered), a delta with an id
        of its own starts the next call, and one without continues the last."""
        if not isinstance(index, int):
            index = self._position(call_id)
        draft = self.tool_calls.setdefault(
            index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        draft["id"] = call_id or draft["id"]
        draft["type"] = call_type or draft["type"]
        draft["function"]["name"] += name or ""
        draft["function"]["arguments"] += arguments or ""

    def _position(self, call_id: Any) -> int:
        last = max(self.tool_calls, default=None)
        if last is None:
            return 0
        return last + 1 if call_id and self.tool_calls[last]["id"] not in (None, call_id) else last

    def message(self) -> dict[str, Any]:
        """The chat shape: role, content, tool calls (by index), reasoning. A reply of tool calls
        alone has no content (None), as OpenAI sends it whole, though servers stream ``""`` pieces."""
        text = "".join(self.content)
        content = None if not self.content or (not text and self.tool_calls) else text
        result: dict[str, Any] = {"role": "assistant", "content": content}
        if self.tool_calls:
            result["tool_calls"] = [self.tool_calls[index] for index in sorted(self.tool_calls)]
        result.update({key: "".join(parts) for key, parts in self.reasoning.items()})
        return result
