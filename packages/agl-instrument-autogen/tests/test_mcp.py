"""MCP tools through autogen-ext's ``McpWorkbench``, against a real MCP server subprocess over
stdio (``mcp_server.py``): each call is one ``execute_tool`` span with its arguments and result,
as other tools' calls are. Skipped where autogen-ext's MCP support cannot be imported (autogen-ext
0.7.5 needs ``mcp < 2``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from autogen_agentchat.agents import AssistantAgent
from opentelemetry.trace import StatusCode

from agl.core.tracing import rollout_context, semconv
from agl.instrument.autogen import AutoGenInstrumentor

from .conftest import replay, tool_call

mcp = pytest.importorskip(
    "autogen_ext.tools.mcp", reason="autogen-ext's MCP support does not import (mcp 2?)", exc_type=ImportError
)

SERVER = Path(__file__).with_name("mcp_server.py")


def workbench() -> mcp.McpWorkbench:
    """The workbench of ``mcp_server.py``, run with this interpreter and its import path (an MCP
    stdio server otherwise inherits only a few environment variables)."""
    params = mcp.StdioServerParams(
        command=sys.executable,
        args=[str(SERVER)],
        env={"PYTHONPATH": os.pathsep.join(sys.path)},
        read_timeout_seconds=30,
    )
    return mcp.McpWorkbench(params)


async def test_an_agents_mcp_tool_call_is_one_span_with_arguments_and_result(traced, instrument) -> None:
    instrument()
    client = replay(tool_call("add", '{"a": 17, "b": 25}', "call-1"), "17 + 25 = 42.")
    async with workbench() as tools:
        agent = AssistantAgent("calculator", model_client=client, workbench=tools, reflect_on_tool_use=True)
        with rollout_context("ro-test", "at-test"):
            result = await agent.run(task="What is 17 + 25?")
    assert result.messages[-1].content == "17 + 25 = 42."

    spans = traced.ours()
    (tool,) = [span for span in spans if span.name.startswith("execute_tool")]  # AutoGen's own is this one
    names = {span.context.span_id: span.name for span in spans}
    assert tool.name == "execute_tool add" and names[tool.parent.span_id] == "invoke_agent calculator"
    attributes = tool.attributes or {}
    assert attributes[semconv.TOOL_NAME] == "add" and attributes[semconv.TOOL_CALL_ID] == "call-1"
    assert json.loads(attributes[semconv.TOOL_CALL_ARGUMENTS]) == {"a": 17, "b": 25}
    assert attributes[semconv.TOOL_CALL_RESULT] == "42"
    assert tool.status.status_code is not StatusCode.ERROR


async def test_an_mcp_tool_error_is_recorded_as_the_model_gets_it(traced, instrument) -> None:
    """The workbench returns a tool's error rather than raising it: the span still says it failed."""
    instrument()
    async with workbench() as tools:
        with rollout_context("ro-test", "at-test"):
            result = await tools.call_tool("fail", {"why": "out of order"}, call_id="call-2")
    assert result.is_error

    (tool,) = [span for span in traced.ours() if span.name.startswith("execute_tool")]
    attributes = tool.attributes or {}
    assert attributes[semconv.TOOL_CALL_RESULT] == result.to_text() and "out of order" in result.to_text()
    assert attributes[semconv.TOOL_CALL_ID] == "call-2"
    assert json.loads(attributes[semconv.TOOL_CALL_ARGUMENTS]) == {"why": "out of order"}
    assert tool.status.status_code is StatusCode.ERROR


def test_uninstrument_puts_the_workbenchs_originals_back(traced) -> None:
    from autogen_ext.tools.mcp import _workbench

    call_tool, trace_tool_span = _workbench.McpWorkbench.__dict__["call_tool"], _workbench.trace_tool_span
    instrumentor = AutoGenInstrumentor()
    instrumentor.instrument()
    assert _workbench.McpWorkbench.__dict__["call_tool"] is not call_tool
    assert _workbench.trace_tool_span is not trace_tool_span
    instrumentor.uninstrument()
    assert _workbench.McpWorkbench.__dict__["call_tool"] is call_tool
    assert _workbench.trace_tool_span is trace_tool_span
