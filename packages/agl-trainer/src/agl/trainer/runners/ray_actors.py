"""Mode ``ray``: each runner is a Ray actor, so runners spread over a cluster's machines.

Actors reach the store over HTTP (they may run anywhere): the trainer's store if it is a store
server client already, else the store served from a thread of the trainer on 127.0.0.1 (its token
given to each actor's constructor, which no command line shows), which only actors on this machine
can reach (for a real cluster, run ``agl store serve`` where every node can reach it and give the
trainer that URL). The agent crosses as ``module:object``; the actors get the trainer's
``sys.path`` so that a module beside the trainer's script imports there.

Ray is the ``ray`` extra. If Ray is not initialised yet, `start` connects with
``ray.init(address=address)`` (``None``: a local cluster, or ``$RAY_ADDRESS``) and `stop`
disconnects again; a caller that initialised Ray keeps its session.
"""

from __future__ import annotations

import asyncio
import os
import sys
from contextlib import suppress
from typing import Any

from agl.core.agent import LitAgent
from agl.core.ids import new_id
from agl.core.runner import Runner, check_runner_options
from agl.core.store import open_store
from agl.core.store.base import LightningStore
from agl.core.store.http import HttpLightningStore
from agl.trainer.runners.base import RunnerGroup, RunnerLost, check_not_negative, fail_attempts_of
from agl.trainer.runners.specs import child_python_path, load_agent, remote_agent_spec
from agl.trainer.runners.store_server import StoreServer, http_store


class RunnerActor:
    """One runner inside a Ray actor process (an async actor: `stop` and `wake` run on the same
    loop as `run`, between its awaits). ``store_token``: the store server's (the trainer's own, or
    the one the trainer's client sends), passed here because an actor on another machine does not
    inherit the trainer's environment; None: the actor's own ``AGL_STORE_TOKEN``."""

    def __init__(
        self,
        store_url: str,
        store_token: str | None,
        agent: str,
        worker_id: str,
        python_path: str,
        options: dict[str, Any],
    ) -> None:
        sys.path[:0] = [entry for entry in python_path.split(os.pathsep) if entry not in sys.path]
        self.store = open_store(store_url) if store_token is None else HttpLightningStore(store_url, token=store_token)
        self.runner = Runner(load_agent(agent), self.store, worker_id=worker_id, **options)
        self.stopped = asyncio.Event()

    async def run(self) -> int:
        try:
            return await self.runner.run(stop=self.stopped)
        finally:
            await self.store.close()

    async def stop(self) -> None:
        self.stopped.set()

    async def wake(self) -> None:
        self.runner.wake()


class RayRunners(RunnerGroup):
    """``address``: the cluster to connect to when Ray is not initialised. ``actor_options``: given
    to ``.options()`` of every actor (``num_cpus``, ``resources``, ``runtime_env``…).
    An actor that dies (its node went away, it was killed) is replaced and the attempts it held
    are failed for the store's retry config, up to ``max_restarts`` times per fit.
    ``stop_seconds``: how long actors may take to stop before they are killed."""

    mode = "ray"

    def __init__(
        self,
        store: LightningStore,
        agent: LitAgent | str | None,
        *,
        address: str | None = None,
        actor_options: dict[str, Any] | None = None,
        max_concurrency: int = 1,
        heartbeat_seconds: float = 5.0,
        poll_seconds: float = 1.0,
        max_restarts: int = 10,
        stop_seconds: float = 10.0,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError("runner_mode='ray' needs Ray: pip install 'agl-trainer[ray]'") from None
        check_runner_options(max_concurrency, heartbeat_seconds, poll_seconds)
        check_not_negative(max_restarts=max_restarts, stop_seconds=stop_seconds)
        self.agent_spec = remote_agent_spec(agent, self.mode)
        self._ray = ray
        self.store = store
        self.address = address
        self.actor_options = dict(actor_options or {})
        self.runner_options = {
            "max_concurrency": max_concurrency,
            "heartbeat_seconds": heartbeat_seconds,
            "poll_seconds": poll_seconds,
        }
        self.max_restarts = max_restarts
        self.restarts = 0
        self.stop_seconds = stop_seconds
        self.actors: list[Any] = []
        self.worker_ids: list[str] = []
        self._runs: list[asyncio.Future[int]] = []
        self._store_url = ""
        self._store_token: str | None = None
        self._server: StoreServer | None = None
        self._connected_here = False

    async def start(self, n: int) -> None:
        ray = self._ray
        if not ray.is_initialized():
            ray.init(address=self.address)
            self._connected_here = True
        self._store_url, self._store_token, self._server = http_store(self.store)
        for _ in range(n):
            self._launch(None)

    def _launch(self, index: int | None) -> None:
        """Start an actor in slot ``index`` (a new slot for ``None``)."""
        worker_id = new_id("wk")
        actor = (
            self._ray.remote(RunnerActor)
            .options(**self.actor_options)
            .remote(
                self._store_url,
                self._store_token,
                self.agent_spec,
                worker_id,
                child_python_path(),
                self.runner_options,
            )
        )
        run = asyncio.wrap_future(actor.run.remote().future())
        if index is None:
            self.actors.append(actor)
            self.worker_ids.append(worker_id)
            self._runs.append(run)
        else:
            self.actors[index], self.worker_ids[index], self._runs[index] = actor, worker_id, run

    def wake(self) -> None:
        for actor in self.actors:
            actor.wake.remote()

    async def watch(self) -> None:
        if not self._runs:
            raise RunnerLost("no runners were started")
        while True:
            await asyncio.wait(self._runs, return_when=asyncio.FIRST_COMPLETED)
            for index, run in enumerate(self._runs):
                if not run.done():
                    continue
                error = run.exception()
                reason = f"Ray runner actor {self.worker_ids[index]} ended: {type(error).__name__}"
                await fail_attempts_of(self.store, self.worker_ids[index], reason)
                if self.restarts >= self.max_restarts:
                    raise RunnerLost(f"Ray runner actors ended {self.restarts + 1} times") from error
                self.restarts += 1
                self._launch(index)

    async def stop(self) -> None:
        for actor in self.actors:
            with suppress(Exception):  # a dead actor cannot be told anything
                actor.stop.remote()
        if self._runs:
            await asyncio.wait(self._runs, timeout=self.stop_seconds)
        for actor in self.actors:
            with suppress(Exception):
                self._ray.kill(actor)
        await asyncio.gather(*self._runs, return_exceptions=True)
        self.actors, self.worker_ids, self._runs = [], [], []
        if self._server is not None:
            await asyncio.to_thread(self._server.stop)
            self._server = None
        if self._connected_here:
            self._ray.shutdown()
            self._connected_here = False
