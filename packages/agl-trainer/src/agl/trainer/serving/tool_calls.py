"""Tool calls out of generated text: the hermes markup of Qwen2.5, Qwen3 and Hermes chat templates.

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Each block whose JSON is an object with a string ``name`` becomes an OpenAI tool call (``id``
``call_…``, ``type: function``, ``function.arguments`` a JSON string); any other block (malformed
JSON, no name) stays content, as vLLM's ``hermes`` parser leaves it. Text outside the blocks is
the content (None when blank beside calls). A last block cut short (no ``</tool_call>``: EOS or
``max_tokens`` came first) still counts when its JSON is whole, as in vLLM. The text read is the
engine's decoding, special tokens skipped: Qwen's ``<tool_call>`` is an ordinary added token, so it
stays; a tokenizer that marked it special would hide the markup from this parser.

`ToolCallStream` does the same on a stream of text deltas: text that may be the start of
``<tool_call>`` is held back until it is known not to be, a block is held until it is complete
and then comes as one tool call, and plain text flows through. `parse_tool_calls` is that stream
fed at once, so a reply reads the same streamed or not.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

PARSERS = ("hermes",)
"""Markups this module reads (the names vLLM's ``--tool-call-parser`` gives them)."""
START = "<tool_call>"
END = "</tool_call>"


@dataclass
class Delta:
    """What a piece of generated text adds to the reply: content, complete tool calls, or both."""

    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


class ToolCallStream:
    """Splits a stream of text deltas into content and tool calls (see the module)."""

    def __init__(self) -> None:
        self._pending = ""  # text not yet given out: a possible start tag, or an open block
        self.calls = 0

    def feed(self, text: str) -> Delta:
        """What may be given out now that ``text`` came (possibly nothing)."""
        self._pending += text
        delta = Delta()
        while True:
            start = self._pending.find(START)
            if start < 0:
                sendable = len(self._pending) - _partial_start(self._pending)
                delta.content += self._pending[:sendable]
                self._pending = self._pending[sendable:]
                return delta
            delta.content += self._pending[:start]
            self._pending = self._pending[start:]
            end = self._pending.find(END, len(START))
            if end < 0:
                return delta
            block, self._pending = self._pending[: end + len(END)], self._pending[end + len(END) :]
            self._add_block(block, block[len(START) : end], delta)

    def finish(self, text: str = "") -> Delta:
        """What ``text``, the last, gives, and the rest: a partial start tag is content; an
        unclosed block a tool call when its JSON is whole."""
        delta = self.feed(text)
        rest, self._pending = self._pending, ""
        if rest.startswith(START):
            self._add_block(rest, rest[len(START) :], delta)
        else:
            delta.content += rest
        return delta

    def _add_block(self, block: str, inner: str, delta: Delta) -> None:
        call = _tool_call(inner, self.calls)
        if call is None:
            delta.content += block
        else:
            delta.tool_calls.append(call)
            self.calls += 1


def parse_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """The content and the tool calls of a whole generated text, as a message holds them: the
    content is None when there are calls and nothing else but blanks."""
    delta = ToolCallStream().finish(text)
    calls = [{key: value for key, value in call.items() if key != "index"} for call in delta.tool_calls]
    return (None if calls and not delta.content.strip() else delta.content), calls


def check_parser(setting: str | None) -> None:
    """Refuse a setting `resolve_parser` would: servers check it when built, not when started."""
    if setting is not None and setting not in ("auto", "none", *PARSERS):
        raise ValueError(f"tool call parser {setting!r} is not known (auto, none, {', '.join(PARSERS)})")


def resolve_parser(setting: str | None, chat_template: str) -> str | None:
    """The parser ``setting`` names for a model with ``chat_template``: "auto" is "hermes" when
    the template writes ``<tool_call>`` itself (the markup the model was trained to produce)."""
    check_parser(setting)
    if setting is None or setting == "none":
        return None
    if setting in PARSERS:
        return setting
    return "hermes" if START in chat_template else None


def _tool_call(inner: str, index: int) -> dict[str, Any] | None:
    """The OpenAI tool call a block's JSON names, or None when it names none."""
    try:
        named = json.loads(inner)
    except ValueError:
        return None
    if not isinstance(named, dict) or not isinstance(named.get("name"), str) or not named["name"]:
        return None
    arguments = json.dumps(named.get("arguments", {}), ensure_ascii=False)
    function = {"name": named["name"], "arguments": arguments}
    return {"index": index, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": function}


def _partial_start(text: str) -> int:
    """How many of ``text``'s last characters could begin ``<tool_call>``."""
    for size in range(min(len(START) - 1, len(text)), 0, -1):
        if START.startswith(text[-size:]):
            return size
    return 0
