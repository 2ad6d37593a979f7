"""Zero code, end to end: ``examples/openai_agents_agent.py`` (the Agents SDK, no agl import) run by
a real ``opentelemetry-instrument``, its spans checked in the SQLite store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from agl.core.store import SqliteLightningStore
from agl.core.tracing import semconv

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "openai_agents_agent.py"
BIN = Path(sys.executable).parent


def clean_environment(**env: str) -> dict[str, str]:
    """This process's environment without OpenTelemetry, agl and OpenAI settings (no API key: the
    SDK's own exporter then uploads nothing), plus ``env``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGL_", "OPENAI_"))}
    return {**inherited, **env}


async def stored(db: Path) -> tuple[list, list]:
    store = SqliteLightningStore(str(db), watchdog_interval=None)
    try:
        rollouts = list(await store.query_rollouts())
        return rollouts, list(await store.query_spans(rollouts[0].rollout_id))
    finally:
        await store.close()


def test_an_unchanged_agents_sdk_program_is_traced_into_the_store(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    done = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, str(EXAMPLE)],
        # OpenInference's Agents SDK instrumentor is installed here too (entry point `openai_agents`):
        # switched off the documented way, so only agl's spans are checked.
        env=clean_environment(AGL_STORE=f"sqlite:///{db}", OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="openai_agents"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "17 + 25 = 42."
    (rollout,), spans = asyncio.run(stored(db))
    assert rollout.status == "succeeded" and rollout.metadata["observed"] is True

    by_id = {span.span_id: span for span in spans}
    tree = [(s.name, by_id[s.parent_id].name if s.parent_id in by_id else None) for s in spans]
    assert tree == [
        ("invoke_workflow Agent workflow", None),
        ("invoke_agent calculator", "invoke_workflow Agent workflow"),
        ("chat CalculatorModel", "invoke_agent calculator"),
        ("execute_tool add", "invoke_agent calculator"),
        ("chat CalculatorModel", "invoke_agent calculator"),
        (semconv.PROCESS_EXIT_SPAN, None),
    ]
    first, second = (s for s in spans if s.attributes.get(semconv.LLM_CALL))
    assert first.attributes[semconv.AGENT_NAME] == "calculator"
    assert json.loads(second.attributes[semconv.INPUT_MESSAGES])[-1] == {
        "role": "tool",
        "tool_call_id": "call-1",
        "content": "42",
    }
    assert json.loads(second.attributes[semconv.OUTPUT_MESSAGES]) == [{"role": "assistant", "content": "17 + 25 = 42."}]
    tool = next(s for s in spans if s.name == "execute_tool add")
    assert tool.attributes[semconv.TOOL_CALL_RESULT] == "42" and tool.attributes[semconv.TOOL_CALL_ID] == "call-1"
