"""`agl` output a script or a person relies on, beyond the common case: resources ids chosen by a
client (any length, any text) on a narrow terminal, and ``KEY=JSON`` options that are not JSON."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agl.core import PromptTemplate, open_store
from agl.core.cli import app
from agl.core.cli._common import parse_option

CHOSEN_ID = "rs-sentiment-prompt-experiment-a-2026-11-23"
"""A resources id as `update_resources` accepts it: whatever the algorithm named it."""


@pytest.fixture
def chosen_ids(tmp_path: Path) -> str:
    """A store with a generated resources id and a long chosen one, with three prompts."""
    url = f"sqlite:///{tmp_path / 'store.db'}"

    async def fill() -> None:
        store = open_store(url)
        await store.add_resources({"prompt": PromptTemplate(template="Solve {task}.")})
        prompts = {name: PromptTemplate(template=f"{name} {{task}}") for name in ("system", "critic", "judge")}
        await store.update_resources(CHOSEN_ID, prompts)
        await store.update_resources("rs-\x1b]0;pwned\x07", prompts)
        await store.close()

    asyncio.run(fill())
    return url


def on_terminal(url: str, width: int, *args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--store", url], env={"COLUMNS": str(width), "FORCE_COLOR": "1"})
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert "\x1b[" in result.stdout, "rich did not take the output for a terminal"
    return re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)


def lines_with_ids(listing: str) -> dict[str, str]:
    """Each row that opens with an id, by that id (whole, or as far as the terminal cut it)."""
    return {line.split()[0]: line for line in listing.splitlines() if line.startswith("rs-")}


@pytest.mark.parametrize("width", [60, 80])
def test_resources_on_a_narrow_terminal_drop_columns_rather_than_cut_an_id(chosen_ids: str, width: int) -> None:
    """The listing cut a chosen id with an ellipsis at the terminal's edge, unlike every other table."""
    listing = on_terminal(chosen_ids, width, "resources")
    assert CHOSEN_ID in lines_with_ids(listing)
    assert "updated" not in listing.splitlines()[0]  # the time went first, to make room
    assert "system" in lines_with_ids(listing)[CHOSEN_ID]  # the contents fold beside the ids


def test_resources_ids_are_printed_without_their_control_characters(chosen_ids: str) -> None:
    """An id is text a client wrote: an escape in it would retitle the terminal, as in span names."""
    result = CliRunner().invoke(app, ["resources", "--store", chosen_ids])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "rs-\N{REPLACEMENT CHARACTER}]0;pwned\N{REPLACEMENT CHARACTER}" in result.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model=gpt-4o", ("model", "gpt-4o")),
        ("steps=40", ("steps", 40)),
        ('variants=["a", "b"]', ("variants", ["a", "b"])),
        ("path=/data/[x].jsonl", ("path", "/data/[x].jsonl")),
    ],
)
def test_an_option_is_json_or_a_bare_word(text: str, expected: tuple[str, Any]) -> None:
    assert parse_option(text) == expected


@pytest.mark.parametrize("value", ["[1, 2", '{"a": 1', '"unclosed', " [1,]"])
def test_an_option_that_opens_as_json_must_be_json(value: str) -> None:
    """It became a bare string, which the algorithm got in place of the list or object meant."""
    with pytest.raises(ValueError, match=r"^option key: not JSON: "):
        parse_option(f"key={value}")


def test_a_rollouts_input_and_metadata_reach_the_terminal_without_c1_controls(tmp_path: Path) -> None:
    """JSON escapes ESC but not U+009B, which terminals also read as the start of a colour code."""
    url = f"sqlite:///{tmp_path / 'store.db'}"

    async def fill() -> str:
        store = open_store(url)
        rollout = await store.enqueue_rollout({"text": "\x9b31mred"}, metadata={"note": "a\x9b2Jb"})
        await store.close()
        return rollout.rollout_id

    rollout_id = asyncio.run(fill())
    result = CliRunner().invoke(app, ["rollouts", "show", rollout_id, "--store", url])
    assert result.exit_code == 0, result.output
    assert "\x9b" not in result.stdout
    bad = "\N{REPLACEMENT CHARACTER}"
    assert f'{{"text": "{bad}31mred"}}' in result.stdout and f'{{"note": "a{bad}2Jb"}}' in result.stdout
