"""What agl's AutoGen instrumentation costs: the same fake-model agent run uninstrumented,
instrumented by agl, and instrumented by OpenInference, interleaved.

    python benchmarks/overhead_autogen.py [--runs 100] [--repetitions 5]

The agent is an AutoGen ``AssistantAgent`` with one sync tool and ``reflect_on_tool_use``, on
AutoGen's ``ReplayChatCompletionClient`` (a tool call, then the answer: two model calls and one tool
call per run). All three variants record into the same SDK tracer provider (agl's span processor
and an exporter that keeps no span, `dropping_exporter.py`), so AutoGen's own spans cost the same
in each; only the instrumentor differs. Each block of ``--runs`` runs is timed; the blocks of the
three variants take turns. Wall-clock seconds are printed, and the process's CPU seconds (less
disturbed by other work on a busy machine).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

from autogen_agentchat.agents import AssistantAgent
from autogen_core import FunctionCall
from autogen_core.models import CreateResult, ModelInfo, RequestUsage
from autogen_ext.models.replay import ReplayChatCompletionClient
from dropping_exporter import DroppingExporter
from openinference.instrumentation.autogen_agentchat import AutogenAgentChatInstrumentor
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agl.core.tracing import rollout_context
from agl.core.tracing.context import ActiveRollout
from agl.core.tracing.processor import RolloutSpanProcessor
from agl.instrument.autogen import AutoGenInstrumentor

INFO = ModelInfo(vision=False, function_calling=True, json_output=False, family="unknown", structured_output=False)


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def one_run() -> None:
    call = FunctionCall(id="call-1", name="add", arguments='{"a": 17, "b": 25}')
    replies = [CreateResult(finish_reason="function_calls", content=[call], usage=RequestUsage(10, 5), cached=False)]
    client = ReplayChatCompletionClient([*replies, "17 + 25 = 42."], model_info=INFO)
    agent = AssistantAgent("calculator", model_client=client, tools=[add], reflect_on_tool_use=True)
    result = await agent.run(task="What is 17 + 25?")
    assert result.messages[-1].content == "17 + 25 = 42."


async def block(runs: int) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process) for ``runs`` runs."""
    started, cpu = time.perf_counter(), time.process_time()
    with rollout_context("ro-bench", "at-bench"):
        for _ in range(runs):
            await one_run()
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()
    exporter = DroppingExporter()
    provider = TracerProvider()
    provider.add_span_processor(RolloutSpanProcessor(ActiveRollout("ro-process", "at-process")))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    variants: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {}
    ours, theirs = AutoGenInstrumentor(), AutogenAgentChatInstrumentor()
    variants["uninstrumented"] = (lambda: None, lambda: None)
    variants["agl"] = (ours.instrument, ours.uninstrument)
    variants["openinference"] = (theirs.instrument, theirs.uninstrument)
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    asyncio.run(block(10))  # warm up imports and caches
    for _ in range(args.repetitions):
        for name, (start, stop) in variants.items():
            start()
            try:
                timings[name].append(asyncio.run(block(args.runs)))
            finally:
                stop()
    for clock, index in (("wall", 0), ("cpu", 1)):
        medians = {}
        for name, pairs in timings.items():
            seconds = [pair[index] for pair in pairs]
            medians[name] = statistics.median(seconds)
            print(
                f"{name} ({clock}): {min(seconds):.3f} / {medians[name]:.3f} / {max(seconds):.3f} "
                f"seconds for {args.runs} runs"
            )
        print(f"agl / uninstrumented ({clock}, median): {medians['agl'] / medians['uninstrumented']:.3f}")
        print(f"agl / openinference ({clock}, median): {medians['agl'] / medians['openinference']:.3f}")


if __name__ == "__main__":
    main()
