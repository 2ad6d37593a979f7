"""Schema-driven fuzzing of every route, and random bodies at the OTLP endpoint.

Schemathesis generates valid and deliberately invalid requests from the server's own OpenAPI
spec (malformed, truncated, wrong-typed and oversized values). Nothing may answer 5xx, every
answer must match the spec, and afterwards the store must still be consistent and serving.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from google.rpc.status_pb2 import Status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agl.core.server import ServerSettings, create_app
from agl.core.store import SqliteLightningStore
from agl.core.testing.server import ServingThread

FOLDER = Path(tempfile.mkdtemp(prefix="agl-fuzz-"))
STORE = SqliteLightningStore(FOLDER / "fuzz.db", watchdog_interval=None)
APP = create_app(ServerSettings(max_body_bytes=256 * 1024, max_decompressed_bytes=512 * 1024), STORE)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module", autouse=True)
def seeded_store() -> Iterator[None]:
    """Something for generated requests to hit: a running rollout with a span, and resources. The
    store's folder goes at the end (made at import, for the schema: each run left one behind)."""

    async def seed() -> None:
        started = await STORE.start_rollout({"q": 1}, rollout_id="ro-fuzz", worker_id="w-fuzz")
        await STORE.add_resources({})
        await STORE.enqueue_rollout({"q": 2})
        assert started.attempt.attempt_id

    asyncio.run(seed())
    yield
    asyncio.run(STORE.close())
    shutil.rmtree(FOLDER)


@schema.exclude(path="/v1/traces").parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_route_fails_or_strays_from_its_spec(case: schemathesis.Case) -> None:
    if case.path.endswith("/rollouts/wait") and isinstance(case.body, dict):
        case.body["timeout"] = 0  # a valid long poll holds for up to 20 s; waiting is tested elsewhere
    case.call_and_validate(checks=CHECKS)


@pytest.fixture(scope="module")
def served() -> Iterator[httpx.Client]:
    with ServingThread(APP) as server, httpx.Client(base_url=server.url) as client:
        yield client


@given(
    body=st.binary(max_size=2048),
    content_type=st.sampled_from(["application/x-protobuf", "application/json", "text/plain", ""]),
    encoding=st.sampled_from([None, "gzip", "deflate", "br"]),
)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_otlp_endpoint_answers_random_bodies_with_4xx(
    served: httpx.Client, body: bytes, content_type: str, encoding: str | None
) -> None:
    headers = {"content-type": content_type} | ({"content-encoding": encoding} if encoding else {})
    response = served.post("/v1/traces", content=body, headers=headers)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:  # OTLP/HTTP's failure body: a google.rpc.Status in the request's encoding
        if content_type == "application/json":
            assert set(response.json()) == {"code", "message"}
        else:
            assert Status.FromString(response.content).message


def test_store_is_consistent_and_serving_after_the_fuzzing(served: httpx.Client) -> None:
    assert served.get("/health").json() == {"status": "ok"}
    assert served.get("/v1/agl/statistics").json()["rollouts_by_status"]
    with sqlite3.connect(FOLDER / "fuzz.db") as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # Every attempt belongs to a rollout, every span to an attempt of its rollout.
        orphans = raw.execute(
            "SELECT count(*) FROM attempts a LEFT JOIN rollouts r USING (rollout_id) WHERE r.rollout_id IS NULL"
        ).fetchone()[0]
        stray_spans = raw.execute(
            "SELECT count(*) FROM spans s LEFT JOIN attempts a"
            " ON a.attempt_id = s.attempt_id AND a.rollout_id = s.rollout_id WHERE a.attempt_id IS NULL"
        ).fetchone()[0]
    assert (orphans, stray_spans) == (0, 0)
