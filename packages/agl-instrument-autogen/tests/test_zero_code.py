"""Zero code, end to end: ``examples/autogen_agent.py`` (AutoGen only, no agl import) run by a
real ``opentelemetry-instrument`` against the scripted chat server, its spans read back from the
SQLite store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from agl.core.store import SqliteLightningStore
from agl.core.testing.chat_server import Reply, ToolCall
from agl.core.tracing import semconv
from agl.core.types import Rollout, Span

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "autogen_agent.py"
BIN = Path(sys.executable).parent
SCRIPT = [Reply(tool_calls=[ToolCall("add", {"a": 17, "b": 25})]), "17 + 25 = 42."]


def clean_environment(**env: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGL_", "OPENAI_"))}
    return {**inherited, **env}


async def rollouts_and_spans(db: Path) -> tuple[list[Rollout], list[Span]]:
    store = SqliteLightningStore(str(db), watchdog_interval=None)
    try:
        rollouts = list(await store.query_rollouts())
        return rollouts, list(await store.query_spans(rollouts[0].rollout_id)) if rollouts else []
    finally:
        await store.close()


def test_an_unchanged_autogen_program_is_traced_into_the_store(tmp_path: Path, serve) -> None:
    served = serve(SCRIPT)
    db = tmp_path / "store.db"
    done = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, str(EXAMPLE)],
        env=clean_environment(
            OPENAI_BASE_URL=served.url,
            OPENAI_API_KEY="test",
            AGL_CAPTURE_TOKEN_IDS="1",
            AGL_STORE=f"sqlite:///{db}",
            # OpenInference's AutoGen instrumentor, installed for the coexistence tests, stays out.
            OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="autogen_agentchat",
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["17 + 25 = 42."]
    (rollout,), spans = asyncio.run(rollouts_and_spans(db))
    assert rollout.rollout_id.startswith("ro-proc-") and rollout.status == "succeeded"

    by_id = {span.span_id: span for span in spans}
    parent = {span.name: by_id[span.parent_id].name if span.parent_id in by_id else None for span in spans}
    (agent,) = [span for span in spans if span.name == "invoke_agent calculator"]
    assert agent.attributes[semconv.AGENT_NAME] == "calculator"
    (tool,) = [span for span in spans if span.name == "execute_tool add"]
    assert parent["execute_tool add"] == "invoke_agent calculator"
    assert (tool.attributes[semconv.TOOL_CALL_RESULT], tool.attributes[semconv.TOOL_CALL_ID]) == ("42", "call-1")
    calls = [span for span in spans if span.attributes.get(semconv.LLM_CALL) is True]
    assert [span.name for span in calls] == ["chat agl-toy"] * 2 == ["chat agl-toy"] * len(served.log.requests)
    for span, request, sent in zip(calls, served.log.requests, served.log.replies, strict=True):
        assert by_id[span.parent_id].name == "invoke_agent calculator"
        assert span.attributes[semconv.AGENT_NAME] == "calculator"
        assert request["return_token_ids"] is True
        assert span.attributes[semconv.PROMPT_TOKEN_IDS] == sent.prompt_token_ids
        assert span.attributes[semconv.RESPONSE_TOKEN_IDS] == sent.token_ids
        (message,) = json.loads(span.attributes[semconv.OUTPUT_MESSAGES])
        assert (message["content"], message.get("tool_calls", [])) == (sent.content, sent.tool_calls)
    assert spans[-1].name == semconv.PROCESS_EXIT_SPAN
