"""Overhead of agl's LangChain instrumentor: the same LangGraph ReAct agent on a fake chat model
(two model calls and one tool call per run), run 100 times uninstrumented, instrumented by agl and
instrumented by OpenInference's LangChain instrumentor, interleaved, 5 repetitions.

Both instrumented variants record into the same tracer provider: agl's `RolloutSpanProcessor`
and a `SimpleSpanProcessor` into an exporter that counts the spans and keeps none
(`dropping_exporter.py`), so the figures measure the instrumentation, not a store.

    .venv/bin/python benchmarks/overhead_langchain.py [--runs 100] [--repetitions 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from dropping_exporter import DroppingExporter
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from openinference.instrumentation.langchain import LangChainInstrumentor as OpenInferenceInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agl.core.tracing.context import ActiveRollout
from agl.core.tracing.processor import RolloutSpanProcessor
from agl.instrument.langchain import LangChainInstrumentor


class ToolModel(GenericFakeChatModel):
    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def build() -> Any:
    def calculator(state: MessagesState) -> dict[str, Any]:
        replies = [AIMessage(content="", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}]), "3"]
        last = state["messages"][-1]
        model = ToolModel(messages=iter(replies[1:] if last.type == "tool" else replies)).bind_tools([add])
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("calculator", calculator)
    graph.add_node("tools", ToolNode([add]))
    graph.add_edge(START, "calculator")
    graph.add_conditional_edges("calculator", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "calculator")
    return graph.compile(name="calculator")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--repetitions", type=int, default=5)
    options = parser.parse_args()

    exporter = DroppingExporter()
    provider = TracerProvider()
    provider.add_span_processor(RolloutSpanProcessor(ActiveRollout("ro-bench", "at-bench")))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ours, theirs = LangChainInstrumentor(), OpenInferenceInstrumentor()
    agent = build()
    question = {"messages": [HumanMessage("What is 1 + 2?")]}

    def batch() -> float:
        start = time.perf_counter()
        for _ in range(options.runs):
            assert agent.invoke(question)["messages"][-1].content == "3"
        return time.perf_counter() - start

    variants: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "uninstrumented": (lambda: None, lambda: None),
        "agl": (lambda: ours.instrument(tracer_provider=provider), ours.uninstrument),
        "openinference": (lambda: theirs.instrument(tracer_provider=provider), theirs.uninstrument),
    }
    spans: dict[str, int] = {}
    times: dict[str, list[float]] = {name: [] for name in variants}
    batch()  # warm-up: imports, graph compilation caches
    for _ in range(options.repetitions):
        for name, (on, off) in variants.items():
            exported = exporter.count
            on()
            try:
                times[name].append(batch())
            finally:
                off()
            spans[name] = exporter.count - exported
    for name, measured in times.items():
        print(
            f"{name}: {min(measured):.3f} / {statistics.median(measured):.3f} / {max(measured):.3f} seconds "
            f"for {options.runs} runs ({spans[name] // options.runs} spans per run)"
        )
    median = {name: statistics.median(measured) for name, measured in times.items()}
    print(f"agl / uninstrumented: {median['agl'] / median['uninstrumented']:.3f}x (medians)")
    print(f"agl / openinference: {median['agl'] / median['openinference']:.3f}x (medians)")


if __name__ == "__main__":
    main()
