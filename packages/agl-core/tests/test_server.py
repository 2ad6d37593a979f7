"""The store server as a client sees it: auth, limits, errors, metrics, and the client's retries."""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from agl.core import RolloutNotFound, StoreUnavailable
from agl.core.cli import app as cli
from agl.core.server import ServerSettings, create_app
from agl.core.server.settings import check_exposure, is_loopback
from agl.core.store import SqliteLightningStore
from agl.core.store.http import HttpLightningStore
from agl.core.store.wire import API_PREFIX
from agl.core.testing.conformance import make_span
from agl.core.testing.server import ServingThread
from agl.core.types import PromptTemplate

TOKEN = "s3cret-token"
JSON = {"content-type": "application/json"}


@pytest.fixture
def server(backing: SqliteLightningStore) -> Iterator[ServingThread]:
    settings = ServerSettings(token=SecretStr(TOKEN), max_body_bytes=64 * 1024)
    with ServingThread(create_app(settings, backing)) as running:
        yield running


def client(server: ServingThread, token: str | None = TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url, headers=headers)


async def seeded(server: ServingThread) -> dict[str, str]:
    """A store holding one running rollout with a span, a worker and resources; returns their ids."""
    store = HttpLightningStore(server.url, token=TOKEN)
    rollout = await store.enqueue_rollout({"q": 1})
    claimed = await store.dequeue_rollout(worker_id="w1")
    assert claimed is not None
    await store.add_span(make_span(rollout.rollout_id, claimed.attempt.attempt_id, 1))
    resources = await store.add_resources({"p": PromptTemplate(template="x")})
    await store.close()
    return {"rid": rollout.rollout_id, "aid": claimed.attempt.attempt_id, "rs": resources.resources_id}


def valid_requests(ids: dict[str, str]) -> list[tuple[str, str, dict[str, Any] | None]]:
    """One well-formed request for every route (method, path, JSON body)."""
    rid, aid, rs = ids["rid"], ids["aid"], ids["rs"]
    span = make_span(rid, aid, 2).model_dump(mode="json")
    return [
        ("POST", "/rollouts", {"input": 1}),
        ("POST", "/rollouts/batch", {"requests": [{"input": 2}]}),
        ("POST", "/rollouts/start", {"input": 3}),
        ("POST", "/rollouts/query", {"limit": 5}),
        ("POST", "/rollouts/wait", {"rollout_ids": [rid], "timeout": 0}),
        ("GET", f"/rollouts/{rid}", None),
        ("PATCH", f"/rollouts/{rid}", {"metadata": {"k": 1}}),
        ("GET", f"/rollouts/{rid}/attempts", None),
        ("GET", f"/rollouts/{rid}/attempts/latest", None),
        ("PATCH", f"/rollouts/{rid}/attempts/{aid}", {"metadata": {"k": 2}}),
        ("POST", f"/rollouts/{rid}/attempts/{aid}/sequence-ids", None),
        ("GET", f"/rollouts/{rid}/spans", None),
        ("POST", "/spans", span),
        ("POST", "/spans/batch", {"spans": [span]}),
        ("POST", "/spans/observed", {"spans": [span]}),
        ("POST", "/resources", {"resources": {"p": {"resource_type": "prompt_template", "template": "y"}}}),
        ("GET", "/resources", None),
        ("GET", "/resources/latest", None),
        ("GET", f"/resources/{rs}", None),
        ("PUT", f"/resources/{rs}", {"resources": {"p": {"resource_type": "prompt_template", "template": "z"}}}),
        ("PUT", "/workers/w1", {"heartbeat_stats": {"gpu": 1}}),
        ("GET", "/workers", None),
        ("GET", "/statistics", None),
        ("POST", "/deadlines", None),
        ("POST", "/dequeue", {"worker_id": "w2"}),
        ("POST", f"/rollouts/{rid}/attempts", {"worker_id": "w3"}),  # after the rollout is requeued below
    ]


def test_every_route_but_health_needs_the_token(server: ServingThread) -> None:
    ids = asyncio.run(seeded(server))
    requests = valid_requests(ids)
    spec = client(server).get("/openapi.json").json()
    documented = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    exercised = {(m, API_PREFIX + p) for m, p, _ in requests}
    templated = {(m, _template(path, ids)) for m, path in exercised}
    assert templated | {("GET", "/metrics"), ("GET", "/health"), ("POST", "/v1/traces")} >= documented

    with client(server, token=None) as anonymous, client(server, token="wrong") as wrong, client(server) as good:
        for method, path, body in requests:
            url = API_PREFIX + path
            for outsider in (anonymous, wrong):
                refused = outsider.request(method, url, json=body)
                assert refused.status_code == 401, (method, path)
                assert refused.headers["www-authenticate"] == "Bearer"
            if path.endswith("/attempts") and method == "POST":
                good.patch(f"{API_PREFIX}/rollouts/{ids['rid']}", json={"status": "requeuing"})
            assert good.request(method, url, json=body).status_code == 200, (method, path)
        assert anonymous.get("/metrics").status_code == 401 and good.get("/metrics").status_code == 200
        assert anonymous.get("/openapi.json").status_code == 401
        assert anonymous.get("/health").json() == {"status": "ok"}


def _template(path: str, ids: dict[str, str]) -> str:
    for name, key in (("rollout_id", "rid"), ("attempt_id", "aid"), ("resources_id", "rs")):
        path = path.replace(ids[key], "{" + name + "}")
    return path.replace("/workers/w1", "/workers/{worker_id}")


def test_errors_are_short_json_with_4xx(server: ServingThread) -> None:
    ids = asyncio.run(seeded(server))
    with client(server) as http:
        cases = [
            (http.get(f"{API_PREFIX}/rollouts/ro-missing"), 404, "RolloutNotFound"),
            (http.patch(f"{API_PREFIX}/rollouts/{ids['rid']}", json={"status": "preparing"}), 409, "InvalidTransition"),
            (http.patch(f"{API_PREFIX}/rollouts/{ids['rid']}", json={"status": "bogus"}), 422, "InvalidInput"),
            (http.post(f"{API_PREFIX}/rollouts", content=b"{not json", headers=JSON), 400, "InvalidJson"),
            (http.post(f"{API_PREFIX}/rollouts/query", json={"sort_by": "input"}), 422, "InvalidInput"),
            (http.get("/v1/agl/nowhere"), 404, "HTTPError"),
            (http.delete(f"{API_PREFIX}/statistics"), 405, "HTTPError"),
        ]
        for response, status, kind in cases:
            assert response.status_code == status, response.text
            body = response.json()
            assert body["error"] == kind
            assert "\n" not in body["message"] and "Traceback" not in response.text
        assert "'bogus'" in cases[2][0].json()["message"]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{bad", "unexpected character, expected a string key, at line 1 column 2"),
        (b'{"input": NaN}', "NaN and Infinity are not JSON, at line 1 column 11"),
        (b'{"input": [1, -Infinity]}', "NaN and Infinity are not JSON, at line 1 column 16"),
        (b'{"input": 1e999}', "a number beyond a double's range (Infinity) is not JSON, at line 1 column 11"),
    ],
)
def test_a_body_that_is_not_json_is_a_400_on_every_rest_route(server: ServingThread, body: bytes, why: str) -> None:
    ids = asyncio.run(seeded(server))
    with client(server) as http:
        statistics = http.get(f"{API_PREFIX}/statistics").json()
        for method, path, valid in valid_requests(ids):
            if valid is None:
                continue
            response = http.request(method, API_PREFIX + path, content=body, headers=JSON)
            assert response.status_code == 400, (method, path, response.text)
            assert response.json() == {
                "error": "InvalidJson",
                "message": f"the request body is not valid JSON: {why}",
                "detail": {},
            }
        assert http.get(f"{API_PREFIX}/statistics").json() == statistics  # nothing was stored


def test_oversized_bodies_are_refused(server: ServingThread) -> None:
    big = {"input": "x" * (70 * 1024)}
    with client(server) as http:
        declared = http.post(f"{API_PREFIX}/rollouts", json=big)
        assert declared.status_code == 413 and declared.json()["error"] == "BodyTooLarge"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
            yield b'{"input": "'
            for _ in range(80):
                yield b"x" * 1024
            yield b'"}'

        streamed = http.post(f"{API_PREFIX}/rollouts", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and streamed.json()["error"] == "BodyTooLarge"
        assert http.post(f"{API_PREFIX}/rollouts/query", json={}).json()["total"] == 0  # nothing was stored


def test_cors_is_off_by_default(server: ServingThread) -> None:
    with client(server) as http:
        response = http.get(f"{API_PREFIX}/statistics", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in response.headers
        preflight = http.options(
            f"{API_PREFIX}/statistics",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in preflight.headers


def test_metrics_count_requests_by_route(server: ServingThread) -> None:
    asyncio.run(seeded(server))
    with client(server) as http:
        text = http.get("/metrics").text
    assert 'agl_http_requests_total{method="POST",route="/v1/agl/dequeue",status="200"} 1.0' in text
    assert 'agl_spans_received_total{path="rest"} 1.0' in text
    assert 'agl_store_rollouts{status="running"} 1.0' in text


def test_a_missing_rollout_is_one_request_not_retries(server: ServingThread) -> None:
    async def ask() -> None:
        store = HttpLightningStore(server.url, token=TOKEN)
        assert await store.get_rollout_by_id("ro-missing") is None
        with pytest.raises(RolloutNotFound):
            await store.update_rollout("ro-missing", status="cancelled")
        await store.close()

    asyncio.run(ask())
    with client(server) as http:
        text = http.get("/metrics").text
    assert 'method="GET",route="/v1/agl/rollouts/{rollout_id}",status="404"} 1.0' in text
    assert 'method="PATCH",route="/v1/agl/rollouts/{rollout_id}",status="404"} 1.0' in text


class HangUpPeer:
    """A TCP peer that reads a request and closes the connection without answering."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.connections += 1
            connection.recv(65536)
            connection.close()

    def close(self) -> None:
        self.socket.close()


def test_only_idempotent_requests_are_retried_after_they_were_sent() -> None:
    peer = HangUpPeer()

    async def run() -> None:
        store = HttpLightningStore(peer.url, retry_seconds=0.5)
        with pytest.raises(StoreUnavailable, match="dequeue"):
            await store.dequeue_rollout()  # may have claimed work: never repeated
        assert peer.connections == 1
        with pytest.raises(StoreUnavailable, match="gave up"):
            await store.get_rollout_by_id("ro-1")  # a read: repeated until the budget is spent
        assert peer.connections > 2
        await store.close()

    asyncio.run(run())
    peer.close()


def test_unreachable_store_is_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def run() -> None:
        store = HttpLightningStore(f"http://127.0.0.1:{port}", retry_seconds=0.3)
        with pytest.raises(StoreUnavailable, match=f"cannot reach the store at http://127.0.0.1:{port}"):
            await store.dequeue_rollout()
        await store.close()

    asyncio.run(run())


def test_serving_beyond_loopback_needs_a_token_or_insecure() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")
    check_exposure(ServerSettings(host="0.0.0.0", token=SecretStr("t")))
    check_exposure(ServerSettings(host="0.0.0.0", insecure=True))
    result = CliRunner().invoke(
        cli, ["store", "serve", "--host", "0.0.0.0", "--store", "memory://"], env={"AGL_STORE_TOKEN": ""}
    )
    assert result.exit_code == 1
    assert "refusing to serve on 0.0.0.0 without a token" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("store", "workers", "problem"),
    [
        ("memory://", "2", "--workers 2 needs a store every process can open (sqlite://), not memory://"),
        ("http://127.0.0.1:9", "2", "needs a store every process can open (sqlite://), not http://127.0.0.1:9"),
        ("memory://", "0", "--workers must be at least 1, got 0"),
        ("sqlite://", "2", "sqlite:// needs a file path"),  # checked once, before any worker starts
    ],
)
def test_server_processes_need_a_shared_store_and_a_count(store: str, workers: str, problem: str) -> None:
    result = CliRunner().invoke(cli, ["store", "serve", "--store", store, "--workers", workers])
    assert result.exit_code == 1
    assert problem in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("option", "problem"),
    [
        (["--port", "99999"], "--port must be between 0 and 65535, got 99999"),
        (["--port", "-1"], "--port must be between 0 and 65535, got -1"),
        (["--max-body-mb", "0"], "--max-body-mb must be at least 1, got 0"),
    ],
)
def test_bad_option_values_are_one_line_errors(option: list[str], problem: str) -> None:
    result = CliRunner().invoke(cli, ["store", "serve", "--store", "memory://", *option])
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"error: {problem}\n")


def test_a_port_in_use_is_one_line_and_exit_1() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["store", "serve", "--store", "memory://", "--port", str(port)])
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"error: port {port} on 127.0.0.1 is in use\n")


@pytest.mark.parametrize("token", [TOKEN, None])
def test_store_serve_says_where_it_answers_once_ready_and_never_the_token(token: str | None) -> None:
    env = {key: value for key, value in os.environ.items() if key != "AGL_STORE_TOKEN"}
    if token:
        env["AGL_STORE_TOKEN"] = token
    command = [sys.executable, "-m", "agl.core.cli", "store", "serve", "--store", "memory://", "--port", "0"]

    async def run() -> None:
        server = await asyncio.create_subprocess_exec(*command, env=env, stdout=asyncio.subprocess.PIPE)
        try:
            assert server.stdout is not None
            line = (await asyncio.wait_for(server.stdout.readline(), 60)).decode()
            access = "token required" if token else "no token"
            found = re.fullmatch(rf"agl store serving memory:// at (http://127\.0\.0\.1:\d+) \({access}\)\n", line)
            assert found, line
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with httpx.AsyncClient(base_url=found[1], headers=headers) as http:
                assert (await http.get(f"{API_PREFIX}/statistics")).status_code == 200
        finally:
            server.terminate()
            await server.wait()

    asyncio.run(run())


def test_gzip_request_bodies_are_not_accepted_by_rest_routes(server: ServingThread) -> None:
    # The REST API takes plain JSON; only OTLP ingest decompresses (with its own cap).
    with client(server) as http:
        response = http.post(
            f"{API_PREFIX}/rollouts",
            content=gzip.compress(b'{"input": 1}'),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
        assert response.status_code == 400 and response.json()["error"] == "InvalidJson"
        assert response.json()["message"].startswith("the request body is not valid JSON: not UTF-8 text")
