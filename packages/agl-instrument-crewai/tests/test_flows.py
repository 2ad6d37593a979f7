"""CrewAI Flows: one flow run is one trace, ``invoke_workflow {flow}`` around a span per executed
method, with the crews and agents each method runs under that method's span, whether the method
is async (concurrent listeners each in their own asyncio task) or sync (run in a worker thread).
Models are CrewAI's own LLM over real HTTP to agl's scripted OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import enum
import json
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from crewai import LLM, Agent, Crew, Task
from crewai.flow.async_feedback.types import HumanFeedbackPending, PendingFeedbackContext
from crewai.flow.flow import Flow, and_, listen, or_, router, start
from crewai.flow.persistence.sqlite import SQLiteFlowPersistence
from opentelemetry.trace import StatusCode

from agl.core.testing.chat_server import chat_server_app
from agl.core.testing.server import ServingThread
from agl.core.tracing import semconv

WAIT_S = 30  # a bound on waiting for the other concurrent method, so a regression fails instead of hanging


@pytest.fixture(autouse=True)
def storage_in_tmp(tmp_path, monkeypatch) -> None:
    """Every flow makes a memory store on disk: this test's, not the user's data directory."""
    monkeypatch.setenv("CREWAI_STORAGE_DIR", str(tmp_path / "crewai"))


@pytest.fixture
def model_url() -> Iterator[str]:
    """A scripted model that answers every request with the task it was given, echoed."""

    def answer(messages: list[dict[str, Any]]) -> str:
        asked = next(m["content"] for m in messages if m["role"] == "user")
        first_line = next(line for line in asked.splitlines() if line.strip())
        return "Done: " + first_line.removeprefix("Current Task: ")

    with ServingThread(chat_server_app(answer)) as server:
        yield f"{server.url}/v1"


def crew(model_url: str, role: str) -> Crew:
    llm = LLM(model="openai/agl-toy", base_url=model_url, api_key="test", max_retries=0)
    agent = Agent(role=role, goal="Write", backstory="You write.", llm=llm)
    task = Task(description=f"Write as {role}.", expected_output="A line", agent=agent)
    return Crew(agents=[agent], tasks=[task], name=f"{role} crew")


def agent(model_url: str, role: str) -> Agent:
    llm = LLM(model="openai/agl-toy", base_url=model_url, api_key="test", max_retries=0)
    return Agent(role=role, goal="Write", backstory="You write.", llm=llm)


class Verdict(enum.Enum):
    APPROVED = "approved"
    REJECTED = "rejected"


def make_concurrent_async_flow(model_url: str) -> Flow:
    both_running = asyncio.Barrier(2)

    class Review(Flow):
        @start()
        def draft(self) -> str:
            return crew(model_url, "Drafter").kickoff().raw  # sync: CrewAI runs it in a thread

        @router(draft)
        def judge(self) -> Verdict:
            return Verdict.APPROVED

        @listen(Verdict.APPROVED.value)
        async def polish(self) -> str:
            await asyncio.wait_for(both_running.wait(), WAIT_S)  # proves the two listeners overlap
            return (await crew(model_url, "Polisher").akickoff()).raw

        @listen(Verdict.APPROVED.value)
        async def announce(self) -> str:
            await asyncio.wait_for(both_running.wait(), WAIT_S)
            return (await agent(model_url, "Announcer").kickoff_async("Announce it.")).raw

        @listen(and_(polish, announce))  # after both: the flow's last method, so its output
        def publish(self) -> str:
            return "published"

    return Review()


def tree(kit: Any, captured_spans: Any) -> list[tuple[str, str | None]]:
    return kit.tree(kit.ordered(captured_spans.get_finished_spans()))


def by_name(captured_spans: Any) -> dict[str, Any]:
    return {span.name: span for span in captured_spans.get_finished_spans()}


FLOW_TREE = Counter(
    {
        ("invoke_workflow Review", None): 1,
        ("flow_method draft", "invoke_workflow Review"): 1,
        ("invoke_workflow Drafter crew", "flow_method draft"): 1,
        ("task Write as Drafter.", "invoke_workflow Drafter crew"): 1,
        ("invoke_agent Drafter", "task Write as Drafter."): 1,
        ("chat agl-toy", "invoke_agent Drafter"): 1,
        ("flow_method judge", "invoke_workflow Review"): 1,
        ("flow_method polish", "invoke_workflow Review"): 1,
        ("invoke_workflow Polisher crew", "flow_method polish"): 1,
        ("task Write as Polisher.", "invoke_workflow Polisher crew"): 1,
        ("invoke_agent Polisher", "task Write as Polisher."): 1,
        ("chat agl-toy", "invoke_agent Polisher"): 1,
        ("flow_method announce", "invoke_workflow Review"): 1,
        ("invoke_agent Announcer", "flow_method announce"): 1,
        ("chat agl-toy", "invoke_agent Announcer"): 1,
        ("flow_method publish", "invoke_workflow Review"): 1,
    }
)


def test_a_flow_run_is_one_trace_with_its_methods_crews_and_agents_nested(
    captured_spans, instrument, kit, model_url
) -> None:
    instrument()
    flow = make_concurrent_async_flow(model_url)
    assert flow.kickoff(inputs={"topic": "otters"}) == "published"

    spans = captured_spans.get_finished_spans()
    assert len({span.context.trace_id for span in spans}) == 1
    assert Counter(tree(kit, captured_spans)) == FLOW_TREE
    named = by_name(captured_spans)
    flow_span = named["invoke_workflow Review"]
    assert flow_span.status.status_code is StatusCode.UNSET
    assert flow_span.attributes[semconv.OPERATION_NAME] == "invoke_workflow"
    assert flow_span.attributes["crewai.flow.name"] == "Review"
    assert json.loads(flow_span.attributes["crewai.flow.inputs"]) == {"topic": "otters"}
    assert flow_span.attributes["crewai.flow.output"] == "published"
    judge = named["flow_method judge"]
    assert judge.attributes[semconv.OPERATION_NAME] == "flow_method"
    assert judge.attributes["crewai.flow.method"] == "judge"
    assert judge.attributes["crewai.flow.method.router"] is True
    assert judge.attributes["crewai.flow.route"] == "approved"  # the enum's value, as CrewAI routes on it
    assert named["flow_method draft"].attributes["crewai.flow.method.output"] == "Done: Write as Drafter."
    assert named["flow_method polish"].attributes["crewai.flow.method.output"] == "Done: Write as Polisher."
    assert all("crewai.flow.route" not in named[f"flow_method {m}"].attributes for m in ("draft", "polish"))


def test_sync_methods_running_at_once_in_threads_keep_their_own_spans(
    captured_spans, instrument, kit, model_url
) -> None:
    both_running = threading.Barrier(2, timeout=WAIT_S)

    class Pair(Flow):
        @start()
        def begin(self) -> str:
            return "go"

        @listen(begin)
        def left(self) -> str:
            both_running.wait()  # each in its own worker thread, at the same time
            return crew(model_url, "Left").kickoff().raw

        @listen(begin)
        def right(self) -> str:
            both_running.wait()
            return agent(model_url, "Right").kickoff("Go right.").raw

    instrument()
    Pair(name="pair flow").kickoff()

    assert Counter(tree(kit, captured_spans)) == Counter(
        {
            ("invoke_workflow pair flow", None): 1,
            ("flow_method begin", "invoke_workflow pair flow"): 1,
            ("flow_method left", "invoke_workflow pair flow"): 1,
            ("invoke_workflow Left crew", "flow_method left"): 1,
            ("task Write as Left.", "invoke_workflow Left crew"): 1,
            ("invoke_agent Left", "task Write as Left."): 1,
            ("chat agl-toy", "invoke_agent Left"): 1,
            ("flow_method right", "invoke_workflow pair flow"): 1,
            ("invoke_agent Right", "flow_method right"): 1,
            ("chat agl-toy", "invoke_agent Right"): 1,
        }
    )
    named = by_name(captured_spans)
    assert named["invoke_workflow pair flow"].attributes["crewai.flow.name"] == "pair flow"
    left_chat, right_chat = sorted(
        (span for span in captured_spans.get_finished_spans() if span.name == "chat agl-toy"),
        key=lambda span: span.attributes[semconv.AGENT_NAME],
    )
    assert (left_chat.attributes[semconv.AGENT_NAME], right_chat.attributes[semconv.AGENT_NAME]) == ("Left", "Right")


class Broken(Flow):
    @start()
    def begin(self) -> str:
        return "fine"

    @listen(begin)
    def explode(self) -> str:
        raise BrokenError("no luck")

    @listen(explode)
    def never(self) -> str:
        return "unreached"


class BrokenError(Exception):
    pass


def test_a_raising_method_fails_its_span_and_the_flows_with_the_exception_unchanged(
    captured_spans, instrument, kit
) -> None:
    instrument()
    with pytest.raises(BrokenError) as raised:
        Broken().kickoff()

    assert [name for name, _ in tree(kit, captured_spans)] == [
        "invoke_workflow Broken",
        "flow_method begin",
        "flow_method explode",
    ]
    named = by_name(captured_spans)
    for span in (named["flow_method explode"], named["invoke_workflow Broken"]):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "BrokenError: no luck"
        (event,) = span.events
        assert event.attributes["exception.type"].endswith("BrokenError")
    assert named["flow_method begin"].status.status_code is StatusCode.UNSET
    assert "crewai.flow.output" not in named["invoke_workflow Broken"].attributes
    assert str(raised.value) == "no luck"


class Race(Flow):
    @start()
    def begin(self) -> str:
        return "go"

    @listen(begin)
    async def fast(self) -> str:
        return "fast"

    @listen(begin)
    async def slow(self) -> str:
        await asyncio.Event().wait()  # never set: it runs until CrewAI cancels it, fast having won
        return "slow"

    @listen(or_(fast, slow))
    def finish(self, first: str) -> str:
        return f"won by {first}"


def test_a_listener_cancelled_by_a_won_race_is_stopped_not_failed(captured_spans, instrument, kit) -> None:
    instrument()
    assert Race().kickoff() == "won by fast"

    named = by_name(captured_spans)
    slow = named["flow_method slow"]
    assert slow.attributes["crewai.flow.stopped"] == "cancelled"
    assert slow.status.status_code is StatusCode.UNSET and slow.events == ()
    assert named["invoke_workflow Race"].status.status_code is StatusCode.UNSET
    assert named["flow_method finish"].attributes["crewai.flow.method.output"] == "won by fast"


class AwaitingReview(Flow):
    @start()
    def draft(self) -> str:
        context = PendingFeedbackContext(
            flow_id=self.flow_id, flow_class="AwaitingReview", method_name="draft", method_output="x", message="ok?"
        )
        raise HumanFeedbackPending(context=context)  # what an async feedback provider raises

    @listen(draft)
    def publish(self, reviewed: Any) -> str:
        return "published"


def test_a_flow_paused_for_human_feedback_is_stopped_not_failed_and_its_resumption_traced(
    captured_spans, instrument, kit, tmp_path
) -> None:
    instrument()
    persistence = SQLiteFlowPersistence(str(tmp_path / "flows.db"))
    paused = AwaitingReview(persistence=persistence).kickoff()
    assert isinstance(paused, HumanFeedbackPending)  # CrewAI returns the pause

    named = by_name(captured_spans)
    for span in (named["flow_method draft"], named["invoke_workflow AwaitingReview"]):
        assert span.attributes["crewai.flow.stopped"] == "paused"
        assert span.status.status_code is StatusCode.UNSET and span.events == ()
    assert "crewai.flow.output" not in named["invoke_workflow AwaitingReview"].attributes

    captured_spans.clear()
    assert AwaitingReview.from_pending(paused.context.flow_id, persistence).resume("looks good") == "published"
    assert kit.tree(kit.ordered(captured_spans.get_finished_spans())) == [
        ("invoke_workflow AwaitingReview", None),
        ("flow_method publish", "invoke_workflow AwaitingReview"),
    ]
    resumed = by_name(captured_spans)["invoke_workflow AwaitingReview"]
    assert resumed.attributes["crewai.flow.feedback"] == "looks good"
    assert resumed.attributes["crewai.flow.output"] == "published"


class Echo(Flow):
    @start()
    async def echo(self) -> dict[str, Any]:
        return {"topic": self.state["topic"]}


def test_kickoff_async_and_akickoff_open_one_flow_span_each(captured_spans, instrument, kit) -> None:
    instrument()

    async def both() -> list[Any]:
        return [await Echo().kickoff_async(inputs={"topic": "a"}), await Echo().akickoff({"topic": "b"})]

    assert asyncio.run(both()) == [{"topic": "a"}, {"topic": "b"}]
    spans = kit.ordered(captured_spans.get_finished_spans())
    assert kit.tree(spans) == [
        ("invoke_workflow Echo", None),
        ("flow_method echo", "invoke_workflow Echo"),
        ("invoke_workflow Echo", None),
        ("flow_method echo", "invoke_workflow Echo"),
    ]
    flows = [span for span in spans if span.name == "invoke_workflow Echo"]
    assert [json.loads(span.attributes["crewai.flow.output"]) for span in flows] == [{"topic": "a"}, {"topic": "b"}]
    assert flows[0].context.trace_id != flows[1].context.trace_id  # two runs, two traces
    # A method's non-text result is not copied onto its span (flow state can be large).
    assert all("crewai.flow.method.output" not in span.attributes for span in spans if span.name.startswith("flow_"))


def test_a_flow_after_uninstrument_records_nothing(captured_spans, instrument) -> None:
    instrument().uninstrument()
    with pytest.raises(BrokenError):
        Broken().kickoff()
    assert captured_spans.get_finished_spans() == ()


def test_a_streamed_flow_has_one_flow_span_from_the_run_its_iteration_starts(captured_spans, instrument, kit) -> None:
    instrument()

    async def stream() -> Any:
        session = await Echo(stream=True).kickoff_async(inputs={"topic": "s"})
        async for _frame in session:
            pass
        return session.result

    assert asyncio.run(stream()) == {"topic": "s"}
    spans = kit.ordered(captured_spans.get_finished_spans())
    assert kit.tree(spans) == [("invoke_workflow Echo", None), ("flow_method echo", "invoke_workflow Echo")]
    assert json.loads(spans[0].attributes["crewai.flow.output"]) == {"topic": "s"}


class Answers:
    """An input provider answering each ``Flow.ask`` from a list; None once it runs out (as on a timeout)."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)

    def request_input(self, message: str, flow: Any, metadata: Any = None) -> str | None:
        return self.answers.pop(0) if self.answers else None


class Asking(Flow):
    @start()
    def gather(self) -> str:
        return f"{self.ask('Favourite colour?')}, {self.ask('And number?')}"


def test_each_ask_is_a_span_under_its_method_with_the_question_and_the_reply(captured_spans, instrument, kit) -> None:
    instrument()
    assert Asking(input_provider=Answers("blue")).kickoff() == "blue, None"

    spans = kit.ordered(captured_spans.get_finished_spans())
    assert kit.tree(spans) == [
        ("invoke_workflow Asking", None),
        ("flow_method gather", "invoke_workflow Asking"),
        ("flow_ask", "flow_method gather"),
        ("flow_ask", "flow_method gather"),
    ]
    answered, unanswered = spans[2:]
    assert answered.attributes["gen_ai.operation.name"] == "flow_ask"
    assert answered.attributes["crewai.flow.ask.message"] == "Favourite colour?"
    assert answered.attributes["crewai.flow.ask.response"] == "blue"
    assert unanswered.attributes["crewai.flow.ask.message"] == "And number?"
    assert "crewai.flow.ask.response" not in unanswered.attributes


def test_the_flow_span_holds_the_state_id_the_run_ended_with(captured_spans, instrument) -> None:
    instrument()
    flow = Echo()
    flow.kickoff(inputs={"topic": "a"})
    flow.kickoff(inputs={"id": "pinned-id", "topic": "b"})  # inputs["id"] sets the state's id
    with pytest.raises(BrokenError):
        Broken().kickoff(inputs={"id": "failed-id"})

    flows = [span for span in captured_spans.get_finished_spans() if span.name.startswith("invoke_workflow")]
    assert [span.attributes["crewai.flow.id"] for span in flows[:2]] == [
        flows[0].attributes["crewai.flow.id"],
        "pinned-id",
    ]
    assert flows[0].attributes["crewai.flow.id"] not in ("", "pinned-id")
    assert flows[2].attributes["crewai.flow.id"] == "failed-id"
