"""The tracing runtime where the program does something unusual: exits while its store is gone,
forks, emits rewards no store can keep. Zero-code cases run real ``opentelemetry-instrument``
subprocesses, as in test_tracing.py."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agl.core.store import SqliteLightningStore
from agl.core.tracing import semconv
from agl.core.tracing.emitters import emit_reward

BIN = Path(sys.executable).parent


def instrumented(script: str, store_url: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGL_"))}
    return subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, "-c", textwrap.dedent(script)],
        env={**environment, "AGL_STORE": store_url},
        capture_output=True,
        text=True,
        timeout=120,
    )


def stored(path: Path) -> list[tuple[Any, list[Any]]]:
    """Every rollout of the store at ``path`` with its spans."""

    async def read() -> list[tuple[Any, list[Any]]]:
        store = SqliteLightningStore(path, watchdog_interval=None)
        try:
            rollouts = await store.query_rollouts()
            return [(rollout, list(await store.query_spans(rollout.rollout_id))) for rollout in rollouts]
        finally:
            await store.close()

    return asyncio.run(read())


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_program_whose_store_is_gone_exits_with_a_warning_instead_of_waiting_out_the_retries() -> None:
    script = """
        from opentelemetry import trace
        with trace.get_tracer("app").start_as_current_span("agent"):
            pass
        print("the program's own output", flush=True)
    """
    done = instrumented(script, f"http://127.0.0.1:{closed_port()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "the program's own output\n"
    assert "agl could not store" in done.stderr and "agl stopped waiting for its store" in done.stderr
    assert "gave up after" not in done.stderr  # the HTTP store's 30 s of retries were not waited out


def test_a_forked_child_s_spans_arrive_and_only_the_parent_ends_the_observed_rollout(tmp_path: Path) -> None:
    script = """
        import multiprocessing, os, sys
        from opentelemetry import trace
        tracer = trace.get_tracer("app")

        def work(name):
            tracer.start_span(name).end()

        tracer.start_span("parent before").end()
        child = os.fork()
        if child == 0:  # a plain fork: the child ends through atexit
            work("forked child")
            sys.exit(0)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        worker = multiprocessing.get_context("fork").Process(target=work, args=("multiprocessing child",))
        worker.start()  # multiprocessing's child ends with os._exit: no atexit
        worker.join()
        assert worker.exitcode == 0
        tracer.start_span("parent after").end()
    """
    done = instrumented(script, f"sqlite:///{tmp_path / 'store.db'}")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "agl could not store" not in done.stderr, done.stderr
    [(rollout, spans)] = stored(tmp_path / "store.db")
    names = sorted(span.name for span in spans)
    assert names == sorted(
        ["parent before", "forked child", "multiprocessing child", "parent after", semconv.PROCESS_EXIT_SPAN]
    )
    assert rollout.status == "succeeded"


def test_a_forked_child_s_store_bridge_opens_its_own_store_and_refuses_the_parent_s(tmp_path: Path) -> None:
    script = """
        import os, sys
        from agl.core.bridge import StoreBridge
        from agl.core.store import SqliteLightningStore

        opened = []

        def opener():
            opened.append(SqliteLightningStore(sys.argv[1], watchdog_interval=None))
            return opened[-1]

        own, given = StoreBridge(opener=opener), StoreBridge(SqliteLightningStore(sys.argv[1], watchdog_interval=None))
        own.call(lambda store: store.enqueue_rollout("parent"))
        given.call(lambda store: store.enqueue_rollout("parent, given store"))
        child = os.fork()
        if child == 0:
            own.call(lambda store: store.enqueue_rollout("child"), timeout=30)
            try:
                given.call(lambda store: store.enqueue_rollout("child, given store"), timeout=30)
            except RuntimeError as error:
                print("refused:", error)
            print("stores opened:", len(opened), flush=True)
            own.close()
            os._exit(0)
        _, status = os.waitpid(child, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    """
    path = tmp_path / "store.db"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "refused: agl cannot use a store opened before this process forked (its connections are the parent's)",
        "stores opened: 2",
    ]
    assert sorted(rollout.input for rollout, _ in stored(path)) == ["child", "parent", "parent, given store"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400], ids=["nan", "inf", "-inf", "10**400"])
def test_a_reward_no_store_can_keep_raises_before_anything_is_emitted(
    captured_spans: InMemorySpanExporter, value: Any
) -> None:
    with pytest.raises(ValueError, match="a reward must be a finite number"):
        emit_reward(value)
    with pytest.raises(ValueError, match="a reward must be a finite number"):
        emit_reward({"correct": value, "brevity": 0.5}, primary="brevity")
    assert captured_spans.get_finished_spans() == ()
