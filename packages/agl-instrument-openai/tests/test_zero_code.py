"""Zero code, end to end: ``examples/openai_agent.py`` (plain openai, no agl import) run by a real
``opentelemetry-instrument`` against the scripted chat server, its spans stored three ways: in a
SQLite file, through the store server (agl's HTTP client), and to the store server over plain OTLP."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest

from agl.core.store import LightningStore, SqliteLightningStore
from agl.core.store.http import HttpLightningStore
from agl.core.testing import ranks
from agl.core.testing.chat_server import Reply, ToolCall
from agl.core.tracing import semconv
from agl.core.types import Rollout, Span

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "openai_agent.py"
BIN = Path(sys.executable).parent
TOKEN = "zero-code-secret"
MODEL = "agl-toy"
SCRIPT = [Reply(tool_calls=[ToolCall("add", {"a": 17, "b": 25})]), "17 + 25 = 42.", "Hello!"]


def clean_environment(**env: str) -> dict[str, str]:
    """This process's environment without its OpenTelemetry, agl and OpenAI settings, plus ``env``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGL_", "OPENAI_"))}
    return {**inherited, **env}


@contextmanager
def store_server(db: Path, log: Path) -> Iterator[str]:
    """``agl store serve`` over ``db`` with a token, as a child process; yields its URL once it answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "agl.core.cli",
        "store",
        "serve",
        "--store",
        f"sqlite:///{db}",
        "--port",
        str(port),
    ]
    with log.open("w") as output:
        process = subprocess.Popen(command, env=clean_environment(AGL_STORE_TOKEN=TOKEN), stdout=output, stderr=output)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(read(url, lambda store: store.statistics()))  # the client retries until the server listens
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def open_store(url: str) -> LightningStore:
    if url.startswith("sqlite:///"):
        return SqliteLightningStore(url.removeprefix("sqlite:///"), watchdog_interval=None)
    return HttpLightningStore(url, token=TOKEN)


async def read(url: str, query: Any) -> Any:
    store = open_store(url)
    try:
        return await query(store)
    finally:
        await store.close()


async def rollouts_and_spans(url: str) -> tuple[list[Rollout], list[Span]]:
    async def query(store: LightningStore) -> tuple[list[Rollout], list[Span]]:
        rollouts = list(await store.query_rollouts())
        return rollouts, list(await store.query_spans(rollouts[0].rollout_id)) if rollouts else []

    return await read(url, query)


@pytest.mark.parametrize("route", ["sqlite", "store-server", "otlp_proto_http", "otlp"])
def test_an_unchanged_openai_program_is_traced_into_the_store(route: str, tmp_path: Path, serve) -> None:
    """``route``: where the spans go: a SQLite file, the store server through agl's exporter, or
    the store server's OTLP endpoint through the OTLP exporter named ``route``."""
    served = serve(SCRIPT)
    db = tmp_path / "store.db"
    agent = clean_environment(
        OPENAI_BASE_URL=served.url, OPENAI_API_KEY="test", AGL_CAPTURE_TOKEN_IDS="1", AGL_STORE_TOKEN=TOKEN
    )
    store: AbstractContextManager[str] = (
        nullcontext(f"sqlite:///{db}") if route == "sqlite" else store_server(db, tmp_path / "server.log")
    )
    with store as store_url:
        agent["AGL_STORE"] = store_url
        if route.startswith("otlp"):
            agent |= {
                "OTEL_TRACES_EXPORTER": route,
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{store_url}/v1/traces",
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS": f"authorization=Bearer%20{TOKEN}",
            }
        done = subprocess.run(
            [str(BIN / "opentelemetry-instrument"), sys.executable, str(EXAMPLE)],
            env=agent,
            cwd=tmp_path,  # a store opened by mistake at the default path would land here, not in the repository
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["17 + 25 = 42.", "Hello!"]
        (rollout,), spans = asyncio.run(rollouts_and_spans(store_url))
        cli = subprocess.run(
            [sys.executable, "-m", "agl.core.cli", "spans", rollout.rollout_id, "--store", store_url],
            env=clean_environment(AGL_STORE_TOKEN=TOKEN),
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert rollout.rollout_id.startswith("ro-proc-") and rollout.metadata["observed"] is True
    # The program's exit span reaches the store whatever carried the others, and ends the rollout.
    assert rollout.status == "succeeded"
    *calls, exit_span = spans
    assert (exit_span.name, exit_span.attributes[semconv.PROCESS_OUTCOME]) == (semconv.PROCESS_EXIT_SPAN, "succeeded")
    # Three model calls (the tool call, the answer after the tool result, the streamed greeting),
    # each its own root: the program opens no span around them.
    assert [span.name for span in calls] == [f"chat {MODEL}"] * 3 and ranks(s.sequence_id for s in calls) == [1, 2, 3]
    assert all(span.attributes[semconv.LLM_CALL] is True and span.parent_id is None for span in calls)
    spans = calls
    for span, request, sent in zip(spans, served.log.requests, served.log.replies, strict=True):
        assert request["return_token_ids"] is True
        assert json.loads(span.attributes[semconv.INPUT_MESSAGES]) == request["messages"]
        (message,) = json.loads(span.attributes[semconv.OUTPUT_MESSAGES])
        assert (message["content"], message.get("tool_calls", [])) == (sent.content, sent.tool_calls)
        assert span.attributes[semconv.PROMPT_TOKEN_IDS] == sent.prompt_token_ids
        assert span.attributes[semconv.RESPONSE_TOKEN_IDS] == sent.token_ids
        assert span.attributes[semconv.RESPONSE_LOGPROBS] == sent.logprobs
    assert served.log.requests[1]["messages"][-1] == {"role": "tool", "tool_call_id": "call-1", "content": "42"}

    assert cli.returncode == 0, cli.stderr
    assert rollout.rollout_id in cli.stdout and rollout.status in cli.stdout
    assert cli.stdout.count(f"chat {MODEL}") == 3 and f"LLM {MODEL} (" in cli.stdout
    assert "4 spans · 3 LLM calls" in cli.stdout
