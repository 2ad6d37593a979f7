"""What agl's Agents SDK instrumentation costs per agent run, beside the same run uninstrumented
and instrumented by OpenInference.

    python benchmarks/overhead_openai_agents.py [--repetitions 5] [--runs 100]

The agent calls one tool through a scripted `Model` (two model calls and one tool call per run, no
network). Each repetition times ``--runs`` runs of each variant, interleaved: uninstrumented,
agl (`OpenAIAgentsInstrumentor`), OpenInference (its Agents SDK instrumentor). Spans go to one
tracer provider with agl's rollout processor and an exporter that keeps no span
(`dropping_exporter.py`), so both instrumentors pay for the same SDK work. No OpenAI API key: the
SDK's own exporter sends nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.pop("OPENAI_API_KEY", None)

from agents import Agent, Model, ModelResponse, Runner, Usage, function_tool
from dropping_exporter import DroppingExporter
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText
from openinference.instrumentation.openai_agents import OpenAIAgentsInstrumentor as OpenInference
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agl.core.tracing.context import ActiveRollout
from agl.core.tracing.processor import RolloutSpanProcessor
from agl.instrument.openai_agents import OpenAIAgentsInstrumentor


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class FakeModel(Model):
    model = "fake"

    async def get_response(self, system_instructions, input, *args: Any, **kwargs: Any) -> ModelResponse:  # type: ignore[no-untyped-def]
        done = isinstance(input, list) and any(
            isinstance(item, dict) and item.get("type") == "function_call_output" for item in input
        )
        if done:
            text = ResponseOutputText(text="42", type="output_text", annotations=[])
            output: list[Any] = [
                ResponseOutputMessage(id="m", content=[text], role="assistant", status="completed", type="message")
            ]
        else:
            arguments = json.dumps({"a": 17, "b": 25})
            output = [ResponseFunctionToolCall(arguments=arguments, call_id="c1", name="add", type="function_call")]
        return ModelResponse(output=output, usage=Usage(requests=1, input_tokens=5, output_tokens=2), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


AGENT = Agent(name="calculator", instructions="Use the add tool.", tools=[add], model=FakeModel())


async def batch(runs: int) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        await Runner.run(AGENT, "What is 17 + 25?")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--runs", type=int, default=100)
    options = parser.parse_args()

    exporter = DroppingExporter()
    provider = TracerProvider()
    provider.add_span_processor(RolloutSpanProcessor(ActiveRollout("ro-bench", "at-bench")))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ours, theirs = OpenAIAgentsInstrumentor(), OpenInference()
    variants: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "uninstrumented": (lambda: None, lambda: None),
        "agl": (lambda: ours.instrument(tracer_provider=provider), ours.uninstrument),
        "openinference": (lambda: theirs.instrument(tracer_provider=provider), theirs.uninstrument),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    asyncio.run(batch(10))  # warm up imports and caches
    for _ in range(options.repetitions):
        for name, (on, off) in variants.items():
            on()
            try:
                times[name].append(asyncio.run(batch(options.runs)))
            finally:
                off()

    for name, found in times.items():
        print(
            f"{name}: {min(found):.3f} / {statistics.median(found):.3f} / {max(found):.3f} "
            f"seconds for {options.runs} runs"
        )
    ours_median = statistics.median(times["agl"])
    print(f"agl / uninstrumented: {ours_median / statistics.median(times['uninstrumented']):.2f}x (median)")
    print(f"agl / openinference: {ours_median / statistics.median(times['openinference']):.2f}x (median)")


if __name__ == "__main__":
    main()
