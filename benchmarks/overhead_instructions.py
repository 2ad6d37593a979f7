"""Instructions per agent run, uninstrumented / agl / OpenInference, for the fake-model agents of
the ``overhead_*.py`` scripts, counted by valgrind's callgrind.

    python benchmarks/overhead_instructions.py --framework langchain [--runs 50]   # autogen, openai_agents
    .venvs/crewai/bin/python benchmarks/overhead_instructions.py --framework crewai

Why instructions: on a machine shared with other work, wall-clock and even CPU seconds of a
2-4 ms agent run move by tens of percent between blocks; the number of instructions a run
executes does not move at all. It is not time (cache misses and branch mispredictions are not
counted), so these figures complement the timed scripts rather than replace them.

The script re-runs itself under ``valgrind --tool=callgrind`` (valgrind must be installed; it is
not a Python package). In that child, each variant is switched on, warmed up, and its ``--runs``
runs are framed by two counter dumps (``callgrind_control --dump``), so start-up and imports are
not counted. Before each first dump the garbage collector runs and freezes what is left, and the
hash seed is fixed: repeated runs then agree within ~0.3% (3 to 40 k instructions). Every variant
records into the same tracer provider as in the timed scripts. A fourth variant, "bare spans"
(counted second, right after the uninstrumented one), runs the uninstrumented agent and then
opens and ends, directly, as many spans as agl adds to a run (the spans a framework records
itself, AutoGen's, are not counted twice): what span creation alone costs in that provider, the
floor under any instrumentor that records those spans. A fifth, "agl's spans replayed", does the
same with the very spans agl recorded in one run, names and attributes (messages, tool arguments
and results) computed beforehand: what storing agl's content in the spans adds to that floor.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import SpanProcessor

from agl.core.tracing.semconv import ATTEMPT_ID, ROLLOUT_ID, SEQUENCE_ID

HERE = Path(__file__).resolve().parent
Variant = tuple[Callable[[], None], Callable[[], None]]


def _provider() -> Any:
    """Every variant's provider: agl's processor, then an exporter that keeps no span."""
    from dropping_exporter import DroppingExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from agl.core.tracing.context import ActiveRollout
    from agl.core.tracing.processor import RolloutSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(RolloutSpanProcessor(ActiveRollout("ro-bench", "at-bench")))
    provider.add_span_processor(SimpleSpanProcessor(DroppingExporter()))
    return provider


def _pair(instrumentor: Any, **options: Any) -> Variant:
    return (lambda: instrumentor.instrument(**options), instrumentor.uninstrument)


Setup = tuple[Callable[[int], None], dict[str, Variant], Any]
"""(run n agents, the instrumented variants, the tracer provider they record into)."""


def langchain() -> Setup:
    import overhead_langchain as bench

    provider = _provider()
    agent, question = bench.build(), {"messages": [bench.HumanMessage("What is 1 + 2?")]}

    def run(n: int) -> None:
        for _ in range(n):
            agent.invoke(question)

    ours, theirs = bench.LangChainInstrumentor(), bench.OpenInferenceInstrumentor()
    variants = {"agl": _pair(ours, tracer_provider=provider), "openinference": _pair(theirs, tracer_provider=provider)}
    return run, variants, provider


def autogen() -> Setup:
    import overhead_autogen as bench
    from opentelemetry import trace

    provider = _provider()
    trace.set_tracer_provider(provider)  # AutoGen's own spans go there in every variant
    ours, theirs = bench.AutoGenInstrumentor(), bench.AutogenAgentChatInstrumentor()
    return lambda n: asyncio.run(bench.block(n)), {"agl": _pair(ours), "openinference": _pair(theirs)}, provider


def openai_agents() -> Setup:
    import overhead_openai_agents as bench

    provider = _provider()
    ours, theirs = bench.OpenAIAgentsInstrumentor(), bench.OpenInference()
    variants = {"agl": _pair(ours, tracer_provider=provider), "openinference": _pair(theirs, tracer_provider=provider)}
    return lambda n: asyncio.run(bench.batch(n)), variants, provider


def crewai() -> Setup:
    import overhead_crewai as bench

    provider = _provider()

    def run(n: int) -> None:
        for _ in range(n):
            bench.run_crew()

    ours, theirs = bench.CrewAIInstrumentor(), bench.OpenInferenceCrewAI()
    variants = {"agl": _pair(ours, tracer_provider=provider), "openinference": _pair(theirs, tracer_provider=provider)}
    return run, variants, provider


FRAMEWORKS = {"langchain": langchain, "autogen": autogen, "openai_agents": openai_agents, "crewai": crewai}
VARIANTS = ("uninstrumented", "agl", "openinference", "bare spans", "agl's spans replayed")
BARE_ATTRIBUTES = {
    "agl.llm.call": True,
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "fake",
    "gen_ai.provider.name": "openai",
    "agl.agent.name": "agent",
}


class SpanCounter(SpanProcessor):
    """Counts the spans a provider ends."""

    def __init__(self) -> None:
        self.ended = 0

    def on_end(self, span: Any) -> None:
        self.ended += 1


def with_bare_spans(run: Callable[[int], None], provider: Any, per_run: int) -> Callable[[int], None]:
    """The uninstrumented agent, plus as many spans as agl makes in its runs, opened and ended
    directly with five attributes: the floor that span creation alone puts under any instrumentor
    recording into this provider."""
    tracer = provider.get_tracer("bare")

    def bare(n: int) -> None:
        run(n)
        for _ in range(n * per_run):
            tracer.start_span("chat fake", attributes=BARE_ATTRIBUTES).end()

    return bare


ROLLOUT_KEYS = {ROLLOUT_ID, ATTEMPT_ID, SEQUENCE_ID}
"""Set on every span by agl's processor, which every variant's provider has."""


Recorded = list[tuple[str, dict[str, Any]]]
"""Spans as (name, attributes)."""


class SpanRecorder(SpanProcessor):
    """Keeps the name and attributes of every span that agl's instrumentors end, while recording."""

    def __init__(self) -> None:
        self.spans: Recorded = []
        self.recording = True

    def on_end(self, span: Any) -> None:
        scope = span.instrumentation_scope
        if self.recording and scope is not None and scope.name.startswith("agl."):
            attributes = {key: value for key, value in (span.attributes or {}).items() if key not in ROLLOUT_KEYS}
            self.spans.append((span.name, attributes))


def with_replayed_spans(run: Callable[[int], None], provider: Any, spans: Recorded) -> Callable[[int], None]:
    """The uninstrumented agent, plus the very spans agl records in a run (names and attributes,
    computed once beforehand), opened and ended directly: what recording agl's content costs in
    this provider, the floor under any instrumentor that records as much as agl does."""
    tracer = provider.get_tracer("replayed")

    def replayed(n: int) -> None:
        run(n)
        for _ in range(n):
            for name, attributes in spans:
                tracer.start_span(name, attributes=attributes).end()

    return replayed


def spans_per_run(run: Callable[[int], None], counter: SpanCounter) -> int:
    before = counter.ended
    run(1)
    return counter.ended - before


def child(framework: str, runs: int) -> None:
    """Under callgrind: each variant's runs between two counter dumps named after it."""
    sys.path.insert(0, str(HERE))
    run, instrumented, provider = FRAMEWORKS[framework]()
    counter = SpanCounter()
    provider.add_span_processor(counter)
    run(1)  # first-run paths
    framework_spans = spans_per_run(run, counter)  # AutoGen records spans of its own
    recorder = SpanRecorder()
    provider.add_span_processor(recorder)
    on, off = instrumented["agl"]
    on()
    try:
        run(1)
        recorder.spans.clear()
        agl_spans = spans_per_run(run, counter) - framework_spans
    finally:
        off()
    recorder.recording = False
    if agl_spans <= 0:
        sys.exit("agl added no span to a run: the comparison would mean nothing")
    print(f"agl makes {agl_spans} spans per run; {len(recorder.spans)} of its own", flush=True)
    # The floor is counted right after the plain runs, before any instrumentor has been switched
    # on and off again: measured last, CrewAI's floor once counted ~2 M instructions more per run.
    nothing: Variant = (lambda: None, lambda: None)
    plain = [
        ("uninstrumented", run, nothing),
        ("bare", with_bare_spans(run, provider, agl_spans), nothing),
        ("replayed", with_replayed_spans(run, provider, recorder.spans), nothing),
    ]
    variants = plain + [(name, run, switches) for name, switches in instrumented.items()]

    def dump(label: str) -> None:
        subprocess.run(["callgrind_control", "--dump=" + label, str(os.getpid())], check=True, capture_output=True)

    def settle() -> None:
        """Collect, then freeze what lives on, so no variant pays for collecting another's garbage."""
        gc.collect()
        gc.freeze()

    for name, runner, (on, off) in variants:
        on()
        try:
            runner(5)  # warm-up: first-run paths, caches
            settle()
            dump(f"before-{name}")
            runner(runs)
            dump(f"after-{name}")
        finally:
            off()


def counted(folder: Path) -> dict[str, int]:
    """Instructions of each ``after-<variant>`` dump: what ran since the ``before`` one."""
    found: dict[str, int] = {}
    for dump in folder.glob("callgrind.out*"):
        text = dump.read_text(errors="replace")
        trigger = re.search(r"^desc: Trigger: .*?after-(\S+)", text, re.M)
        total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if trigger and total:
            found[trigger.group(1)] = int(total.group(1))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=sorted(FRAMEWORKS), required=True)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child(options.framework, options.runs)
        return
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("valgrind (with callgrind_control) is needed: it is a system package, not a Python one")
    with tempfile.TemporaryDirectory() as folder:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={folder}/callgrind.out",
            sys.executable,
            __file__,
            "--framework",
            options.framework,
            "--runs",
            str(options.runs),
            "--child",
        ]
        # A fixed hash seed: set and dict orders, hence the work, are the same from run to run.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        totals = counted(Path(folder))
    spans = re.search(r"agl makes (\d+) spans per run; (\d+) of its own", done.stdout)
    labels = {"bare spans": "bare", "agl's spans replayed": "replayed"}
    per_run = {name: totals[labels.get(name, name)] / options.runs for name in VARIANTS}
    base = per_run["uninstrumented"]
    print(f"{options.framework}: instructions per agent run ({options.runs} runs per variant, callgrind)")
    for name, value in per_run.items():
        print(f"  {name:22s} {value / 1e6:8.2f} M   {value / base:.3f}x uninstrumented")
    added, own = spans.groups() if spans else ("?", "?")
    print(f"  (bare spans: the uninstrumented run plus {added} spans made directly; replayed: {own} spans")
    print("   of agl's own, a span agl makes in place of the framework's own counted twice)")
    print(f"  agl / openinference: {per_run['agl'] / per_run['openinference']:.3f}")


if __name__ == "__main__":
    main()
