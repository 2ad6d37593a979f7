"""How a zero-code program's observed rollout ends when the program shuts its tracer provider down
itself, as OpenTelemetry's own examples end, instead of leaving it to the provider's exit hook.
Real ``opentelemetry-instrument`` subprocesses over a SQLite store."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agl.core.store import SqliteLightningStore
from agl.core.tracing import semconv

BIN = Path(sys.executable).parent

SHUTS_DOWN_ITSELF = """
    from opentelemetry import trace
    with trace.get_tracer("app").start_as_current_span("agent"):
        pass
    try:
        if CRASH:
            raise RuntimeError("the agent crashed")
    finally:
        trace.get_tracer_provider().shutdown()
"""


def stored(path: Path) -> list[tuple[Any, list[Any]]]:
    async def read() -> list[tuple[Any, list[Any]]]:
        store = SqliteLightningStore(path, watchdog_interval=None)
        try:
            return [(r, list(await store.query_spans(r.rollout_id))) for r in await store.query_rollouts()]
        finally:
            await store.close()

    return asyncio.run(read())


@pytest.mark.parametrize("crash", [False, True])
def test_a_program_that_shuts_its_provider_down_still_ends_its_observed_rollout(tmp_path: Path, crash: bool) -> None:
    """The exit span used to be sent at exit, after the exporters had stopped: the rollout stayed
    running for ever. It now goes out as the provider shuts down, failed if an exception is on its way."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGL_"))}
    script = textwrap.dedent(SHUTS_DOWN_ITSELF).replace("CRASH", str(crash))
    process = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, "-c", script],
        env={**environment, "AGL_STORE": f"sqlite:///{tmp_path}/store.db"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == (1 if crash else 0), process.stderr
    ((rollout, spans),) = stored(tmp_path / "store.db")
    assert rollout.status == ("failed" if crash else "succeeded")
    assert [s.name for s in spans] == ["agent", semconv.PROCESS_EXIT_SPAN]  # sent once, not again at exit
    assert spans[1].attributes[semconv.PROCESS_OUTCOME] == rollout.status
