"""Zero code, end to end: ``examples/langchain_agent.py`` (LangGraph + ChatOpenAI, no agl import)
run by a real ``opentelemetry-instrument`` against the scripted chat server, its spans read back
from the SQLite store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from agl.core.store import SqliteLightningStore
from agl.core.testing.chat_server import Reply, ToolCall, chat_log, chat_server_app
from agl.core.testing.server import ServingThread
from agl.core.tracing import semconv

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "langchain_agent.py"
BIN = Path(sys.executable).parent
MODEL = "agl-toy"


def clean_environment(**env: str) -> dict[str, str]:
    """This process's environment without its OpenTelemetry, agl and OpenAI settings, plus ``env``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGL_", "OPENAI_"))}
    return {**inherited, **env}


async def stored_spans(db: Path) -> tuple[list, list]:
    store = SqliteLightningStore(str(db), watchdog_interval=None)
    try:
        rollouts = list(await store.query_rollouts())
        return rollouts, list(await store.query_spans(rollouts[0].rollout_id))
    finally:
        await store.close()


def test_an_unchanged_langgraph_program_is_traced_into_the_store(tmp_path: Path) -> None:
    app = chat_server_app([Reply(tool_calls=[ToolCall("add", {"a": 17, "b": 25})]), "17 + 25 = 42."])
    db = tmp_path / "store.db"
    with ServingThread(app) as server:
        env = clean_environment(
            OPENAI_BASE_URL=f"{server.url}/v1",
            OPENAI_API_KEY="test",
            AGL_CAPTURE_TOKEN_IDS="1",
            AGL_STORE=f"sqlite:///{db}",
            # OpenInference's LangChain instrumentor is installed here too: the documented switch keeps ours alone.
            OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="langchain",
        )
        done = subprocess.run(
            [str(BIN / "opentelemetry-instrument"), sys.executable, str(EXAMPLE)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["17 + 25 = 42."]
    (rollout,), spans = asyncio.run(stored_spans(db))
    assert rollout.rollout_id.startswith("ro-proc-") and rollout.status == "succeeded"
    assert not [s for s in spans if "openinference.span.kind" in s.attributes]

    names = {span.span_id: span.name for span in spans}
    shape = [(span.name, names.get(span.parent_id or "")) for span in spans if span.name != semconv.PROCESS_EXIT_SPAN]
    assert [entry for entry in shape if not entry[0].startswith(("POST", "GET"))] == [
        ("invoke_workflow calculator", None),
        ("invoke_agent calculator", "invoke_workflow calculator"),
        (f"chat {MODEL}", "invoke_agent calculator"),
        ("execute_tool add", "invoke_workflow calculator"),
        ("invoke_agent calculator", "invoke_workflow calculator"),
        (f"chat {MODEL}", "invoke_agent calculator"),
    ]
    calls = [span for span in spans if span.attributes.get(semconv.LLM_CALL)]
    log = chat_log(app)
    for call, sent in zip(calls, log.replies, strict=True):
        assert call.attributes[semconv.AGENT_NAME] == "calculator"
        assert call.attributes[semconv.PROMPT_TOKEN_IDS] == sent.prompt_token_ids
        assert call.attributes[semconv.RESPONSE_TOKEN_IDS] == sent.token_ids
    (executed,) = [span for span in spans if span.name == "execute_tool add"]
    assert json.loads(executed.attributes[semconv.TOOL_CALL_ARGUMENTS]) == {"a": 17, "b": 25}
    assert executed.attributes[semconv.TOOL_CALL_RESULT] == "42"
    assert executed.attributes[semconv.TOOL_CALL_ID] == log.replies[0].tool_calls[0]["id"]
