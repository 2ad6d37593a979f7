"""The hermes tool-call parser on strings: whole replies, and the same replies streamed in pieces
split at every position, which must read exactly as the whole."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agl.trainer.serving.tool_calls import ToolCallStream, parse_tool_calls, resolve_parser

WEATHER = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TIME = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET", "exact": true}}\n</tool_call>'


def named(calls: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Each call's name and decoded arguments, after checking its OpenAI shape."""
    for call in calls:
        assert call["type"] == "function" and call["id"].startswith("call_") and len(call["id"]) > 10
        assert isinstance(call["function"]["arguments"], str)
    return [(call["function"]["name"], json.loads(call["function"]["arguments"])) for call in calls]


def test_one_call_is_a_tool_call_and_no_content() -> None:
    content, calls = parse_tool_calls(WEATHER)
    assert content is None
    assert named(calls) == [("get_weather", {"city": "Paris"})]
    assert "index" not in calls[0]


def test_several_calls_each_with_its_own_id() -> None:
    content, calls = parse_tool_calls(f"{WEATHER}\n{TIME}\n")
    assert content is None
    assert named(calls) == [("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET", "exact": True})]
    assert calls[0]["id"] != calls[1]["id"]


def test_text_around_the_calls_is_the_content() -> None:
    content, calls = parse_tool_calls(f"Let me check.\n{WEATHER} and {TIME} done.")
    assert content == "Let me check.\n and  done."
    assert [name for name, _ in named(calls)] == ["get_weather", "get_time"]


@pytest.mark.parametrize(
    "block",
    [
        "<tool_call>\n{name: get_weather}\n</tool_call>",  # not JSON
        '<tool_call>{"arguments": {"city": "Paris"}}</tool_call>',  # no name
        '<tool_call>{"name": "", "arguments": {}}</tool_call>',  # an empty name
        '<tool_call>["get_weather"]</tool_call>',  # not an object
    ],
)
def test_a_block_that_names_no_call_stays_content(block: str) -> None:
    """As vLLM's hermes parser: the text is given back as it came rather than guessed at."""
    content, calls = parse_tool_calls(f"A {block} B {WEATHER}")
    assert content == f"A {block} B "
    assert named(calls) == [("get_weather", {"city": "Paris"})]


def test_text_without_markup_is_untouched() -> None:
    for text in ("", "Paris is sunny.", "a < b and <tool but not a call", "<tool_call"):
        assert parse_tool_calls(text) == (text, [])


def test_a_call_without_arguments_has_empty_ones_and_non_ascii_is_kept() -> None:
    _, calls = parse_tool_calls(
        '<tool_call>{"name": "now"}</tool_call><tool_call>{"name": "f", "arguments": {"c": "Zürich"}}</tool_call>'
    )
    assert [call["function"]["arguments"] for call in calls] == ["{}", '{"c": "Zürich"}']


def test_a_last_block_cut_short_counts_when_its_json_is_whole() -> None:
    """The model may stop (EOS, max_tokens) before ``</tool_call>``: vLLM keeps such a call too."""
    _, calls = parse_tool_calls(WEATHER.removesuffix("\n</tool_call>"))
    assert named(calls) == [("get_weather", {"city": "Paris"})]
    cut = WEATHER[:30]
    assert parse_tool_calls(cut) == (cut, [])


CASES = [
    WEATHER,
    f"Let me check.\n{WEATHER}\n{TIME}",
    f"x <tool_call>oops</tool_call> y {WEATHER} z <tool_c",
    "no calls here < > <tool_ca but a lookalike",
    WEATHER.removesuffix("</tool_call>"),
]


def streamed(pieces: list[str]) -> tuple[str, list[dict[str, Any]], list[int]]:
    """Content, calls and their indexes as a client would assemble them from the stream's deltas."""
    stream = ToolCallStream()
    deltas = [stream.feed(piece) for piece in pieces[:-1]] + [stream.finish(pieces[-1])]
    calls = [call for delta in deltas for call in delta.tool_calls]
    return "".join(delta.content for delta in deltas), calls, [call["index"] for call in calls]


@pytest.mark.parametrize("text", CASES)
def test_a_stream_split_anywhere_reads_as_the_whole(text: str) -> None:
    whole_content, whole_calls = parse_tool_calls(text)
    for cut in range(len(text) + 1):
        content, calls, indexes = streamed([text[:cut], text[cut:]])
        assert content == (whole_content or ""), cut
        assert named(calls) == named(whole_calls), cut
        assert indexes == list(range(len(calls)))
    content, calls, _ = streamed(list(text) or [""])  # one character at a time
    assert (content, named(calls)) == (whole_content or "", named(whole_calls))


def test_a_stream_holds_back_only_what_may_start_a_call() -> None:
    stream = ToolCallStream()
    assert stream.feed("Sure <tool").content == "Sure "
    assert stream.feed("box> ok").content == "<toolbox> ok"  # it was not a call after all
    assert stream.feed(WEATHER[:-3]).content == ""  # an open block waits for its end
    delta = stream.feed(WEATHER[-3:] + " bye")
    assert named(delta.tool_calls) == [("get_weather", {"city": "Paris"})] and delta.content == " bye"
    assert delta.tool_calls[0]["index"] == 0
    assert stream.finish().content == ""


@pytest.mark.parametrize(
    ("setting", "template", "parser"),
    [
        ("auto", "{{ '<tool_call>' }}", "hermes"),
        ("auto", "{{ messages }}", None),
        ("hermes", "{{ messages }}", "hermes"),
        (None, "{{ '<tool_call>' }}", None),
        ("none", "{{ '<tool_call>' }}", None),
    ],
)
def test_auto_reads_calls_only_when_the_template_writes_the_markup(
    setting: str | None, template: str, parser: str | None
) -> None:
    assert resolve_parser(setting, template) == parser


def test_an_unknown_parser_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'mistral' is not known.*hermes"):
        resolve_parser("mistral", "")
