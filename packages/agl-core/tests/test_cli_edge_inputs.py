"""`agl spans` and `agl rollouts` on trees and text that OTLP senders can write: deeper than a
terminal or Python's stack, names and errors over several lines, escape codes in names and ids."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

from typer.testing import CliRunner, Result

from agl.core import Span, open_store
from agl.core.cli import app
from agl.core.types.spans import SpanStatus

WIDTH = 80
T0 = 1_700_000_000.0


def chain(rollout_id: str, attempt_id: str, depth: int, **names: str) -> list[Span]:
    """``depth`` spans, each the parent of the next; ``names`` renames some (by index, ``n<i>``)."""
    return [
        Span(
            rollout_id=rollout_id,
            attempt_id=attempt_id,
            sequence_id=i + 1,
            trace_id="ab" * 16,
            span_id=f"{i + 1:016x}",
            parent_id=f"{i:016x}" if i else None,
            name=names.get(f"n{i}", f"level-{i + 1}"),
            start_time=T0 + i,
            end_time=T0 + i + 0.5,
        )
        for i in range(depth)
    ]


def filled(tmp_path: Path, depth: int, **names: str) -> tuple[str, str]:
    url = f"sqlite:///{tmp_path / 'store.db'}"

    async def fill() -> str:
        store = open_store(url)
        started = await store.start_rollout({"task": 1})
        await store.add_many_spans(chain(started.rollout_id, started.attempt.attempt_id, depth, **names))
        await store.close()
        return started.rollout_id

    return url, asyncio.run(fill())


def agl(url: str, *args: str, terminal: bool = False) -> Result:
    env = {"COLUMNS": str(WIDTH), **({"FORCE_COLOR": "1"} if terminal else {})}
    result = CliRunner().invoke(app, [*args, "--store", url], env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def test_a_tree_deeper_than_the_terminal_shows_every_span_within_80_columns(tmp_path: Path) -> None:
    url, rollout_id = filled(tmp_path, 40)
    shown = re.sub(r"\x1b\[[0-9;]*m", "", agl(url, "spans", rollout_id, terminal=True).stdout)
    lines = shown.splitlines()
    assert [line for line in lines if len(line) > WIDTH] == []
    for level in range(1, 41):
        (line,) = [line for line in lines if re.search(rf"\blevel-{level}\b", line)]
        assert "500 ms" in line, line  # the label whole, not cut to nothing
    assert "depth 40 · level-40" in shown  # past the room, a span says how deep it really is
    assert lines[-1].startswith("40 spans")


def test_a_tree_deeper_than_pythons_recursion_limit(tmp_path: Path) -> None:
    depth = sys.getrecursionlimit() + 100
    url, rollout_id = filled(tmp_path, depth)
    shown = agl(url, "spans", rollout_id).stdout
    assert f"level-{depth}  500 ms" in shown
    assert shown.splitlines()[-1].startswith(f"{depth} spans")


def test_a_span_is_one_line_and_escape_codes_in_its_text_never_reach_the_terminal(tmp_path: Path) -> None:
    names = {"n1": "fetch\n  page\tone", "n2": "\x1b]0;owned\x07retitle \x1b[2Jclear"}
    url = f"sqlite:///{tmp_path / 'store.db'}"
    rollout_id, attempt_id = "ro-\x1b[31mred", "at-\x1b[31mred"

    async def fill() -> None:
        store = open_store(url)
        spans = chain(rollout_id, attempt_id, 3, **names)
        error = SpanStatus(status_code="ERROR", description="Traceback:\n  line 1\n\x1b[1mValueError\x1b[0m")
        failed = spans[0].model_copy(update={"status": error})
        await store.add_observed_spans([failed, *spans[1:]])
        await store.close()

    asyncio.run(fill())
    tree = agl(url, "spans", rollout_id).stdout
    assert "\x1b" not in tree and "\x07" not in tree
    lines = tree.splitlines()
    assert len(lines) == 5, lines  # the attempt, three spans, the summary
    bad = "\N{REPLACEMENT CHARACTER}"
    assert lines[1].endswith(f"ERROR Traceback: line 1 {bad}[1mValueError{bad}[0m")
    assert lines[2].endswith("fetch page one  500 ms")
    listing = agl(url, "rollouts", "list").stdout + agl(url, "rollouts", "show", rollout_id).stdout
    assert "\x1b" not in listing and f"ro-{bad}[31mred" in listing


def test_json_output_writes_nan_and_infinities_as_null(capsys) -> None:
    """A memory store keeps a span attribute's NaN; ``--json`` must still print JSON any parser reads."""
    from agl.core.cli._common import print_json

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    print_json({"attributes": {"loss": float("nan"), "bounds": [float("-inf"), 1.5]}, "name": "é"})
    printed = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert printed == {"attributes": {"loss": None, "bounds": [None, 1.5]}, "name": "é"}
