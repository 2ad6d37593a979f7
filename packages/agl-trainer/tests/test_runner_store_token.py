"""The store the trainer serves to its runners (command programs, Ray actors) is behind a random
token of its own: other users of the machine could otherwise read its spans and the LLM proxy's key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from test_runner_modes import LIMIT, PROGRAM_COMMAND, PROGRAM_ENV, TRAIN, job_rollouts

from agl.core import open_store
from agl.core.errors import AglError
from agl.core.store.base import LightningStore
from agl.core.store.http import TOKEN_ENV, HttpLightningStore
from agl.core.types import LLM
from agl.trainer import Trainer
from agl.trainer.runners.store_server import StoreServer, http_store


@pytest.fixture
async def served(store: LightningStore) -> AsyncIterator[StoreServer]:
    server = StoreServer(store)
    yield server
    await asyncio.to_thread(server.stop)


async def test_the_served_store_refuses_a_client_without_its_token(
    served: StoreServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any local user could read rollouts, spans and resources (the proxy's api_key) from it."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        assert (await client.get("/v1/agl/resources")).status_code == 401
        assert (await client.post("/v1/traces", content=b"")).status_code == 401
        assert (await client.get("/health")).status_code == 200
    anonymous = HttpLightningStore(served.url, token="")
    try:
        with pytest.raises(AglError, match="HTTP 401"):
            await anonymous.query_rollouts()
    finally:
        await anonymous.close()
    trusted = HttpLightningStore(served.url, token=served.token)
    try:
        assert list(await trusted.query_rollouts()) == []
    finally:
        await trusted.close()


async def test_each_served_store_has_a_token_of_its_own(store: LightningStore) -> None:
    servers = [StoreServer(store), StoreServer(store)]
    try:
        assert servers[0].token != servers[1].token and len(servers[0].token) >= 32
    finally:
        for server in servers:
            await asyncio.to_thread(server.stop)


@pytest.mark.parametrize(
    ("given", "in_environment", "sent"), [(None, None, None), ("in-code", None, "in-code"), (None, "env", "env")]
)
async def test_a_users_store_server_is_used_with_the_token_its_client_sends(
    given: str | None, in_environment: str | None, sent: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is served from the trainer; runners get the token the trainer's client sends."""
    if in_environment is None:
        monkeypatch.delenv(TOKEN_ENV, raising=False)
    else:
        monkeypatch.setenv(TOKEN_ENV, in_environment)
    user_store = HttpLightningStore("http://127.0.0.1:9", token=given)
    try:
        assert http_store(user_store) == ("http://127.0.0.1:9", sent, None)
    finally:
        await user_store.close()


async def test_runner_processes_get_a_token_given_in_code(
    store: LightningStore, served: StoreServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer whose store client was given its token in code, with no AGL_STORE_TOKEN: its
    runner processes, which open the store by URL, were refused (401) and no rollout ran."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    client = HttpLightningStore(served.url, token=served.token)
    try:
        trainer = Trainer("baseline", store=client, agent="agents_for_runner_tests:double", runner_mode="processes")
        metrics = await asyncio.wait_for(trainer.fit_async(None, TRAIN[:2]), LIMIT)
        assert metrics["train/succeeded"] == 2.0
    finally:
        await client.close()


@pytest.mark.parametrize("exporter", ["agl_store", "otlp"])
async def test_a_program_gets_the_served_stores_token_not_an_inherited_one(
    exporter: str, tmp_path: Path, tracing: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An AGL_STORE_TOKEN meant for another store server would be refused by the trainer's own:
    the program's spans (through agl's exporter or plain OTLP) must carry the served store's token."""
    monkeypatch.setenv(TOKEN_ENV, "a-token-for-some-other-store")
    store = open_store(f"sqlite:///{tmp_path}/store.db")
    try:
        options = {
            "command": PROGRAM_COMMAND,
            "reward": "agents_for_runner_tests:reward_from_output",
            "env": {**PROGRAM_ENV, "OTEL_TRACES_EXPORTER": exporter},
        }
        trainer = Trainer("baseline", store=store, runner_mode="command", runner_options=options)
        resources = {"llm": LLM(endpoint="http://127.0.0.1:9/v1", model="toy-model", api_key="secret")}
        metrics = await asyncio.wait_for(trainer.fit_async(None, TRAIN[:1], None, resources), LIMIT)
        assert metrics["train/succeeded"] == 1.0 and metrics["train/reward_mean"] == 2.0  # -1 without its span
        [rollout] = await job_rollouts(store)
        assert "program.work" in {span.name for span in await store.query_spans(rollout.rollout_id)}
    finally:
        await store.close()
