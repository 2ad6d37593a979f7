"""The `agl` inspection CLI against a real SQLite store file, piped and on an 80-column terminal.

The store is filled once through the store API (as workers would), then every command is run
with `CliRunner` and its text, its ``--json`` and its errors are checked against the store.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from agl.core import LLM, PromptTemplate, RolloutConfig, RolloutRequest, Span, open_store
from agl.core.cli import app
from agl.core.cli._common import format_duration, format_time
from agl.core.server import ServerSettings, create_app
from agl.core.store import InMemoryLightningStore
from agl.core.testing.server import ServingThread

WIDTH = 80
T0 = 1_700_000_000.0
LONG_NAME = "orphan whose parent was never exported " + "x" * 80
TRACE_ROLLOUT = "ro-trace-b20dd" + "7" * 23 + "3e02"  # as OTLP files a trace no runner started
PROC_ROLLOUT = "ro-proc-" + "5" * 16
WORKER = "wk-gpu-node-17.cluster.internal"
MISSING = "FileNotFoundError: [Errno 2] No such file or directory: '/data/tasks/task-0042/input.json'"


@dataclass(frozen=True)
class Filled:
    url: str
    retried: str
    """Attempt 1 failed with a full span tree, attempt 2 succeeded: rollout succeeded."""
    first_attempt: str
    second_attempt: str
    waiting: str
    """Claimed by worker-3, no spans yet: preparing."""
    queued: list[str]
    resources_id: str
    """Two versions; not the latest id."""
    latest_resources_id: str


def span(rollout_id: str, attempt_id: str, seq: int, parent: int | None, name: str, **fields: Any) -> Span:
    duration = fields.pop("duration", 0.01)
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=seq,
        trace_id="ab" * 16,
        span_id=f"{seq:016x}",
        parent_id=None if parent is None else f"{parent:016x}",
        name=name,
        start_time=T0 + seq,
        end_time=T0 + seq + duration,
        **fields,
    )


async def fill(url: str) -> Filled:
    store = open_store(url)
    llm = LLM(endpoint="http://llm.local/v1", model="qwen-7b", api_key="sk-secret", sampling_parameters={"top_p": 0.9})
    resources = await store.add_resources({"llm": llm, "prompt": PromptTemplate(template="Solve {task}.")})
    await store.update_resources(
        resources.resources_id,
        {"llm": llm, "prompt": PromptTemplate(template="Solve {task} [step] by step.\nAnswer briefly.")},
    )
    latest = await store.add_resources({"greeting": PromptTemplate(template="Hello {name}")})

    retried = await store.enqueue_rollout(
        {"task": "2+2"},
        mode="train",
        resources_id=resources.resources_id,
        config=RolloutConfig(timeout_seconds=600, max_attempts=2, retry_condition=("failed",)),
        metadata={"batch": "b1"},
    )
    waiting = await store.enqueue_rollout({"task": "3*3"}, mode="val")
    queued = await store.enqueue_many_rollouts([RolloutRequest(input={"task": i}, mode="train") for i in range(5)])

    first = await store.dequeue_rollout(worker_id="worker-1")
    assert first is not None and first.rollout_id == retried.rollout_id
    r, a = retried.rollout_id, first.attempt.attempt_id
    llm_attributes = {
        "gen_ai.request.model": "qwen-7b",
        "gen_ai.usage.input_tokens": 812,
        "gen_ai.usage.output_tokens": 64,
        "agl.llm.call": True,
    }
    await store.add_many_spans(
        [
            span(r, a, 1, None, "agent.run", duration=1.52),
            span(r, a, 2, 1, "chat qwen-7b", attributes=llm_attributes, duration=0.812),
            span(r, a, 3, 2, "http.post", duration=0.0042),
            span(r, a, 4, 1, "tool.search", status={"status_code": "ERROR", "description": "index down"}),
            span(r, a, 5, 1, "reward", attributes={"agl.reward": 0.25}),
            span(r, a, 6, 999, LONG_NAME),
        ]
    )
    await store.update_attempt(r, a, status="failed")  # retried: back in the queue

    second = await store.start_attempt(r, worker_id="worker-2")
    b = second.attempt.attempt_id
    rewards = {"agl.reward": 1.0, "agl.reward.correct": 1, "agl.reward.brief": 0.5}
    # The same span ids as attempt 1: the tree is built per attempt.
    await store.add_many_spans([span(r, b, 1, None, "agent.run"), span(r, b, 2, 1, "score", attributes=rewards)])
    await store.update_attempt(r, b, status="succeeded")

    claimed = await store.dequeue_rollout(worker_id="worker-3")
    assert claimed is not None and claimed.rollout_id == waiting.rollout_id
    await store.close()
    return Filled(
        url=url,
        retried=r,
        first_attempt=a,
        second_attempt=b,
        waiting=waiting.rollout_id,
        queued=[q.rollout_id for q in queued],
        resources_id=resources.resources_id,
        latest_resources_id=latest.resources_id,
    )


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    path = tmp_path_factory.mktemp("cli") / "store.db"
    return asyncio.run(fill(f"sqlite:///{path}"))


@dataclass(frozen=True)
class LongIds:
    """Rollouts with the long ids tracing gives them; the trace's attempts went timeout > succeeded
    on ``WORKER``, rewarded 1 each, the second with an error span."""

    url: str
    attempts: list[str]


async def fill_long_ids(url: str) -> LongIds:
    store = open_store(url)
    config = RolloutConfig(max_attempts=2, retry_condition=("timeout",))
    first = await store.start_rollout({"task": 42}, rollout_id=TRACE_ROLLOUT, config=config, worker_id=WORKER)
    a = first.attempt.attempt_id
    await store.add_many_spans(
        [
            span(TRACE_ROLLOUT, a, 1, None, "agent.run"),
            span(TRACE_ROLLOUT, a, 2, 1, "score", attributes={"agl.reward": 1}),
        ]
    )
    await store.update_attempt(TRACE_ROLLOUT, a, status="timeout")  # retried
    second = await store.start_attempt(TRACE_ROLLOUT, worker_id=WORKER)
    b = second.attempt.attempt_id
    error = {"status_code": "ERROR", "description": MISSING}
    await store.add_many_spans(
        [
            span(TRACE_ROLLOUT, b, 1, None, "read task", status=error),
            span(TRACE_ROLLOUT, b, 2, None, "score", attributes={"agl.reward": 1}),
        ]
    )
    await store.update_attempt(TRACE_ROLLOUT, b, status="succeeded")
    await store.start_rollout({"task": 7}, mode="train", rollout_id=PROC_ROLLOUT)
    await store.close()
    return LongIds(url=url, attempts=[a, b])


@pytest.fixture(scope="module")
def long_ids(tmp_path_factory: pytest.TempPathFactory) -> LongIds:
    path = tmp_path_factory.mktemp("cli") / "long-ids.db"
    return asyncio.run(fill_long_ids(f"sqlite:///{path}"))


def query(url: str, method: str, *args: Any, **kwargs: Any) -> Any:
    """Ask the store directly, to compare with what the CLI printed."""

    async def ask() -> Any:
        store = open_store(url)
        try:
            return await getattr(store, method)(*args, **kwargs)
        finally:
            await store.close()

    return asyncio.run(ask())


def agl(filled: Filled | LongIds, *args: str, store: str | None = None) -> Result:
    return CliRunner().invoke(app, [*args, "--store", store or filled.url], env={"COLUMNS": str(WIDTH)})


def ok(filled: Filled | LongIds, *args: str) -> str:
    result = agl(filled, *args)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert "\x1b[" not in result.stdout, "not a terminal: plain text, no colour codes"
    return result.stdout


def on_terminal(filled: Filled | LongIds, *args: str) -> str:
    """The text an 80-column terminal shows (``FORCE_COLOR`` makes rich take the output for one)."""
    env = {"COLUMNS": str(WIDTH), "FORCE_COLOR": "1"}
    result = CliRunner().invoke(app, [*args, "--store", filled.url], env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert "\x1b[" in result.stdout, "rich did not take the output for a terminal"
    return re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), f"escaped as {result.exception!r}"
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def lines_with(output: str, *words: str) -> list[str]:
    return [line for line in output.splitlines() if all(word in line for word in words)]


# --- rollouts list --------------------------------------------------------------------------


def test_rollouts_list_shows_each_rollout_with_status_mode_attempts_and_a_footer(filled: Filled) -> None:
    out = ok(filled, "rollouts", "list")
    assert out.splitlines()[0].split() == ["rollout", "status", "mode", "attempts", "started", "duration"]
    (retried,) = lines_with(out, filled.retried)
    assert retried.split()[1:4] == ["succeeded", "train", "2"]
    assert retried.split()[-1] == format_duration(
        query(filled.url, "get_rollout_by_id", filled.retried).end_time
        - query(filled.url, "get_rollout_by_id", filled.retried).start_time
    )
    (waiting,) = lines_with(out, filled.waiting)
    assert waiting.split()[1:4] == ["preparing", "val", "1"]
    for rollout_id in filled.queued:
        (line,) = lines_with(out, rollout_id)
        assert line.split()[1:4] == ["queuing", "train", "0"] and line.rstrip().endswith("-")
    started = query(filled.url, "get_rollout_by_id", filled.waiting).start_time
    assert format_time(started) in waiting
    assert out.splitlines()[-1] == "showing 1\N{EN DASH}7 of 7"


def test_rollouts_list_filters_by_status_and_mode(filled: Filled) -> None:
    queued = ok(filled, "rollouts", "list", "--status", "queuing")
    assert sorted(re.findall(r"ro-[0-9a-f]{16}", queued)) == sorted(filled.queued)
    assert queued.splitlines()[-1] == "showing 1\N{EN DASH}5 of 5"
    two = ok(filled, "rollouts", "list", "--status", "succeeded", "--status", "preparing")
    assert sorted(re.findall(r"ro-[0-9a-f]{16}", two)) == sorted([filled.retried, filled.waiting])
    val = ok(filled, "rollouts", "list", "--mode", "val")
    assert re.findall(r"ro-[0-9a-f]{16}", val) == [filled.waiting]
    nothing = ok(filled, "rollouts", "list", "--status", "cancelled")
    assert nothing.strip() == "showing 0 of 0"


def test_rollouts_list_pages_and_sorts_like_the_store(filled: Filled) -> None:
    expected = query(filled.url, "query_rollouts", sort_by="rollout_id", sort_order="desc", limit=3, offset=2)
    out = ok(filled, "rollouts", "list", "--sort-by", "rollout_id", "--desc", "--limit", "3", "--offset", "2")
    assert re.findall(r"ro-[0-9a-f]{16}", out) == [r.rollout_id for r in expected]
    assert out.splitlines()[-1] == "showing 3\N{EN DASH}5 of 7"
    beyond = ok(filled, "rollouts", "list", "--offset", "50")
    assert beyond.strip() == "showing 0 of 7"


def test_rollouts_list_json_is_the_store_page(filled: Filled) -> None:
    data = json.loads(ok(filled, "rollouts", "list", "--status", "queuing", "--limit", "2", "--json"))
    expected = query(filled.url, "query_rollouts", status_in=["queuing"], limit=2)
    assert data == {
        "total": 5,
        "offset": 0,
        "limit": 2,
        "items": [rollout.model_dump(mode="json") for rollout in expected],
    }


def test_rollouts_list_rejects_bad_filters_in_one_line(filled: Filled) -> None:
    assert_one_line_error(agl(filled, "rollouts", "list", "--status", "done"), "'done'", "queuing")
    assert_one_line_error(agl(filled, "rollouts", "list", "--mode", "prod"), "'prod'", "train")
    assert_one_line_error(agl(filled, "rollouts", "list", "--sort-by", "input"), "'input'", "start_time")
    assert_one_line_error(agl(filled, "rollouts", "list", "--limit", "-1"), "limit")


# --- rollouts show --------------------------------------------------------------------------


def test_rollouts_show_gives_fields_config_attempts_spans_and_reward(filled: Filled) -> None:
    out = ok(filled, "rollouts", "show", filled.retried)
    field = {line.split(None, 1)[0]: line.split(None, 1)[1].rstrip() for line in out.splitlines()[:12]}
    assert field["rollout"] == filled.retried
    assert field["status"] == "succeeded"
    assert field["mode"] == "train"
    assert field["resources"] == filled.resources_id
    assert field["input"] == '{"task": "2+2"}'
    assert field["config"] == "timeout 10m00s · max 2 attempts · retry on failed"
    assert field["metadata"] == '{"batch": "b1"}'
    assert field["spans"] == "8 (all attempts)"
    assert field["reward"] == "1 (correct=1, brief=0.5) in the latest attempt"
    assert "2 attempts" in out
    (first,) = lines_with(out, filled.first_attempt)
    assert first.split()[:4] == ["1", filled.first_attempt, "failed", "worker-1"]
    (second,) = lines_with(out, filled.second_attempt)
    assert second.split()[:4] == ["2", filled.second_attempt, "succeeded", "worker-2"]
    assert second.rstrip().endswith("ago")


def test_rollouts_show_a_rollout_without_attempts(filled: Filled) -> None:
    out = ok(filled, "rollouts", "show", filled.queued[0])
    assert "queuing" in out and "no attempts yet" in out
    assert lines_with(out, "reward")[0].split() == ["reward", "-"]


def test_rollouts_show_json_matches_the_store(filled: Filled) -> None:
    data = json.loads(ok(filled, "rollouts", "show", filled.retried, "--json"))
    assert data["rollout"] == query(filled.url, "get_rollout_by_id", filled.retried).model_dump(mode="json")
    attempts = query(filled.url, "query_attempts", filled.retried)
    assert data["attempts"] == [attempt.model_dump(mode="json") for attempt in attempts]
    assert data["spans"] == 8
    assert data["reward"] == 1.0 and data["reward_dimensions"] == {"correct": 1.0, "brief": 0.5}


def test_an_unknown_rollout_is_one_line_and_exit_1(filled: Filled) -> None:
    assert_one_line_error(agl(filled, "rollouts", "show", "ro-missing"), "rollout 'ro-missing' not found")
    assert_one_line_error(agl(filled, "spans", "ro-missing"), "rollout 'ro-missing' not found")
    assert_one_line_error(agl(filled, "spans", "ro-missing", "--json"), "not found")


# --- spans ----------------------------------------------------------------------------------


def test_spans_tree_nests_by_parent_in_sequence_order_with_highlights(filled: Filled) -> None:
    out = ok(filled, "spans", filled.retried, "--attempt", filled.first_attempt)
    lines = out.splitlines()
    assert lines[0] == f"{filled.retried} · attempt 1 ({filled.first_attempt}) · failed"
    names = ["agent.run", "chat qwen-7b", "http.post", "tool.search", "reward", "orphan"]
    rows = [next(i for i, line in enumerate(lines) if f"── {name}" in line) for name in names]
    assert rows == sorted(rows) == list(range(1, 7)), out
    depth = {name: lines[row].index(name) // 4 for name, row in zip(names, rows, strict=True)}
    assert depth == {"agent.run": 1, "chat qwen-7b": 2, "http.post": 3, "tool.search": 2, "reward": 2, "orphan": 1}
    assert lines[1] == "├── agent.run  1,520 ms"
    assert "812 ms  LLM qwen-7b (812 in, 64 out tokens)" in lines[rows[1]]
    assert "4.2 ms" in lines[rows[2]]
    assert "ERROR index down" in lines[rows[3]]
    assert "reward 0.25" in lines[rows[4]]
    assert lines[rows[5]] == f"└── {LONG_NAME}  10 ms"  # piped: nothing is cut
    assert lines[-1] == "6 spans · 1 LLM call · reward 0.25"


def test_spans_default_to_the_latest_attempt(filled: Filled) -> None:
    out = ok(filled, "spans", filled.retried)
    assert out.splitlines() == [
        f"{filled.retried} · attempt 2 ({filled.second_attempt}) · succeeded",
        "└── agent.run  10 ms",
        "    └── score  10 ms  reward 1 (correct=1, brief=0.5)",
        "2 spans · 0 LLM calls · reward 1 (correct=1, brief=0.5)",
    ]


def test_spans_of_all_attempts_hang_under_each_attempt(filled: Filled) -> None:
    lines = ok(filled, "spans", filled.retried, "--attempt", "all").splitlines()
    assert lines[0] == f"{filled.retried} · succeeded"
    first = lines.index(f"├── attempt 1 ({filled.first_attempt}) · failed · reward 0.25")
    second = lines.index(f"└── attempt 2 ({filled.second_attempt}) · succeeded · reward 1 (correct=1, brief=0.5)")
    assert first == 1 and second == 8
    assert lines[first + 1] == "│   ├── agent.run  1,520 ms"
    assert lines[second + 1 :] == [
        "    └── agent.run  10 ms",
        "        └── score  10 ms  reward 1 (correct=1, brief=0.5)",
        "8 spans · 1 LLM call · reward 1 (correct=1, brief=0.5) in the latest attempt",  # as `rollouts show` says
    ]


def test_a_call_recorded_by_the_agent_and_the_llm_proxy_counts_once(tmp_path: Path) -> None:
    """The agent's instrumentation and the proxy each record a call (one response id): two LLM
    spans in the tree, one call in the summary, as the adapters count it. The span that ends a
    program run as its own rollout shows the program's outcome."""

    async def fill_calls(url: str) -> str:
        store = open_store(url)
        attempt = await store.start_rollout({"task": "greet"})
        r, a = attempt.rollout_id, attempt.attempt.attempt_id
        call = {"agl.llm.call": True, "gen_ai.request.model": "toy"}
        await store.add_many_spans(
            [
                span(r, a, 1, None, "agent.run"),
                span(r, a, 2, 1, "chat toy", attributes={**call, "gen_ai.response.id": "c-1"}),
                span(
                    r,
                    a,
                    3,
                    2,
                    "chat toy",
                    attributes={**call, "gen_ai.response.id": "c-1", "agl.llm.response_token_ids": [7]},
                ),
                span(r, a, 4, 1, "chat toy", attributes={**call, "gen_ai.response.id": "c-2"}),
                span(r, a, 5, None, "agl.process.exit", attributes={"agl.process.outcome": "succeeded"}),
            ]
        )
        await store.close()
        return r

    url = f"sqlite:///{tmp_path / 'calls.db'}"
    rollout_id = asyncio.run(fill_calls(url))
    result = CliRunner().invoke(app, ["spans", rollout_id, "--store", url], env={"COLUMNS": str(WIDTH)})
    assert result.exit_code == 0, result.stdout
    lines = result.stdout.splitlines()
    assert sum("LLM toy" in line for line in lines) == 3
    assert lines[-2] == "└── agl.process.exit  10 ms  succeeded"  # how the program ended
    assert lines[-1] == "5 spans · 2 LLM calls · reward -"


def test_rewards_are_each_attempts_own_never_a_sum_over_retries(long_ids: LongIds) -> None:
    """Attempts timeout > succeeded, rewarded 1 each: the rollout's reward is 1, never 2."""
    first, second = long_ids.attempts
    lines = ok(long_ids, "spans", TRACE_ROLLOUT, "--attempt", "all").splitlines()
    assert lines[1] == f"├── attempt 1 ({first}) · timeout · reward 1"
    assert f"└── attempt 2 ({second}) · succeeded · reward 1" in lines
    assert lines[-1] == "4 spans · 0 LLM calls · reward 1 in the latest attempt"
    shown = ok(long_ids, "rollouts", "show", TRACE_ROLLOUT)
    assert lines_with(shown, "reward")[0].split() == ["reward", "1", "in", "the", "latest", "attempt"]


def test_spans_json_is_the_stored_spans(filled: Filled) -> None:
    data = json.loads(ok(filled, "spans", filled.retried, "--attempt", filled.first_attempt, "--json"))
    expected = query(filled.url, "query_spans", filled.retried, filled.first_attempt)
    assert data == [s.model_dump(mode="json") for s in expected] and len(data) == 6
    everything = json.loads(ok(filled, "spans", filled.retried, "--attempt", "all", "--json"))
    assert len(everything) == 8


def test_spans_of_a_rollout_not_yet_attempted(filled: Filled) -> None:
    assert ok(filled, "spans", filled.queued[0]).strip() == f"{filled.queued[0]} has no attempts yet (status queuing)."
    assert json.loads(ok(filled, "spans", filled.queued[0], "--json")) == []


def test_spans_of_an_unknown_attempt(filled: Filled) -> None:
    assert_one_line_error(agl(filled, "spans", filled.retried, "--attempt", "at-nope"), "attempt 'at-nope' not found")


# --- resources and stats --------------------------------------------------------------------


def test_resources_list_marks_the_latest(filled: Filled) -> None:
    lines = ok(filled, "resources").splitlines()
    assert lines[0].split() == ["resources", "version", "updated", "contents"]
    rows = " ".join(lines[2:-1]).split()  # the contents column wraps: read the rows as one text
    older, latest = rows.index(filled.resources_id), rows.index(filled.latest_resources_id)
    assert rows[older + 1] == "2" and rows[older + 4 : latest] == ["llm", "(llm),", "prompt", "(prompt_template)"]
    assert rows[latest + 1] == "1" and rows[latest + 4 :] == ["greeting", "(prompt_template)"]
    assert lines[-1] == f"latest: {filled.latest_resources_id}"


def test_resources_show_the_llm_and_the_prompt_text_but_never_the_key(filled: Filled) -> None:
    out = ok(filled, "resources", filled.resources_id)
    assert out.splitlines()[0].startswith(f"{filled.resources_id} · version 2 · updated ")
    assert lines_with(out, "endpoint")[0].split() == ["endpoint", "http://llm.local/v1"]
    assert lines_with(out, "model")[0].split() == ["model", "qwen-7b"]
    assert lines_with(out, "top_p")[0].split() == ["top_p", "0.9"]
    assert "  Solve {task} [step] by step." in out and "  Answer briefly." in out  # not read as markup
    assert "sk-secret" not in out and "set (hidden)" in out


def test_resources_json(filled: Filled) -> None:
    listing = json.loads(ok(filled, "resources", "--json"))
    assert listing["latest"] == filled.latest_resources_id
    assert [item["resources_id"] for item in listing["items"]] == [filled.resources_id, filled.latest_resources_id]
    one = json.loads(ok(filled, "resources", filled.resources_id, "--json"))
    stored = query(filled.url, "get_resources_by_id", filled.resources_id).model_dump(mode="json")
    assert one["resources"]["llm"]["api_key"] == "<hidden>"
    stored["resources"]["llm"]["api_key"] = "<hidden>"
    assert one == stored
    assert_one_line_error(agl(filled, "resources", "rs-nope"), "resources 'rs-nope' not found")


def test_stats(filled: Filled) -> None:
    rows = {line.split()[0]: line.split()[1:] for line in ok(filled, "stats").splitlines()}
    assert rows["rollouts"] == ["7", "queuing", "5", "·", "preparing", "1", "·", "succeeded", "1"]
    assert rows["attempts"] == ["3", "preparing", "1", "·", "succeeded", "1", "·", "failed", "1"]
    assert rows["spans"] == ["8"] and rows["resources"] == ["2"] and rows["workers"] == ["3"]
    data = json.loads(ok(filled, "stats", "--json"))
    assert data["rollouts"] == 7 and data["attempts"] == 3 and data["spans"] == 8
    assert data["rollouts_by_status"] == query(filled.url, "statistics").rollouts_by_status


def test_an_empty_memory_store(filled: Filled) -> None:
    for args, expected in [
        (("rollouts", "list"), "showing 0 of 0"),
        (("resources",), "no resources yet"),
    ]:
        result = agl(filled, *args, store="memory://")
        assert result.exit_code == 0 and result.stdout.strip() == expected


# --- the edges ------------------------------------------------------------------------------


def test_agl_alone_lists_the_commands() -> None:
    out = CliRunner().invoke(app, [], env={"COLUMNS": str(WIDTH)}).stdout
    assert "Usage: agl" in out and all(command in out for command in ("rollouts", "spans", "resources", "stats"))


@pytest.mark.parametrize("url", ["postgres://db/agl", "store.db", "sqlite://", "memory://somewhere"])
def test_a_malformed_store_url_is_one_line_and_exit_1(filled: Filled, url: str) -> None:
    assert_one_line_error(agl(filled, "stats", store=url), "invalid store URL", repr(url))


def test_a_missing_sqlite_file_is_named_as_missing_not_as_a_bad_url(tmp_path: Path) -> None:
    path = tmp_path / "nothing-here.db"
    result = CliRunner().invoke(app, ["stats", "--store", f"sqlite:///{path}"])
    assert_one_line_error(result, f"no store file at {path}")
    assert "invalid store URL" not in result.stderr
    assert not path.exists(), "looking created a store"


def test_a_store_server_that_is_not_there_fails_at_once_in_one_line() -> None:
    """The client's 30 s of retries (to outlast a server restart) are for programs; a person who
    typed a wrong port gets the cause after 2 s."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    result = CliRunner().invoke(app, ["stats", "--store", url])
    assert_one_line_error(result, f"cannot reach the store at {url}: connection refused (gave up after 2 s)")


def test_https_to_a_plain_http_server_is_one_line_not_retried() -> None:
    with ServingThread(create_app(ServerSettings(), InMemoryLightningStore())) as server:
        url = server.url.replace("http://", "https://")
        result = CliRunner().invoke(app, ["rollouts", "list", "--store", url])
    assert_one_line_error(result, f"cannot reach the store at {url}: TLS handshake failed")
    assert "gave up" not in result.stderr, "a handshake no retry can mend was retried"


def test_agl_store_environment_variable_names_the_store(filled: Filled) -> None:
    result = CliRunner().invoke(app, ["stats", "--json"], env={"AGL_STORE": filled.url})
    assert result.exit_code == 0 and json.loads(result.stdout)["rollouts"] == 7


def test_store_before_the_command_names_the_store_and_a_commands_own_store_wins(
    filled: Filled, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGL_STORE", raising=False)

    def rollouts_in(*args: str, env: dict[str, str] | None = None) -> int:
        result = CliRunner().invoke(app, [*args, "--json"], env=env)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return json.loads(result.stdout)["rollouts"]

    assert rollouts_in("--store", filled.url, "stats") == 7
    assert rollouts_in("--store", filled.url, "stats", env={"AGL_STORE": "memory://"}) == 7  # over the variable
    assert rollouts_in("--store", "memory://", "stats", "--store", filled.url) == 7  # the command's own wins
    assert "AGL_STORE" not in os.environ, "the option leaked into the caller's environment"
    bad = CliRunner().invoke(app, ["--store", "nowhere://x", "rollouts", "list"])
    assert_one_line_error(bad, "invalid store URL", "'nowhere://x'")


def test_every_output_fits_an_80_column_terminal(filled: Filled, long_ids: LongIds) -> None:
    outputs = [
        on_terminal(filled, "rollouts", "list"),
        on_terminal(filled, "rollouts", "show", filled.retried),
        on_terminal(filled, "rollouts", "show", filled.waiting),
        on_terminal(filled, "spans", filled.retried, "--attempt", "all"),
        on_terminal(filled, "resources"),
        on_terminal(filled, "resources", filled.resources_id),
        on_terminal(filled, "stats"),
        on_terminal(long_ids, "rollouts", "list"),
        on_terminal(long_ids, "rollouts", "show", TRACE_ROLLOUT),
        on_terminal(long_ids, "spans", TRACE_ROLLOUT, "--attempt", "all"),
    ]
    for output in outputs:
        too_wide = [line for line in output.splitlines() if len(line) > WIDTH]
        assert not too_wide, too_wide
    assert lines_with(outputs[3], "orphan whose parent")[0].endswith("…")  # a span name may be cut, an id never


def test_an_80_column_terminal_drops_columns_rather_than_cut_an_id(long_ids: LongIds) -> None:
    listing = on_terminal(long_ids, "rollouts", "list")
    assert listing.splitlines()[0].split() == ["rollout", "status", "mode", "attempts", "duration"]
    (trace,) = lines_with(listing, TRACE_ROLLOUT)
    assert trace.split()[:4] == [TRACE_ROLLOUT, "succeeded", "-", "2"]
    (proc,) = lines_with(listing, PROC_ROLLOUT)
    assert proc.split()[:4] == [PROC_ROLLOUT, "preparing", "train", "1"]
    shown = on_terminal(long_ids, "rollouts", "show", TRACE_ROLLOUT)
    assert lines_with(shown, "worker")[0].split() == ["#", "attempt", "status", "worker", "took"]
    for attempt_id, status in zip(long_ids.attempts, ["timeout", "succeeded"], strict=True):
        (line,) = lines_with(shown, attempt_id)
        assert line.split()[1:4] == [attempt_id, status, WORKER]  # the worker id whole, on its row


def test_piped_output_is_plain_text_with_nothing_cut(long_ids: LongIds) -> None:
    """Not on a terminal (``| cat``, a file) every column and every value is printed in full, however
    wide: $COLUMNS says 80 here, as a terminal on stdin would."""
    listing = ok(long_ids, "rollouts", "list")
    assert listing.splitlines()[0].split() == ["rollout", "status", "mode", "attempts", "started", "duration"]
    (trace,) = lines_with(listing, TRACE_ROLLOUT)
    assert trace.split()[:4] == [TRACE_ROLLOUT, "succeeded", "-", "2"]
    shown = ok(long_ids, "rollouts", "show", TRACE_ROLLOUT)
    assert lines_with(shown, "worker")[0].split() == [
        "#",
        "attempt",
        "status",
        "worker",
        "started",
        "took",
        "heartbeat",
    ]
    for attempt_id in long_ids.attempts:
        (line,) = lines_with(shown, attempt_id)
        assert line.split()[3] == WORKER and line.rstrip().endswith("ago")
    tree = ok(long_ids, "spans", TRACE_ROLLOUT).splitlines()
    assert tree[0] == f"{TRACE_ROLLOUT} · attempt 2 ({long_ids.attempts[1]}) · succeeded"
    assert tree[1] == f"├── read task  10 ms  ERROR {MISSING}"


def test_the_installed_console_script(filled: Filled) -> None:
    script = Path(sys.executable).with_name("agl")
    assert script.exists(), f"no console script next to {sys.executable}"
    env = {"COLUMNS": str(WIDTH), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [script, "rollouts", "list", "--store", filled.url], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert filled.retried in done.stdout and done.stdout.splitlines()[-1] == "showing 1\N{EN DASH}7 of 7"
    bad = subprocess.run(
        [script, "stats", "--store", "nowhere://x"], capture_output=True, text=True, env=env, timeout=60
    )
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("error: invalid store URL") and bad.stderr.count("\n") == 1


def test_installed_packages_add_commands_through_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    import agl.core.cli as cli_module

    @dataclass
    class FakeEntryPoint:
        name: str
        value: str
        target: Any

        def load(self) -> Any:
            if isinstance(self.target, Exception):
                raise self.target
            return self.target

    def hello(root: typer.Typer) -> None:
        root.command("hello")(lambda: typer.echo("hello from a plugin"))

    plugins = [
        FakeEntryPoint("broken", "agl.nowhere:add", ModuleNotFoundError("No module named 'agl.nowhere'")),
        FakeEntryPoint("hello", "plugin:add", hello),
    ]
    monkeypatch.setattr(cli_module, "entry_points", lambda group: plugins)
    root = typer.Typer(no_args_is_help=True)
    root.command("stats")(lambda: None)
    assert cli_module.add_plugin_commands(root) == ["broken"]  # reported, not fatal
    result = CliRunner().invoke(root, ["hello"])
    assert result.exit_code == 0 and "hello from a plugin" in result.output
