"""The runner: takes rollouts from a store and runs an agent on each, reporting back to the store.

For each rollout: dequeue, fetch its resources, mark the attempt running, run the agent inside
the rollout's tracing context under one root span, record a returned finite number as the final
reward (or the exception, `sys.exit` and a cancellation from inside the agent included, as a
failed attempt), flush the spans, and only then set the attempt's final status, so whoever sees
the rollout finished also sees all of its spans. A background task heartbeats meanwhile.

Timeouts (``RolloutConfig.timeout_seconds``, counted from the dequeue, which is when the store
starts the attempt) are enforced by cancelling. An async agent is cancelled and given
`CANCEL_GRACE_SECONDS` to unwind. A sync agent runs in a daemon thread, and a thread cannot be
killed: the runner stops waiting, marks the attempt ``timeout`` and moves on, while the thread
runs to its end (its later spans still land under the attempt; its result is dropped).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from agl.core.agent import LitAgent
from agl.core.errors import InvalidTransition, ResourcesNotFound
from agl.core.ids import new_id
from agl.core.store.base import LightningStore
from agl.core.tracing import rollout_context, run_in_context, semconv
from agl.core.tracing.configure import flush_spans, setup_tracing
from agl.core.tracing.emitters import emit_exception, emit_reward, is_reward_number
from agl.core.tracing.exporter import route_rollout
from agl.core.types import AttemptedRollout, AttemptStatus, NamedResources

logger = logging.getLogger(__name__)

ROOT_SPAN = "agent.rollout"
"""Name of the span around each agent run; every span of the attempt nests under it."""
CANCEL_GRACE_SECONDS = 5.0
"""How long a cancelled async agent may take to unwind before the runner stops waiting for it."""
STOPPED = "the runner stopped before the rollout finished"


class AgentExited(RuntimeError):
    """The agent called `sys.exit`: that ends its rollout as failed, not the runner's process
    (asyncio lets a `SystemExit` out of any task, so one agent would stop every rollout)."""

    def __init__(self, code: object) -> None:
        super().__init__(f"the agent called sys.exit({code!r})")


class AgentInterrupted(RuntimeError):
    """A sync agent raised `KeyboardInterrupt` in its thread: no Ctrl-C reaches a worker thread, so it
    is the agent's own error, and it ends its rollout as failed, not the runner."""

    def __init__(self) -> None:
        super().__init__("the agent raised KeyboardInterrupt in its thread")


class AgentCancelled(RuntimeError):
    """The agent's task ended cancelled though the runner did not cancel it."""

    def __init__(self) -> None:
        super().__init__("the agent's task was cancelled from inside the agent, not by the runner")


class Runner:
    """Runs ``agent`` on rollouts from ``store``; up to ``max_concurrency`` at once.

    Async agents share the runner's event loop; sync agents each get a thread. ``poll_seconds``
    is how long the runner idles when the queue is empty before asking again, unless `wake` is
    called first.
    """

    def __init__(
        self,
        agent: LitAgent,
        store: LightningStore,
        *,
        worker_id: str | None = None,
        max_concurrency: int = 1,
        heartbeat_seconds: float = 5.0,
        poll_seconds: float = 1.0,
    ) -> None:
        check_runner_options(max_concurrency, heartbeat_seconds, poll_seconds)
        if not isinstance(agent, LitAgent):  # else every rollout would fail on a missing attribute
            raise TypeError(f"the agent is a {type(agent).__name__}, not a LitAgent: decorate a function with @rollout")
        self.agent = agent
        self.store = store
        self.worker_id = worker_id or new_id("wk")
        self.max_concurrency = max_concurrency
        self.heartbeat_seconds = heartbeat_seconds
        self.poll_seconds = poll_seconds
        self._active: dict[str, AttemptedRollout] = {}  # by attempt id: claimed and not yet finished
        self._finished = 0
        self._woken = asyncio.Event()

    def wake(self) -> None:
        """Ask the store for work now instead of after ``poll_seconds``: code in this event loop
        that has just queued rollouts (the trainer) calls it, so idle runners start at once."""
        self._woken.set()

    async def run(
        self, *, max_rollouts: int | None = None, until_empty: bool = False, stop: asyncio.Event | None = None
    ) -> int:
        """Run rollouts until ``max_rollouts`` were taken, the queue is empty (``until_empty``;
        rollouts in flight may requeue, so they finish first) or ``stop`` is set; returns how many
        attempts were taken, which is more than the rollouts when the store requeued some (their
        ``retry_condition``, e.g. attempts it marked ``unresponsive`` after a server outage) and
        this runner took them again. On ``stop``, or if this call is cancelled, rollouts in flight
        are cancelled and their attempts marked failed."""
        setup_tracing(store=self.store)
        # An event is bound to the first loop that waits on it: one per run, so a runner run again
        # under another loop (one `asyncio.run` per batch) idles instead of polling without pause.
        # A wake before the run needs no keeping: the run asks the store first.
        self._woken = asyncio.Event()
        stopped = asyncio.ensure_future((stop or asyncio.Event()).wait())
        heartbeat = asyncio.ensure_future(self._heartbeat())
        tasks: set[asyncio.Task[None]] = set()
        taken = 0
        loop = asyncio.get_running_loop()
        try:
            while not stopped.done() and (max_rollouts is None or taken < max_rollouts):
                if len(tasks) >= self.max_concurrency:
                    await _first_of({*tasks, stopped})
                    continue
                attempted = await self.store.dequeue_rollout(self.worker_id)
                if attempted is None:
                    if until_empty and not tasks:
                        break
                    woken = asyncio.ensure_future(self._woken.wait())
                    await _first_of({*tasks, stopped, woken}, timeout=self.poll_seconds)
                    woken.cancel()
                    self._woken.clear()
                    continue
                taken += 1
                timeout = attempted.config.timeout_seconds
                deadline = None if timeout is None else loop.time() + timeout
                self._active[attempted.attempt.attempt_id] = attempted
                task = asyncio.create_task(self._run_one(attempted, deadline))
                tasks.add(task)
                task.add_done_callback(lambda done: _forget(tasks, done))
            while tasks and not stopped.done():
                await _first_of({*tasks, stopped})
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for attempted in list(self._active.values()):  # cancelled before it started: nobody finished it
                await self._finish(attempted, "failed", STOPPED)
            heartbeat.cancel()
            stopped.cancel()
            await asyncio.gather(heartbeat, stopped, return_exceptions=True)
        return taken

    async def _run_one(self, attempted: AttemptedRollout, deadline: float | None) -> None:
        # The rollout's spans go to this runner's store, even when the process's exporter was made
        # for another one (an earlier fit's, another runner's).
        with route_rollout(attempted.rollout_id, self.store):
            try:
                await self._attempt(attempted, deadline)
            except BaseException as error:  # cancelled (the runner stops) or a bug: never leave the attempt open
                reason = STOPPED if isinstance(error, asyncio.CancelledError) else f"runner error: {_describe(error)}"
                await self._finish(attempted, "failed", reason)
                raise

    async def _attempt(self, attempted: AttemptedRollout, deadline: float | None) -> None:
        try:
            resources = await self._fetch_resources(attempted)
        except Exception as error:
            await self._finish(attempted, "failed", f"could not fetch resources: {error}")
            return
        try:
            await self.store.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id, status="running")
        except InvalidTransition as error:  # the watchdog or a cancel got there first
            logger.info("attempt %s ended before its agent started: %s", attempted.attempt.attempt_id, error)
            self._active.pop(attempted.attempt.attempt_id, None)
            return
        status, reason = await self._execute(attempted, resources, deadline)
        await self._finish(attempted, status, reason)

    async def _fetch_resources(self, attempted: AttemptedRollout) -> NamedResources:
        """The rollout's own resources if it names them, else the latest (none at all is fine)."""
        if attempted.resources_id is None:
            latest = await self.store.get_latest_resources()
            return dict(latest.resources) if latest is not None else {}
        update = await self.store.get_resources_by_id(attempted.resources_id)
        if update is None:
            raise ResourcesNotFound(attempted.resources_id)
        return dict(update.resources)

    async def _execute(
        self, attempted: AttemptedRollout, resources: NamedResources, deadline: float | None
    ) -> tuple[AttemptStatus, str | None]:
        """Run the agent under the root span; returns the attempt's status and, if it failed, why."""
        tracer = trace.get_tracer("agl")
        with (
            rollout_context(attempted.rollout_id, attempted.attempt.attempt_id),
            tracer.start_as_current_span(ROOT_SPAN, attributes={semconv.AGENT_NAME: self.agent.name}) as span,
        ):
            work = self._start_agent(attempted, resources)  # inside the context: the agent's spans nest
            loop = asyncio.get_running_loop()
            try:
                done, _ = await asyncio.wait({work}, timeout=None if deadline is None else deadline - loop.time())
            except asyncio.CancelledError:  # the runner stops
                await _abandon(work)
                span.set_status(Status(StatusCode.ERROR, STOPPED))
                raise
            if not done:
                await _abandon(work)
                reason = f"timed out after {attempted.config.timeout_seconds} s"
                emit_exception(TimeoutError(reason))
                span.set_status(Status(StatusCode.ERROR, reason))
                return "timeout", reason
            try:
                reward = _as_reward(_outcome(work))
            except Exception as error:
                emit_exception(error)
                span.set_status(Status(StatusCode.ERROR, _describe(error)))
                return "failed", _describe(error)
            if reward is not None:
                emit_reward(reward)
            return "succeeded", None

    def _start_agent(self, attempted: AttemptedRollout, resources: NamedResources) -> asyncio.Future[Any]:
        if self.agent.is_async:
            return asyncio.ensure_future(_contained(self.agent.rollout_async(attempted.input, resources, attempted)))
        return _in_thread(run_in_context(self.agent.rollout), attempted.input, resources, attempted)

    async def _finish(self, attempted: AttemptedRollout, status: AttemptStatus, reason: str | None) -> None:
        """Flush spans, then set the final status; a store that already ended the attempt wins."""
        attempt_id = attempted.attempt.attempt_id
        try:
            await asyncio.to_thread(flush_spans)
            await self.store.update_attempt(
                attempted.rollout_id, attempt_id, status=status, metadata={"error": reason} if reason else {}
            )
        except InvalidTransition as error:
            logger.info("attempt %s was already over when the runner tried to end it: %s", attempt_id, error)
        except Exception as error:
            logger.error("could not set attempt %s to %s: %s", attempt_id, status, error)
        finally:
            if self._active.pop(attempt_id, None) is not None:
                self._finished += 1

    async def _heartbeat(self) -> None:
        """Every ``heartbeat_seconds``: the worker; the store heartbeats every attempt it holds."""
        while True:
            try:
                await self._beat()
            except Exception as error:
                logger.warning("heartbeat of worker %s failed: %s", self.worker_id, error)
            await asyncio.sleep(self.heartbeat_seconds)

    async def _beat(self) -> None:
        stats = {"in_flight": len(self._active), "finished": self._finished}
        await self.store.update_worker(self.worker_id, heartbeat_stats=stats)


def check_runner_options(max_concurrency: int, heartbeat_seconds: float, poll_seconds: float) -> None:
    """`Runner`'s checks of its options, for whoever starts runners in other processes: there, a
    bad value would only show as a child that keeps dying."""
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
    if heartbeat_seconds <= 0 or poll_seconds <= 0:
        raise ValueError("heartbeat_seconds and poll_seconds must be positive")


async def _first_of(waitables: set[asyncio.Future[Any]], timeout: float | None = None) -> None:
    await asyncio.wait(waitables, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)


def _in_thread(function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """Run ``function`` in a daemon thread (a stuck agent must not block interpreter exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def deliver(setter: Callable[[Any], None], value: Any) -> None:
        def settle() -> None:
            if not future.done():  # not abandoned after a timeout
                setter(value)

        with suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(settle)

    def target() -> None:
        try:
            result = function(*args)
        except SystemExit as error:
            deliver(future.set_exception, _caused_by(AgentExited(error.code), error))
        except KeyboardInterrupt as error:
            deliver(future.set_exception, _caused_by(AgentInterrupted(), error))
        except BaseException as error:
            deliver(future.set_exception, error)
        else:
            deliver(future.set_result, result)

    threading.Thread(target=target, name="agl-agent", daemon=True).start()
    return future


async def _contained(work: Awaitable[Any]) -> Any:
    try:
        return await work
    except SystemExit as error:  # chained: the exception span's stack trace shows where it exited
        raise AgentExited(error.code) from error


def _caused_by(error: Exception, cause: BaseException) -> Exception:
    """``error`` chained to ``cause``, as ``raise error from cause`` would: the stack trace recorded
    for it then shows where in the agent ``cause`` was raised."""
    error.__cause__ = cause
    return error


async def _abandon(work: asyncio.Future[Any]) -> None:
    """Cancel the agent; an async one gets a grace period to unwind, a thread cannot be stopped."""
    work.cancel()
    if isinstance(work, asyncio.Task):
        await asyncio.wait({work}, timeout=CANCEL_GRACE_SECONDS)
        if not work.done():
            logger.warning("agent task ignored cancellation for %s s; leaving it behind", CANCEL_GRACE_SECONDS)
        work.add_done_callback(lambda task: task.cancelled() or task.exception())  # never "never retrieved"


def _outcome(work: asyncio.Future[Any]) -> Any:
    """The agent's result. A cancellation here is the agent's own (a task or library it uses
    cancelled it): the runner's would have reached it at its ``await``, so it is an agent error."""
    try:
        return work.result()
    except asyncio.CancelledError:
        raise AgentCancelled() from None


def _as_reward(result: object) -> float | None:
    if result is None:
        return None
    if inspect.iscoroutine(result):  # closed: the "never awaited" warning would only add noise
        result.close()
        raise TypeError("the agent returned a coroutine that nothing awaited: make the agent async, or await the call")
    if not is_reward_number(result):  # numpy scalars too, as `emit_reward` takes them
        raise TypeError(f"the agent returned {type(result).__name__}; expected a float reward or None")
    reward = float(result)
    if not math.isfinite(reward):  # stores keep no NaN or infinity: it would vanish or poison a mean
        raise ValueError(f"the agent returned the reward {reward}; a reward must be a finite number")
    return reward


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _forget(tasks: set[asyncio.Task[None]], task: asyncio.Task[None]) -> None:
    tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("rollout task failed", exc_info=task.exception())
