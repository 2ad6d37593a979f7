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


AGENT_SPAN = """
import sys, threading
from opentelemetry import trace
with trace.get_tracer("app").start_as_current_span("agent"):
    pass
"""
SWALLOWED = """
def main():
    try:
        sys.exit(1)
    except SystemExit:
        pass  # a retry loop, a test harness: the program goes on
main()
"""
IN_A_THREAD = """
thread = threading.Thread(target=sys.exit, args=(1,))
thread.start()
thread.join()
"""
SHUT_DOWN_IN_FINALLY = """
try:
    raise SystemExit(STATUS)
finally:
    trace.get_tracer_provider().shutdown()
"""


def run_observed(tmp_path: Path, script: str, *args: str, as_module: bool = False) -> tuple[int, str]:
    """Run ``script`` under ``opentelemetry-instrument`` (``python -c``, or ``python -m`` as a
    package's ``__main__``); its exit status and its rollout's status."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGL_"))}
    if as_module:
        package = tmp_path / "observed_program"
        package.mkdir()
        (package / "__main__.py").write_text(AGENT_SPAN + script)
        program = ["-m", package.name]
    else:
        program = ["-c", AGENT_SPAN + script]
    process = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, *program, *args],
        env={**environment, "AGL_STORE": f"sqlite:///{tmp_path}/store.db"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    ((rollout, spans),) = stored(tmp_path / "store.db")
    assert [s.name for s in spans] == ["agent", semconv.PROCESS_EXIT_SPAN], process.stderr
    assert spans[1].attributes[semconv.PROCESS_OUTCOME] == rollout.status
    return process.returncode, rollout.status


@pytest.mark.parametrize(
    ("script", "returncode", "status"),
    [
        ("sys.exit(1)", 1, "failed"),
        ("sys.exit('cannot read the config')", 1, "failed"),
        ("sys.exit(True)", 1, "failed"),
        ("import argparse; argparse.ArgumentParser().parse_args(['--nope'])", 2, "failed"),
        ("exit(3)", 3, "failed"),
        ("sys.exit(0)", 0, "succeeded"),
        ("sys.exit()", 0, "succeeded"),
        (SWALLOWED, 0, "succeeded"),
        (IN_A_THREAD, 0, "succeeded"),
    ],
    ids=["one", "message", "true", "argparse", "builtin-exit", "zero", "none", "caught", "thread"],
)
def test_an_observed_rollout_that_exits_with_a_failing_status_is_failed(
    tmp_path: Path, script: str, returncode: int, status: str
) -> None:
    """``sys.exit(1)`` (argparse's error, click's exit code) used to be recorded a success: at exit
    CPython has handled the `SystemExit` and its status is gone. The exit call is watched now;
    one that only ends a thread, or that the program caught and went on from, is no failure."""
    assert run_observed(tmp_path, script) == (returncode, status)


@pytest.mark.parametrize(("exit_status", "status"), [(2, "failed"), (0, "succeeded"), (None, "succeeded")])
def test_a_provider_shut_down_while_a_system_exit_propagates_takes_its_status(
    tmp_path: Path, exit_status: int | None, status: str
) -> None:
    """Shut down in a ``finally:`` on the way out, the `SystemExit` in flight says how it ends,
    even one raised directly (no ``sys.exit`` call to watch)."""
    script = SHUT_DOWN_IN_FINALLY.replace("STATUS", str(exit_status))
    assert run_observed(tmp_path, script) == (exit_status or 0, status)


CAUGHT_THEN_RAISED = """
def main():
    try:
        sys.exit(1)
    except SystemExit:
        return 0  # caught: main ends well
raise SystemExit(main())  # as python -m pytest's __main__ ends
"""


@pytest.mark.parametrize(
    ("script", "returncode", "status"),
    [("sys.exit(1)", 1, "failed"), (CAUGHT_THEN_RAISED, 0, "succeeded")],
    ids=["exit", "caught-then-raised"],
)
def test_under_python_m_an_exit_counts_as_in_a_script(
    tmp_path: Path, script: str, returncode: int, status: str
) -> None:
    """Under ``python -m`` the outermost frame is runpy's, which never moves while the program
    runs: an exit the program caught still counted, so a run that exited 0 was failed."""
    assert run_observed(tmp_path, script, as_module=True) == (returncode, status)
