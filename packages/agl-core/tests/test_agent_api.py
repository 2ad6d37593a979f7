"""A user's first agents, mistakes included, through a real runner on a real SQLite store.

Tracing: conftest's `traced_sqlite_store` (one exporter for the module, each test's own SQLite store).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from agl.core.agent import LitAgent, rollout
from agl.core.runner import ROOT_SPAN, Runner
from agl.core.store.base import LightningStore
from agl.core.tracing import semconv
from agl.core.tracing.emitters import emit_reward
from agl.core.types import LLM, AttemptedRollout, NamedResources, PromptTemplate, Span

LIMIT = 30.0


@pytest.fixture
def store(traced_sqlite_store: LightningStore) -> LightningStore:
    return traced_sqlite_store


async def run_tasks(agent: Any, store: LightningStore, tasks: list[Any]) -> list[tuple[Any, list[Span]]]:
    """Each task's latest attempt and spans, after one runner took them all."""
    rollout_ids = [(await store.enqueue_rollout(task)).rollout_id for task in tasks]
    async with asyncio.timeout(LIMIT):
        assert await Runner(agent, store).run(until_empty=True) == len(tasks)
    return [(await store.get_latest_attempt(each), list(await store.query_spans(each))) for each in rollout_ids]


def stack_trace(spans: list[Span]) -> str:
    [exception] = [span for span in spans if span.name == "agl.exception"]
    return str(exception.events[0].attributes["exception.stacktrace"])


async def test_a_resource_keyed_llm_that_is_not_a_model_is_refused_naming_its_type(store: LightningStore) -> None:
    """`llm` is filled by a model endpoint only: a prompt stored under that key is not passed as one."""
    await store.add_resources({"llm": PromptTemplate(template="{q}")})
    seen: list[Any] = []

    @rollout
    def needs_a_model(task: Any, llm: LLM) -> float:
        seen.append(llm)
        return 1.0

    @rollout
    def may_have_a_model(task: Any, llm: LLM | None = None, prompt_template: PromptTemplate | None = None) -> float:
        seen.append((llm, prompt_template))
        return 1.0

    [(attempt, _)] = await run_tasks(needs_a_model, store, [1])
    assert attempt.status == "failed" and seen == []
    assert attempt.metadata["error"] == (
        "MissingResource: agent 'needs_a_model' parameter 'llm' needs a resource of type LLM, "
        "but the resource 'llm' is a PromptTemplate and none is of that type"
    )
    [(attempt, _)] = await run_tasks(may_have_a_model, store, [1])
    assert attempt.status == "succeeded" and seen == [(None, PromptTemplate(template="{q}"))]


def test_an_async_def_rollout_is_refused_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match=r"Chat\.rollout is async: name it rollout_async"):

        class Chat(LitAgent):
            async def rollout(  # type: ignore[override]
                self, task: Any, resources: NamedResources, rollout: AttemptedRollout
            ) -> float:
                return 1.0


async def test_a_subclass_whose_init_skips_super_init_runs_under_its_class_name(store: LightningStore) -> None:
    class Scorer(LitAgent):
        def __init__(self, scale: float) -> None:
            self.scale = scale  # no super().__init__()

        def rollout(self, task: Any, resources: NamedResources, rollout: AttemptedRollout) -> float:
            return self.scale * task

    [(attempt, spans)] = await run_tasks(Scorer(0.5), store, [1])
    assert attempt.status == "succeeded", attempt.metadata
    [root] = [span for span in spans if span.name == ROOT_SPAN]
    assert root.attributes[semconv.AGENT_NAME] == "Scorer"
    assert [span.attributes[semconv.REWARD] for span in spans if semconv.REWARD in span.attributes] == [0.5]


async def test_a_runner_refuses_a_function_not_decorated_with_rollout(store: LightningStore) -> None:
    def agent(task: Any) -> float:
        return 1.0

    with pytest.raises(TypeError, match="the agent is a function, not a LitAgent: decorate a function with @rollout"):
        Runner(agent, store)  # type: ignore[arg-type]


async def test_a_keyboard_interrupt_in_a_sync_agent_fails_its_rollout_not_the_runner(store: LightningStore) -> None:
    """No Ctrl-C reaches a worker thread: the agent raised it, and the other rollouts go on."""

    @rollout
    def interrupted(task: int) -> float:
        if task == 0:
            raise KeyboardInterrupt
        return 1.0

    (failed, spans), (succeeded, _) = await run_tasks(interrupted, store, [0, 1])
    assert failed.status == "failed"
    assert failed.metadata["error"] == "AgentInterrupted: the agent raised KeyboardInterrupt in its thread"
    assert "in interrupted\n    raise KeyboardInterrupt" in stack_trace(spans)
    assert succeeded.status == "succeeded"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_the_stack_trace_of_an_agent_that_exits_shows_where_it_called_sys_exit(
    store: LightningStore, kind: str
) -> None:
    def give_up() -> None:
        sys.exit(3)

    def exits(task: Any) -> None:
        give_up()

    async def exits_async(task: Any) -> None:
        give_up()

    [(attempt, spans)] = await run_tasks(rollout(exits if kind == "sync" else exits_async), store, [1])
    assert attempt.status == "failed" and attempt.metadata["error"] == "AgentExited: the agent called sys.exit(3)"
    assert "in give_up\n    sys.exit(3)" in stack_trace(spans)


async def test_an_agent_that_names_its_input_otherwise_is_told_the_input_goes_to_task(store: LightningStore) -> None:
    await store.add_resources({"prompt": PromptTemplate(template="{q}")})

    @rollout
    def answer(question: str) -> float:
        return 1.0

    [(attempt, _)] = await run_tasks(answer, store, [{"question": "2+2"}])
    assert attempt.status == "failed"
    assert attempt.metadata["error"] == (
        "MissingResource: agent 'answer' parameter 'question' needs a resource that this rollout's resources "
        "do not have (they have: prompt); the rollout's input is passed only to a parameter named 'task'"
    )


async def test_numpy_booleans_are_rewards_as_python_booleans_are(store: LightningStore) -> None:
    """Comparing numpy values gives `numpy.bool`, which is no `numbers.Real`: True is still 1.0."""
    numpy = pytest.importorskip("numpy")

    @rollout
    def compares(task: int) -> Any:
        emit_reward({"exact": numpy.int64(task) == numpy.int64(2)})
        return numpy.float64(task) > 1.0

    [(attempt, spans)] = await run_tasks(compares, store, [2])
    assert attempt.status == "succeeded", attempt.metadata
    assert [span.attributes[semconv.REWARD] for span in spans if semconv.REWARD in span.attributes] == [1.0, 1.0]


async def test_an_agent_returning_an_unawaited_coroutine_is_told_to_await_it(store: LightningStore) -> None:
    async def judge(task: Any) -> float:
        return 1.0

    @rollout
    def forgets_await(task: Any) -> Any:
        return judge(task)

    [(attempt, _)] = await run_tasks(forgets_await, store, [1])
    assert attempt.status == "failed"
    assert attempt.metadata["error"] == (
        "TypeError: the agent returned a coroutine that nothing awaited: make the agent async, or await the call"
    )
