"""Mode ``command``: an unchanged program per rollout, told its task and model through its environment.

The program is any command line (``opentelemetry-instrument python my_agent.py``). For each
rollout it gets:

- ``AGL_TASK``: the task as JSON; ``AGL_RESOURCES``: all resources as JSON;
- ``AGL_ROLLOUT_ID``, ``AGL_ATTEMPT_ID``: which attempt it is (agl's tracing files spans there);
- ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``OPENAI_MODEL``: the rollout's model (the ``llm``
  resource, else the first `LLM`; a `ProxyLLM` routed to this attempt), when there is one;
- ``AGL_STORE`` and ``OTEL_EXPORTER_OTLP_ENDPOINT``: a store server, with ``agl.rollout.id`` and
  ``agl.attempt.id`` in ``OTEL_RESOURCE_ATTRIBUTES``, so spans from ``opentelemetry-instrument``
  land in this attempt whether they go through agl's exporter or plain OTLP; its token in
  ``AGL_STORE_TOKEN`` and ``OTEL_EXPORTER_OTLP_HEADERS`` (the trainer's own server's, else the
  one the trainer's store client sends).

The program (the command's first word, found on the ``PATH`` it will run with) must exist and be
executable when the runners are made: a missing one is one error up front, not a failure per rollout.
A non-zero exit fails the attempt. The reward is ``reward(task, output, spans)`` (sync or async,
named ``module:function`` or given as a callable): ``output`` is the program's stdout, ``spans``
the attempt's spans in the store once the program has exited; without a reward function the
program reports its own (``agl.reward`` spans) or none. When the program exits, or the runner
stops or the attempt times out, the program's whole process group is ended: nothing it started
outlives its attempt. On Linux the program also gets SIGTERM when the trainer dies (even by SIGKILL,
which leaves no chance to end the group): see `_tied_to_this_process`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any
from urllib.parse import quote

from pydantic import TypeAdapter

from agl.core.agent import LitAgent, resolve_llm
from agl.core.store.base import LightningStore
from agl.core.store.http import TOKEN_ENV
from agl.core.tracing.semconv import ATTEMPT_ID, ROLLOUT_ID
from agl.core.types import LLM, AttemptedRollout, NamedResources, Span
from agl.trainer.process_groups import group_alive, signal_group
from agl.trainer.runners.inprocess import AsyncRunners
from agl.trainer.runners.specs import load_object
from agl.trainer.runners.store_server import StoreServer, http_store

logger = logging.getLogger(__name__)

STOP_SECONDS = 3.0
GROUP_POLL_SECONDS = 0.05
RewardFunction = Callable[[Any, str, list[Span]], Any]
_resources_adapter: TypeAdapter[NamedResources] = TypeAdapter(NamedResources)


class CommandFailed(RuntimeError):
    """The program exited with a non-zero status."""


class CommandAgent(LitAgent):
    """Runs ``command`` once per rollout (see the module docstring for what it is given)."""

    def __init__(
        self,
        command: Sequence[str] | str,
        *,
        store: LightningStore,
        store_url: str,
        store_token: str | None = None,
        reward: RewardFunction | str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``store_token``: the token of the store server at ``store_url``; None: an
        ``AGL_STORE_TOKEN`` in ``env`` or this process's environment."""
        self.command = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.command:
            raise ValueError("the command is empty")
        self.env = dict(env or {})
        check_program(self.command[0], self.env.get("PATH", os.environ.get("PATH")))
        _setpriv()  # probed here, once, not on the event loop at the first rollout
        self.store = store
        self.store_url = store_url
        self.store_token = store_token
        self.reward = load_object(reward) if isinstance(reward, str) else reward
        super().__init__(name=os.path.basename(self.command[0]))

    async def rollout_async(self, task: Any, resources: NamedResources, rollout: AttemptedRollout) -> float | None:
        environment = {**os.environ, **self.env, **self.environment(task, resources, rollout)}
        # Output to a file, not a pipe: a background process the program leaves behind would hold
        # a pipe open, and the rollout would wait for it rather than for the program.
        with tempfile.TemporaryFile() as output:
            process = await asyncio.create_subprocess_exec(
                *_tied_to_this_process(self.command), env=environment, stdout=output, start_new_session=True
            )
            try:
                await process.wait()
            finally:  # also when the runner stops or the attempt timed out: the program goes too
                await asyncio.shield(_end_group(process))
            output.seek(0)
            stdout = output.read()
        if process.returncode != 0:
            raise CommandFailed(f"{shlex.join(self.command)} {_how_it_ended(process.returncode)}")
        if self.reward is None:
            return None
        spans = list(await self.store.query_spans(rollout.rollout_id, rollout.attempt.attempt_id))
        value = self.reward(task, stdout.decode(errors="replace"), spans)
        if inspect.isawaitable(value):
            value = await value
        return value  # type: ignore[no-any-return]

    def environment(self, task: Any, resources: NamedResources, rollout: AttemptedRollout) -> dict[str, str]:
        rollout_id, attempt_id = rollout.rollout_id, rollout.attempt.attempt_id
        identity = f"{ROLLOUT_ID}={rollout_id},{ATTEMPT_ID}={attempt_id}"
        inherited = self.env.get("OTEL_RESOURCE_ATTRIBUTES") or os.environ.get("OTEL_RESOURCE_ATTRIBUTES")
        environment = {
            "AGL_TASK": json.dumps(task),
            "AGL_RESOURCES": _resources_adapter.dump_json(resources).decode(),
            "AGL_ROLLOUT_ID": rollout_id,
            "AGL_ATTEMPT_ID": attempt_id,
            "AGL_STORE": self.store_url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.store_url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_RESOURCE_ATTRIBUTES": f"{inherited},{identity}" if inherited else identity,
        }
        token = self.store_token or self.env.get(TOKEN_ENV) or os.environ.get(TOKEN_ENV)
        if token:
            environment[TOKEN_ENV] = token
            environment["OTEL_EXPORTER_OTLP_HEADERS"] = f"Authorization={quote(f'Bearer {token}', safe='')}"
        llm = _chosen_llm(resources)
        if llm is not None:
            routed = resolve_llm(llm, rollout)
            environment["OPENAI_BASE_URL"] = routed.endpoint
            environment["OPENAI_MODEL"] = routed.model
            environment["OPENAI_API_KEY"] = routed.api_key or os.environ.get("OPENAI_API_KEY") or "none"
        return environment


def check_program(program: str, path: str | None) -> None:
    """Refuse a program that is not there to run, as the process would look it up: a name on
    ``path`` (a PATH value), or a file when it has a directory in it (relative to the current one)."""
    if shutil.which(program, path=path) is not None:
        return
    if os.sep in program or (os.altsep is not None and os.altsep in program):
        raise ValueError(f"the command's program {program!r} is not an executable file")
    raise ValueError(f"the command's program {program!r} is not on PATH")


def _tied_to_this_process(command: list[str]) -> list[str]:
    """``command`` run so that Linux sends it SIGTERM when the trainer dies: through util-linux's
    ``setpriv --pdeathsig``, which sets the parent-death signal and execs the command in the same
    process. Elsewhere, or without a ``setpriv`` that knows the option (util-linux 2.33+), the
    command as it is.

    Why: the trainer ends the program's group when a rollout ends or the runners stop, but a trainer
    killed by SIGKILL or the OOM killer cannot, and the program would go on holding its ports, GPU
    memory and API quotas. Only the program itself is tied; what it starts is not, nor a program
    whose trainer died in the instant before the signal was set. Not through ``preexec_fn``: that
    turns off CPython's vfork, so every program would fork the whole trainer (78 ms a spawn at
    2 GiB resident, against 6 ms), and runs Python in a child of a threaded process. The signal
    follows the thread that forks, the trainer's event loop thread, which waits on the program and
    ends its group before the rollout returns.
    """
    setpriv = _setpriv()
    return [setpriv, "--pdeathsig", "TERM", "--", *command] if setpriv else command


@functools.cache
def _setpriv() -> str | None:
    """The absolute path of a ``setpriv`` that sets a parent-death signal, checked once by running it."""
    found = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if found is None:
        return None
    found = os.path.abspath(found)
    try:
        probe = subprocess.run([found, "--pdeathsig", "TERM", "--", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if probe.returncode != 0:
        logger.warning(
            "setpriv cannot set a parent-death signal (util-linux before 2.33): command programs"
            " will outlive a trainer killed by SIGKILL"
        )
        return None
    return found


def _chosen_llm(resources: NamedResources) -> LLM | None:
    named = resources.get("llm")
    if isinstance(named, LLM):
        return named
    return next((value for value in resources.values() if isinstance(value, LLM)), None)


async def _end_group(process: asyncio.subprocess.Process) -> None:
    """End the program's process group: the program if it still runs, and whatever it left behind
    (which would outlive the trainer and file spans under an attempt already over). SIGTERM, then
    SIGKILL to whatever is left after `STOP_SECONDS` (within the runner's grace for a cancelled agent)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STOP_SECONDS
    if signal_group(process.pid, signal.SIGTERM):  # usually not: the program ran alone and exited
        with suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), STOP_SECONDS)
        while group_alive(process.pid) and loop.time() < deadline:  # not our children: no wait()
            await asyncio.sleep(GROUP_POLL_SECONDS)
        signal_group(process.pid, signal.SIGKILL)
    await process.wait()


def _how_it_ended(returncode: int) -> str:
    """A status, or the signal that killed the program (SIGKILL is often the kernel's OOM killer)."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = f" ({signal.Signals(-returncode).name})"
    except ValueError:  # a real-time signal has no name
        name = ""
    return f"was killed by signal {-returncode}{name}"


class CommandRunners(AsyncRunners):
    """Runners on the trainer's loop, each running the command for its rollouts; the store is
    served over HTTP for the programs' spans unless it is a store server already."""

    mode = "command"

    def __init__(
        self,
        store: LightningStore,
        agent: LitAgent | str | None,
        *,
        command: Sequence[str] | str,
        reward: RewardFunction | str | None = None,
        env: dict[str, str] | None = None,
        max_concurrency: int = 1,
    ) -> None:
        if agent is not None:
            raise ValueError("runner_mode='command' runs a command, not an agent: give command=..., not an agent")
        self._command = CommandAgent(command, store=store, store_url="", reward=reward, env=env)
        super().__init__(store, self._command, max_concurrency=max_concurrency)
        self._server: StoreServer | None = None

    async def start(self, n: int) -> None:
        self._command.store_url, self._command.store_token, self._server = http_store(self.store)
        await super().start(n)

    async def stop(self) -> None:
        await super().stop()
        if self._server is not None:
            await asyncio.to_thread(self._server.stop)
            self._server = None
