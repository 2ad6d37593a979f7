"""Agents and the runner, against real stores (memory and SQLite) with real tracing.

Tracing: OpenTelemetry lets a process set its global tracer provider once, and `setup_tracing`
leaves a provider already in place alone (so a later call cannot point it at another store). This
module therefore gets one real agl set-up (conftest's `forwarder`), installed for the module and
given back after it (as the other tracing tests do per test, by patching the API's global), so it
neither sees nor leaks into other modules' tracing. Its exporter writes into that `Forwarder`,
which hands each batch to the current test's store; each test flushes its spans
before it lets go of its store. The runner's own `setup_tracing(store=...)` call then finds the
provider in place, as it would in a process that set tracing up first. In-process rather than a
subprocess per test: these tests need the test's event loop and objects (barriers, events) shared
with the agents. The stores run without their watchdog, so every status asserted here was set by
the runner.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

from agl.core import open_store
from agl.core.agent import LitAgent, resolve_llm, rollout
from agl.core.errors import StoreUnavailable
from agl.core.runner import ROOT_SPAN, STOPPED, Runner
from agl.core.store.base import LightningStore
from agl.core.testing import ranks
from agl.core.tracing import semconv
from agl.core.tracing.configure import flush_spans
from agl.core.types import LLM, AttemptedRollout, NamedResources, PromptTemplate, ProxyLLM, RolloutConfig, Span

LIMIT = 30.0
"""Upper bound on any wait: a broken runner fails a test instead of hanging it."""


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, forwarder: Any) -> AsyncIterator[Any]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'store.db'}"
    opened = open_store(url, watchdog_interval=None)
    forwarder.target = opened
    yield opened
    assert flush_spans()
    forwarder.target = None
    await opened.close()


async def run(runner: Runner, **options: Any) -> int:
    async with asyncio.timeout(LIMIT):
        return await runner.run(**options)


async def enqueue(store: LightningStore, tasks: Sequence[Any], **options: Any) -> list[str]:
    return [(await store.enqueue_rollout(task, **options)).rollout_id for task in tasks]


def only(spans: Sequence[Span], name: str) -> Span:
    matching = [span for span in spans if span.name == name]
    assert len(matching) == 1, [span.name for span in spans]
    return matching[0]


def root_of(spans: Sequence[Span]) -> Span:
    root = only(spans, ROOT_SPAN)
    assert root.parent_id is None
    assert all(span.parent_id is not None for span in spans if span is not root)
    return root


# --- a dataset end to end -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_rollout_agent_over_a_dataset_stores_rewards_under_its_root_span(store: Any, kind: str) -> None:
    await store.add_resources({"prompt": PromptTemplate(template="What is {a} + {b}?")})
    tracer = trace.get_tracer("test")

    def solve(task: dict[str, int], prompt_template: PromptTemplate) -> float:
        with tracer.start_as_current_span("think") as span:
            span.set_attribute("prompt", prompt_template.format(**task))
        return task["a"] / 10

    async def solve_async(task: dict[str, int], prompt_template: PromptTemplate) -> float:
        return solve(task, prompt_template)

    agent = rollout(solve if kind == "sync" else solve_async)
    dataset = [{"a": a, "b": 1} for a in range(5)]
    ids = await enqueue(store, dataset)
    runner = Runner(agent, store, max_concurrency=2)
    running = asyncio.create_task(run(runner, until_empty=True))
    # Spans are flushed before the status is set: a finished rollout already has all of them.
    finished = await store.wait_for_rollouts(ids, timeout=LIMIT)
    spans_when_finished = {rollout_id: list(await store.query_spans(rollout_id)) for rollout_id in ids}
    assert await running == 5

    assert [r.status for r in finished] == ["succeeded"] * 5
    for rollout_id, task in zip(ids, dataset, strict=True):
        attempt = await store.get_latest_attempt(rollout_id)
        assert attempt is not None and attempt.status == "succeeded" and attempt.worker_id == runner.worker_id
        spans = spans_when_finished[rollout_id]
        root = root_of(spans)
        assert (
            root.attributes[semconv.AGENT_NAME] == agent.name == solve.__name__ + ("" if kind == "sync" else "_async")
        )
        think, reward = only(spans, "think"), only(spans, "agl.reward")
        assert think.parent_id == reward.parent_id == root.span_id
        assert think.attributes["prompt"] == f"What is {task['a']} + 1?"
        assert reward.attributes[semconv.REWARD] == task["a"] / 10
        assert spans[0] == root and ranks(s.sequence_id for s in spans) == [1, 2, 3]  # numbered at start: root first


# --- concurrency --------------------------------------------------------------------------


async def test_async_agents_run_max_concurrency_at_once(store: Any) -> None:
    barrier = asyncio.Barrier(4)  # passes only when four agents wait on it together
    running, peak = 0, 0

    @rollout
    async def agent(task: int) -> float:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.wait_for(barrier.wait(), LIMIT)
        running -= 1
        return 1.0

    ids = await enqueue(store, range(8))
    assert await run(Runner(agent, store, max_concurrency=4), until_empty=True) == 8
    assert [r.status for r in await store.query_rollouts(rollout_id_in=ids)] == ["succeeded"] * 8
    assert peak == 4  # all four at once, and never more


async def test_sync_agents_run_in_threads_several_at_once_when_allowed(store: Any) -> None:
    barrier = threading.Barrier(2, timeout=LIMIT)
    threads: set[str] = set()

    @rollout
    def agent(task: int) -> float:
        threads.add(threading.current_thread().name)
        barrier.wait()
        return 0.5

    ids = await enqueue(store, range(4))
    assert await run(Runner(agent, store, max_concurrency=2), until_empty=True) == 4
    assert [r.status for r in await store.query_rollouts(rollout_id_in=ids)] == ["succeeded"] * 4
    assert threading.main_thread().name not in threads


async def test_two_runners_on_two_stores_each_keep_their_spans_though_the_process_has_one_exporter(
    forwarder: Any,
) -> None:
    """The module's one exporter was made for its forwarder, which has no store here: every span of
    a runner's rollouts must reach that runner's own store (a notebook that fits twice on two
    stores, two runners at once)."""
    stores = [open_store("memory://", watchdog_interval=None) for _ in range(2)]
    try:

        @rollout
        async def score(task: float) -> float:
            await asyncio.sleep(0)  # the two runners' rollouts interleave
            return task

        tasks = [[0.1, 0.2, 0.3], [0.6, 0.7]]
        ids = [await enqueue(store, each) for store, each in zip(stores, tasks, strict=True)]
        runners = [Runner(score, store, max_concurrency=2) for store in stores]
        assert await asyncio.gather(*(run(runner, until_empty=True) for runner in runners)) == [3, 2]
        for store, rollout_ids, rewards in zip(stores, ids, tasks, strict=True):
            for rollout_id, reward in zip(rollout_ids, rewards, strict=True):
                spans = await store.query_spans(rollout_id)
                assert only(spans, "agl.reward").attributes[semconv.REWARD] == reward
                assert root_of(spans).attributes[semconv.AGENT_NAME] == "score"
    finally:
        for store in stores:
            await store.close()


# --- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "error"), [(ValueError("bad answer"), "ValueError: bad answer"), ("yes", "TypeError: the agent")]
)
async def test_an_agent_that_raises_or_returns_a_non_number_fails_its_attempt_with_an_exception_span(
    store: Any, outcome: Any, error: str
) -> None:
    @rollout
    async def agent(task: str) -> Any:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    [rollout_id] = await enqueue(store, ["q"])
    assert await run(Runner(agent, store), until_empty=True) == 1
    attempt = await store.get_latest_attempt(rollout_id)
    assert attempt.status == "failed" and attempt.metadata["error"].startswith(error)
    assert (await store.get_rollout_by_id(rollout_id)).status == "failed"
    spans = list(await store.query_spans(rollout_id))
    root, exception = root_of(spans), only(spans, "agl.exception")
    assert exception.parent_id == root.span_id
    assert exception.status.status_code == root.status.status_code == "ERROR"
    assert exception.events[0].attributes["exception.type"] == error.split(":")[0]
    assert not [span for span in spans if span.name == "agl.reward"]


async def test_an_async_agent_past_its_timeout_is_cancelled_and_its_attempt_times_out(store: Any) -> None:
    never = asyncio.Event()
    cancelled = asyncio.Event()

    @rollout
    async def agent(task: str) -> float:
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1.0

    [rollout_id] = await enqueue(store, ["slow"], config=RolloutConfig(timeout_seconds=0.2))
    assert await run(Runner(agent, store), until_empty=True) == 1
    assert cancelled.is_set()
    attempt = await store.get_latest_attempt(rollout_id)
    assert attempt.status == "timeout" and "timed out after 0.2 s" in attempt.metadata["error"]
    spans = list(await store.query_spans(rollout_id))
    assert only(spans, "agl.exception").events[0].attributes["exception.type"] == "TimeoutError"


async def test_a_sync_agent_past_its_timeout_is_left_running_in_its_thread(store: Any) -> None:
    release = threading.Event()
    agent_threads: list[threading.Thread] = []

    @rollout
    def agent(task: str) -> float:
        agent_threads.append(threading.current_thread())
        release.wait(LIMIT)
        return 1.0

    [rollout_id] = await enqueue(store, ["stuck"], config=RolloutConfig(timeout_seconds=0.2))
    try:
        assert await run(Runner(agent, store), until_empty=True) == 1
        # The runner stopped waiting: the thread cannot be killed and is still blocked.
        assert agent_threads[0].is_alive()
        assert (await store.get_latest_attempt(rollout_id)).status == "timeout"
    finally:
        release.set()
        for thread in agent_threads:
            thread.join(LIMIT)
    assert (await store.get_latest_attempt(rollout_id)).status == "timeout"  # its late result changes nothing


async def test_resources_that_cannot_be_fetched_fail_the_attempt_without_running_the_agent(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    called: list[str] = []

    @rollout
    def agent(task: str) -> float:
        called.append(task)
        return 1.0

    [missing] = await enqueue(store, ["a"], resources_id="rs-missing")
    assert await run(Runner(agent, store), until_empty=True) == 1
    attempt = await store.get_latest_attempt(missing)
    assert attempt.status == "failed" and "'rs-missing' not found" in attempt.metadata["error"]

    async def down() -> None:
        raise StoreUnavailable("store is down")

    monkeypatch.setattr(store, "get_latest_resources", down)
    [unreachable] = await enqueue(store, ["b"])
    assert await run(Runner(agent, store), until_empty=True) == 1
    attempt = await store.get_latest_attempt(unreachable)
    assert attempt.status == "failed" and attempt.metadata["error"] == "could not fetch resources: store is down"
    assert called == []


async def test_a_required_resource_missing_fails_with_an_error_naming_the_parameter(store: Any) -> None:
    await store.add_resources({"prompt": PromptTemplate(template="{q}")})

    @rollout
    def agent(task: str, llm: LLM) -> float:
        return 1.0

    [rollout_id] = await enqueue(store, ["q"])
    assert await run(Runner(agent, store), until_empty=True) == 1
    attempt = await store.get_latest_attempt(rollout_id)
    assert attempt.status == "failed"
    assert "parameter 'llm'" in attempt.metadata["error"] and "they have: prompt" in attempt.metadata["error"]


async def test_a_final_status_the_store_refuses_is_logged_not_raised(
    store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    @rollout
    async def agent(task: str, rollout: AttemptedRollout) -> float:
        await store.update_rollout(rollout.rollout_id, status="cancelled")  # as an operator would, meanwhile
        return 1.0

    [rollout_id] = await enqueue(store, ["q"])
    with caplog.at_level(logging.INFO, logger="agl.core.runner"):
        assert await run(Runner(agent, store), until_empty=True) == 1
    assert (await store.get_rollout_by_id(rollout_id)).status == "cancelled"
    assert "was already over" in caplog.text


# --- resources by name --------------------------------------------------------------------


async def test_resources_are_injected_by_parameter_name_with_the_proxy_routed_per_attempt(store: Any) -> None:
    prompt = PromptTemplate(template="Answer: {q}")
    judge = LLM(endpoint="http://judge:8000/v1", model="judge")
    plain = LLM(endpoint="http://plain:8000/v1", model="p")
    older = await store.add_resources({"prompt": PromptTemplate(template="old {q}"), "llm": plain, "judge": judge})
    await store.add_resources(
        {"prompt": prompt, "policy": ProxyLLM(endpoint="http://proxy:4000/", model="m"), "judge": judge}
    )
    seen: dict[str, dict[str, Any]] = {}

    @rollout(name="by-name")
    def agent(
        task: str,
        llm: LLM,
        prompt_template: PromptTemplate,
        judge: LLM,
        rollout: AttemptedRollout,
        resources: NamedResources,
        temperature: float = 0.7,
    ) -> None:
        seen[task] = dict(locals())

    latest, pinned = await enqueue(store, ["latest"]), await enqueue(store, ["pinned"], resources_id=older.resources_id)
    assert await run(Runner(agent, store), until_empty=True) == 2

    got = seen["latest"]
    attempt = got["rollout"].attempt
    assert got["rollout"].rollout_id == latest[0]
    routed = f"http://proxy:4000/rollout/{latest[0]}/attempt/{attempt.attempt_id}/v1"
    assert type(got["llm"]) is LLM and got["llm"] == LLM(endpoint=routed, model="m")
    assert got["resources"]["policy"] == got["llm"]  # the agent never sees the unrouted template
    assert (got["prompt_template"], got["judge"], got["temperature"]) == (prompt, judge, 0.7)
    assert seen["pinned"]["prompt_template"].template == "old {q}"
    assert seen["pinned"]["llm"] == plain  # a plain endpoint is passed as it is
    assert (await store.get_rollout_by_id(pinned[0])).status == "succeeded"  # None: success, no reward
    assert not [span for span in await store.query_spans(pinned[0]) if span.name == "agl.reward"]


def test_rollout_decorator_forms_and_agent_checks() -> None:
    @rollout
    def bare(task: str) -> float:
        return 1.0

    @rollout(name="named")
    async def named(task: str) -> float:
        return 1.0

    assert (bare.name, bare.is_async, named.name, named.is_async) == ("bare", False, "named", True)
    with pytest.raises(TypeError, match="'kwargs' must be passable by name"):
        rollout(lambda task, **kwargs: 1.0)

    class Neither(LitAgent):
        pass

    with pytest.raises(TypeError, match="must override"):
        Neither()


async def test_a_class_based_agent_gets_the_stored_resources_and_can_route_them(store: Any) -> None:
    proxy = ProxyLLM(endpoint="http://proxy:4000", model="m")
    await store.add_resources({"policy": proxy})

    class Routed(LitAgent):
        async def rollout_async(self, task: Any, resources: NamedResources, rollout: AttemptedRollout) -> float:
            assert resources["policy"] == proxy
            self.endpoint = resolve_llm(resources["policy"], rollout).endpoint  # type: ignore[arg-type]
            return 2.0

    agent = Routed()
    [rollout_id] = await enqueue(store, ["q"])
    assert agent.is_async and agent.name == "Routed"
    assert await run(Runner(agent, store), until_empty=True) == 1
    attempt = await store.get_latest_attempt(rollout_id)
    assert attempt.status == "succeeded"
    assert agent.endpoint == f"http://proxy:4000/rollout/{rollout_id}/attempt/{attempt.attempt_id}/v1"
    assert only(list(await store.query_spans(rollout_id)), "agl.reward").attributes[semconv.REWARD] == 2.0


# --- the loop: heartbeats and stopping ----------------------------------------------------


async def test_heartbeats_cover_every_attempt_in_flight(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    started, beats_with_both = 0, 0
    in_flight: list[Any] = []  # as each heartbeat reported it
    heard = asyncio.Event()
    update_worker = store.update_worker

    async def counting_update_worker(worker_id: str, **options: Any) -> Any:
        nonlocal beats_with_both
        in_flight.append((options.get("heartbeat_stats") or {}).get("in_flight", 0))
        if started == 2:
            beats_with_both += 1
            if beats_with_both == 2:  # the previous beat, complete, saw both attempts in flight
                heard.set()
        return await update_worker(worker_id, **options)

    monkeypatch.setattr(store, "update_worker", counting_update_worker)
    last_heartbeats = []

    @rollout
    async def agent(task: int, rollout: AttemptedRollout) -> float:
        nonlocal started
        started += 1
        await asyncio.wait_for(heard.wait(), LIMIT)
        attempt = await store.get_latest_attempt(rollout.rollout_id)
        last_heartbeats.append(attempt.last_heartbeat_time)
        return 1.0

    await enqueue(store, range(2))
    runner = Runner(agent, store, max_concurrency=2, heartbeat_seconds=0.01, worker_id="wk-test")
    assert await run(runner, until_empty=True) == 2
    assert len(last_heartbeats) == 2 and None not in last_heartbeats
    assert 2 in in_flight  # a beat reported both (the last one may come after either finished)
    [worker] = await store.query_workers()
    assert worker.worker_id == "wk-test"


async def test_the_stop_event_ends_an_idle_loop_at_once(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stop, found_nothing = asyncio.Event(), asyncio.Event()
    dequeue_rollout = store.dequeue_rollout

    async def noting_dequeue(worker_id: str | None = None) -> Any:
        claimed = await dequeue_rollout(worker_id)
        if claimed is None:
            found_nothing.set()
        return claimed

    monkeypatch.setattr(store, "dequeue_rollout", noting_dequeue)
    runner = Runner(rollout(lambda task: 1.0), store, poll_seconds=LIMIT * 10)  # would idle far past LIMIT
    looping = asyncio.create_task(runner.run(stop=stop))
    await asyncio.wait_for(found_nothing.wait(), LIMIT)
    stop.set()
    assert await asyncio.wait_for(looping, LIMIT) == 0


async def test_the_stop_event_cancels_rollouts_in_flight_and_fails_their_attempts(store: Any) -> None:
    stop, started, cancelled = asyncio.Event(), asyncio.Event(), asyncio.Event()

    @rollout
    async def agent(task: str) -> float:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1.0

    [rollout_id] = await enqueue(store, ["forever"])
    looping = asyncio.create_task(Runner(agent, store).run(stop=stop))
    await asyncio.wait_for(started.wait(), LIMIT)
    stop.set()
    assert await asyncio.wait_for(looping, LIMIT) == 1
    assert cancelled.is_set()
    attempt = await store.get_latest_attempt(rollout_id)
    assert attempt.status == "failed" and attempt.metadata["error"] == STOPPED
    assert root_of(list(await store.query_spans(rollout_id))).status.status_code == "ERROR"


async def test_a_runner_that_dies_fails_a_rollout_it_claimed_but_had_not_started(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dequeue_rollout = store.dequeue_rollout
    calls = 0

    async def claim_then_fail(worker_id: str | None = None) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:  # raised at once, before the first rollout's task ever ran
            raise StoreUnavailable("store is down")
        return await dequeue_rollout(worker_id)

    monkeypatch.setattr(store, "dequeue_rollout", claim_then_fail)
    [rollout_id] = await enqueue(store, ["claimed"])
    with pytest.raises(StoreUnavailable):
        await run(Runner(rollout(lambda task: 1.0), store, max_concurrency=2))
    attempt = await store.get_latest_attempt(rollout_id)
    assert attempt.status == "failed" and attempt.metadata["error"] == STOPPED
    assert list(await store.query_spans(rollout_id)) == []  # the agent never ran


async def test_max_rollouts_bounds_the_loop(store: Any) -> None:
    ids = await enqueue(store, range(3))
    assert await run(Runner(rollout(lambda task: float(task)), store), max_rollouts=2) == 2
    statuses: Mapping[str, str] = {r.rollout_id: r.status for r in await store.query_rollouts(rollout_id_in=ids)}
    assert [statuses[i] for i in ids] == ["succeeded", "succeeded", "queuing"]


def test_runner_options_are_checked() -> None:
    store: Any = object()
    with pytest.raises(ValueError, match="max_concurrency"):
        Runner(rollout(lambda task: 1.0), store, max_concurrency=0)
    with pytest.raises(ValueError, match="positive"):
        Runner(rollout(lambda task: 1.0), store, poll_seconds=0)


async def test_an_idle_runner_woken_dequeues_at_once_instead_of_at_its_next_poll(store: Any) -> None:
    runner = Runner(rollout(lambda task: 1.0), store, worker_id="wk-idle", poll_seconds=3600)
    running = asyncio.create_task(run(runner, max_rollouts=1))
    while not await store.query_workers():  # the runner found the queue empty and is idling
        await asyncio.sleep(0)
    [rollout_id] = await enqueue(store, [{"x": 1}])
    runner.wake()
    assert await running == 1  # within LIMIT, not after an hour
    assert (await store.get_rollout_by_id(rollout_id)).status == "succeeded"


class CountingStore:
    """A real store whose dequeues are counted: an idle runner must wait for its tasks, not poll."""

    def __init__(self, store: LightningStore) -> None:
        self.store = store
        self.dequeues = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def dequeue_rollout(self, *args: Any, **kwargs: Any) -> AttemptedRollout | None:
        self.dequeues += 1
        return await self.store.dequeue_rollout(*args, **kwargs)


def test_a_runner_run_again_in_a_new_event_loop_waits_instead_of_spinning(forwarder: Any, tmp_path: Path) -> None:
    """As a script or notebook calling ``asyncio.run(runner.run(...))`` once per batch does."""
    counted: CountingStore | None = None

    @rollout
    async def agent(task: Any) -> float:
        assert counted is not None
        while counted.dequeues < 2:  # the runner came back and found the queue empty
            await asyncio.sleep(0)
        for _ in range(100):  # the runner idles meanwhile, with this rollout in flight
            await asyncio.sleep(0)
        return 1.0

    runner = Runner(agent, object(), max_concurrency=2, poll_seconds=3600)  # type: ignore[arg-type]

    async def one_batch() -> int:
        nonlocal counted
        counted = CountingStore(open_store(f"sqlite:///{tmp_path / 'store.db'}", watchdog_interval=None))
        runner.store = counted  # type: ignore[assignment]
        await counted.enqueue_rollout({"x": 1})
        try:
            assert await run(runner, until_empty=True) == 1
            assert await asyncio.to_thread(flush_spans)
        finally:
            await counted.store.close()
        return counted.dequeues

    assert [asyncio.run(one_batch()) for _ in range(2)] == [3, 3]  # the rollout, empty twice: no polling loop
