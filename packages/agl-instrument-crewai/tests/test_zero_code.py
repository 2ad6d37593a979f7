"""Zero code, end to end: ``examples/crewai_agent.py`` (plain CrewAI, no agl import) run by a real
``opentelemetry-instrument`` with this environment's python, its spans read back from the SQLite store."""

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
EXAMPLE = ROOT / "examples" / "crewai_agent.py"
BIN = Path(sys.executable).parent


async def stored(db: Path) -> tuple[list, list]:
    store = SqliteLightningStore(str(db), watchdog_interval=None)
    try:
        rollouts = list(await store.query_rollouts())
        return rollouts, list(await store.query_spans(rollouts[0].rollout_id)) if rollouts else []
    finally:
        await store.close()


def test_an_unchanged_crew_is_traced_into_the_store(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGL_", "OPENAI_"))}
    env |= {"AGL_STORE": f"sqlite:///{db}", "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "crewai"}  # not OpenInference
    done = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, str(EXAMPLE)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "17 + 25 = 42."

    (rollout,), spans = asyncio.run(stored(db))
    assert rollout.metadata["observed"] is True and rollout.status == "succeeded"
    *spans, exit_span = spans
    assert exit_span.name == semconv.PROCESS_EXIT_SPAN
    names = {span.span_id: span.name for span in spans}
    assert [(span.name, names.get(span.parent_id)) for span in spans] == [
        ("invoke_workflow adder", None),
        ("task What is 17 + 25?", "invoke_workflow adder"),
        ("invoke_agent Calculator", "task What is 17 + 25?"),
        ("chat scripted-model", "invoke_agent Calculator"),
        ("execute_tool add", "invoke_agent Calculator"),
        ("chat scripted-model", "invoke_agent Calculator"),
    ]
    first, second = spans[3], spans[5]
    assert first.attributes[semconv.AGENT_NAME] == "Calculator" and first.attributes[semconv.LLM_CALL] is True
    assert json.loads(first.attributes[semconv.INPUT_MESSAGES])[0]["content"].startswith("You are Calculator.")
    assert "Final Answer: 17 + 25 = 42." in json.loads(second.attributes[semconv.OUTPUT_MESSAGES])[0]["content"]
    assert json.loads(spans[4].attributes[semconv.TOOL_CALL_ARGUMENTS]) == {"a": 17, "b": 25}
    assert spans[4].attributes[semconv.TOOL_CALL_RESULT] == "42"
