"""A LangGraph agent on LangChain's ChatOpenAI: it knows nothing of agl. Under
``opentelemetry-instrument`` its graph, agent, tool and model calls land in agl's store, with no
code change:

    AGL_CAPTURE_TOKEN_IDS=1 OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=… \\
        opentelemetry-instrument python examples/langchain_agent.py
    agl rollouts list && agl spans ro-proc-…

A ReAct loop as a graph named "calculator": the node ``calculator`` asks the model, which calls the
``add`` tool; the ``tools`` node runs it and the model answers. The model is ``$OPENAI_MODEL``
(default ``agl-toy``; ``agl serve MODEL`` answers only to its served name: serve with
``--served-model-name agl-toy``, or set the variable to the name ``/v1/models`` lists; the scripted
server agl's tests use answers to any name).
"""

from __future__ import annotations

import os
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def build(model: Any) -> Any:
    """The graph: calculator ⇄ tools until the model answers without a tool call."""
    bound = model.bind_tools([add])

    def calculator(state: MessagesState) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("calculator", calculator)
    graph.add_node("tools", ToolNode([add]))
    graph.add_edge(START, "calculator")
    graph.add_conditional_edges("calculator", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "calculator")
    return graph.compile(name="calculator")


def main() -> None:
    model = ChatOpenAI(model=os.environ.get("OPENAI_MODEL", "agl-toy"), max_retries=0)  # OPENAI_* from the env
    question = [SystemMessage("You are a calculator. Use the add tool for sums."), HumanMessage("What is 17 + 25?")]
    print(build(model).invoke({"messages": question})["messages"][-1].content)


if __name__ == "__main__":
    main()
