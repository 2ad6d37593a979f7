"""Teams as AutoGen runs them, on its replay model: a selector's own model call inside a team
nested in an agent, and two teams at once."""

from __future__ import annotations

import asyncio

from autogen_agentchat.agents import AssistantAgent, SocietyOfMindAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.teams import RoundRobinGroupChat, SelectorGroupChat
from opentelemetry.sdk.trace import ReadableSpan

from agl.core.adapters import spans_to_triplets
from agl.core.tracing import rollout_context, semconv

from .conftest import replay


def llm_calls(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return [span for span in spans if (span.attributes or {}).get(semconv.LLM_CALL)]


def ancestors(span: ReadableSpan, spans: list[ReadableSpan]) -> list[str]:
    by_id = {candidate.context.span_id: candidate for candidate in spans}
    names = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


async def test_a_selectors_call_is_labelled_with_its_team_not_the_agent_running_the_team(traced, instrument) -> None:
    """The selector picks the next speaker in nobody's turn: its call carries the team's name, so
    training the outer agent (``agent_match``, which falls back on the nearest named ancestor)
    does not take in the selector's prompts, and the selector's calls can be picked themselves."""
    instrument()
    alice = AssistantAgent("alice", model_client=replay("Alice here."), description="Alice.")
    bob = AssistantAgent("bob", model_client=replay("Bob here."), description="Bob.")
    team = SelectorGroupChat(
        [alice, bob], model_client=replay("bob"), termination_condition=MaxMessageTermination(3), name="chatroom"
    )
    outer = SocietyOfMindAgent("outer", team=team, model_client=replay("In short: hello."))
    with rollout_context("ro-test", "at-test"):
        result = await outer.run(task="Say hello.")
    assert result.messages[-1].content == "In short: hello."

    spans = traced.ours()
    labels = [(span.attributes or {}).get(semconv.AGENT_NAME) for span in llm_calls(spans)]
    # The selector picks bob; then alice is the only one left (AutoGen asks no model); the summary.
    assert labels == ["chatroom", "bob", "alice", "outer"]
    assert "invoke_workflow chatroom" in ancestors(llm_calls(spans)[0], spans)
    (summary,) = spans_to_triplets(traced.stored(), agent_match="^outer$", merge=False)
    assert summary.response == [{"role": "assistant", "content": "In short: hello."}]
    (selection,) = spans_to_triplets(traced.stored(), agent_match="^chatroom$", merge=False)
    assert selection.response == [{"role": "assistant", "content": "bob"}]


async def test_two_teams_running_at_once_keep_their_own_spans(traced, instrument) -> None:
    instrument()

    def team(n: int) -> RoundRobinGroupChat:
        writer = AssistantAgent(f"writer{n}", model_client=replay(f"Draft {n}a.", f"Draft {n}b."))
        critic = AssistantAgent(f"critic{n}", model_client=replay(f"Critique {n}."))
        return RoundRobinGroupChat([writer, critic], termination_condition=MaxMessageTermination(4), name=f"team{n}")

    with rollout_context("ro-test", "at-test"):
        await asyncio.gather(team(1).run(task="One."), team(2).run(task="Two."))
    spans = traced.ours()
    calls = llm_calls(spans)
    assert len(calls) == 6
    for call in calls:
        agent = (call.attributes or {})[semconv.AGENT_NAME]
        path = ancestors(call, spans)
        assert path[0] == f"invoke_agent {agent}"
        workflows = [name for name in path if name.startswith("invoke_workflow")]
        assert workflows == [f"invoke_workflow team{agent[-1]}"]
