"""Overhead of tracing a CrewAI crew: the same offline crew (one agent, one task, one tool, two
scripted model calls) run uninstrumented, instrumented by agl, and instrumented by OpenInference,
interleaved, several repetitions. Runs in the CrewAI environment (``.venvs/crewai``):

    .venvs/crewai/bin/python benchmarks/overhead_crewai.py [--runs 100] [--repetitions 5]

Both instrumented variants export through the same SDK provider (agl's processor, then a
synchronous exporter that drops the spans), so the figures compare the instrumentors themselves.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_DISABLE_TRACKING", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("CREWAI_TESTING", "true")

from crewai import Agent, Crew, Task
from openinference.instrumentation.crewai import CrewAIInstrumentor as OpenInferenceCrewAI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agl.core.tracing.context import ActiveRollout
from agl.core.tracing.processor import RolloutSpanProcessor
from agl.instrument.crewai import CrewAIInstrumentor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from crewai_agent import ScriptedLLM, add  # the example's offline model and tool: the same crew
from dropping_exporter import DroppingExporter


def run_crew() -> None:
    llm = ScriptedLLM(
        model="scripted-model",
        script=[
            'Thought: add\nAction: add\nAction Input: {"a": 17, "b": 25}',
            "Thought: I now know the final answer\nFinal Answer: 42",
        ],
    )
    agent = Agent(role="Calculator", goal="Add numbers", backstory="You add.", llm=llm, tools=[add])
    task = Task(description="What is 17 + 25?", expected_output="The sum", agent=agent)
    assert Crew(agents=[agent], tasks=[task], name="adder").kickoff().raw == "42"


def timed(runs: int, setup: Callable[[], Callable[[], None]]) -> float:
    teardown = setup()
    try:
        start = time.perf_counter()
        for _ in range(runs):
            run_crew()
        return time.perf_counter() - start
    finally:
        teardown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--repetitions", type=int, default=5)
    options = parser.parse_args()

    exporter = DroppingExporter()
    provider = TracerProvider()
    provider.add_span_processor(RolloutSpanProcessor(ActiveRollout("ro-bench", "at-bench")))
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def uninstrumented() -> Callable[[], None]:
        return lambda: None

    def agl() -> Callable[[], None]:
        instrumentor = CrewAIInstrumentor()
        instrumentor.instrument(tracer_provider=provider)
        return instrumentor.uninstrument

    def openinference() -> Callable[[], None]:
        instrumentor = OpenInferenceCrewAI()
        instrumentor.instrument(tracer_provider=provider)
        return instrumentor.uninstrument

    variants = {"uninstrumented": uninstrumented, "agl": agl, "openinference": openinference}
    for setup in variants.values():  # warm-up: imports, caches, first-run paths
        timed(3, setup)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(options.repetitions):
        for name, setup in variants.items():
            times[name].append(timed(options.runs, setup))

    for name, values in times.items():
        print(
            f"{name}: {min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f} seconds "
            f"for {options.runs} runs (min / median / max of {options.repetitions})"
        )
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"ours/uninstrumented: {median['agl'] / median['uninstrumented']:.3f} (median)")
    print(f"ours/openinference: {median['agl'] / median['openinference']:.3f} (median)")
    print(f"spans exported: {exporter.count}")


if __name__ == "__main__":
    main()
