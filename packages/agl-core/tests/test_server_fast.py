"""The server's fast path answers exactly as FastAPI does, and takes only what it understands.

Two apps over one store, in one event loop: one with the fast path, one without. Every request
goes to both; status, content type and body must agree (times are masked, and the ids a
dequeue picks). A counter on the fast path's fallback tells which requests it served itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from agl.core.server import ServerSettings, create_app
from agl.core.server.fast import FastPath, FastRoute
from agl.core.store import InMemoryLightningStore, SqliteLightningStore
from agl.core.store.wire import API_PREFIX
from agl.core.testing.conformance import make_span

TOKEN = "fast-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}


class Pair:
    """The same request to the app with the fast path and to the one without."""

    def __init__(self, app: FastAPI, fast: httpx.AsyncClient, slow: httpx.AsyncClient) -> None:
        self.app, self.fast, self.slow = app, fast, slow
        self.fast_path = fast_path = _fast_path_of(app)
        self.fallback: list[str] = []  # paths the fast path passed on to FastAPI
        passed_on = fast_path.app

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            self.fallback.append(scope["path"])
            await passed_on(scope, receive, send)

        fast_path.app = counted

    async def both(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None, mask_ids: bool = False
    ) -> tuple[int, Any, bool]:
        """Status and (masked) body, asserted equal on both apps; and whether the fast path served it."""
        content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        headers = JSON if headers is None else headers
        before = len(self.fallback)
        fast = await self.fast.request(method, API_PREFIX + path, content=content, headers=headers)
        served_fast = len(self.fallback) == before
        slow = await self.slow.request(method, API_PREFIX + path, content=content, headers=headers)
        assert fast.status_code == slow.status_code, (method, path, fast.text, slow.text)
        assert fast.headers.get("content-type") == slow.headers.get("content-type"), (method, path)
        assert fast.headers.get("www-authenticate") == slow.headers.get("www-authenticate"), (method, path)
        fast_body, slow_body = _masked(fast, mask_ids), _masked(slow, mask_ids)
        assert fast_body == slow_body, (method, path)
        return fast.status_code, fast_body, served_fast


def _masked(response: httpx.Response, mask_ids: bool) -> Any:
    try:
        value = response.json()
    except ValueError:
        return response.content

    def mask(item: Any) -> Any:
        if isinstance(item, dict):
            return {
                key: "*" if key.endswith("_time") or (mask_ids and key in ("rollout_id", "attempt_id")) else mask(value)
                for key, value in item.items()
            }
        if isinstance(item, list):
            return [mask(value) for value in item]
        return item

    return mask(value)


def _fast_path_of(app: FastAPI) -> FastPath:
    layer: Any = app.middleware_stack
    while not isinstance(layer, FastPath):
        layer = layer.app
    return layer


@pytest.fixture(params=["memory", "sqlite"])
async def pair(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Pair]:
    """Over both backends: their span queries hand the fast path stored JSON, not models."""
    store = InMemoryLightningStore() if request.param == "memory" else SqliteLightningStore(tmp_path / "fast.db")
    settings = ServerSettings(token=SecretStr(TOKEN), max_body_bytes=64 * 1024)
    fast_app, slow_app = create_app(settings, store), create_app(settings, store, fast_path=False)
    fast = httpx.AsyncClient(transport=httpx.ASGITransport(fast_app), base_url="http://agl")
    slow = httpx.AsyncClient(transport=httpx.ASGITransport(slow_app), base_url="http://agl")
    await fast.get("/health")  # builds the middleware stack
    yield Pair(fast_app, fast, slow)
    await fast.aclose()
    await slow.aclose()
    await store.close()


async def test_rollout_routes_agree(pair: Pair) -> None:
    status, body, fast = await pair.both("POST", "/rollouts", {"input": {"q": 1}, "rollout_id": "ro-a"})
    assert (status, body["rollout_id"], fast) == (200, "ro-a", True)
    assert (await pair.both("POST", "/rollouts", {"input": {"q": 2}, "rollout_id": "ro-b"}))[2]
    assert (await pair.both("POST", "/rollouts/batch", {"requests": [{"input": 3, "rollout_id": "ro-c"}]}))[2]
    assert (await pair.both("GET", "/rollouts/ro-a"))[2]
    assert (await pair.both("PATCH", "/rollouts/ro-c", {"metadata": {"k": 1}}))[2]

    refused = [
        ("POST", "/rollouts", b"{not json", 400),
        ("POST", "/rollouts", b"", 422),
        ("POST", "/rollouts", {"input": 1, "mode": 5}, 422),
        ("POST", "/rollouts", {"input": 1, "bogus": True}, 422),
        ("POST", "/rollouts", {}, 422),
        ("POST", "/rollouts", [1, 2], 422),
        ("POST", "/rollouts/batch", {"requests": "many"}, 422),
        ("GET", "/rollouts/ro-missing", None, 404),
        ("PATCH", "/rollouts/ro-missing", {"metadata": {}}, 404),
        ("PATCH", "/rollouts/ro-a", {"status": "preparing"}, 409),
        ("PATCH", "/rollouts/ro-a", {"status": "bogus"}, 422),
    ]
    for method, path, body, expected in refused:
        assert (await pair.both(method, path, body))[0] == expected, (method, path, body)
    # Store errors are answered by the fast path itself; unparseable requests are left to FastAPI.
    assert (await pair.both("GET", "/rollouts/ro-missing"))[2]
    assert not (await pair.both("POST", "/rollouts", b"{not json"))[2]


async def test_queue_and_attempt_routes_agree(pair: Pair) -> None:
    for rollout_id in ("ro-1", "ro-2", "ro-3"):
        await pair.both("POST", "/rollouts", {"input": {"same": True}, "rollout_id": rollout_id})
    status, body, fast = await pair.both("POST", "/dequeue", {"worker_id": "w1"}, mask_ids=True)
    assert (status, fast, body["status"]) == (200, True, "preparing")
    assert (await pair.both("PATCH", "/rollouts/ro-1/attempts/latest", {"status": "running"}))[2]
    assert (await pair.both("PATCH", "/rollouts/ro-1/attempts/latest", {"metadata": {"step": 1}}))[2]
    for method, path, body, expected in [
        ("POST", "/dequeue", {"worker_id": 5}, 422),
        ("POST", "/dequeue", b"[", 400),
        ("PATCH", "/rollouts/ro-missing/attempts/latest", {"status": "running"}, 404),
        ("PATCH", "/rollouts/ro-1/attempts/at-missing", {"status": "running"}, 404),
        ("PATCH", "/rollouts/ro-1/attempts/latest", {"status": "bogus"}, 422),
        ("PATCH", "/rollouts/ro-1/attempts/latest", {"last_heartbeat_time": "soon"}, 422),
        ("PATCH", "/rollouts/ro-3/attempts/latest", {"status": "running"}, 404),  # queued: no attempt yet
    ]:
        assert (await pair.both(method, path, body))[0] == expected, (method, path, body)


async def test_span_routes_agree(pair: Pair) -> None:
    await pair.both("POST", "/rollouts", {"input": 1, "rollout_id": "ro-s"})
    await pair.both("POST", "/rollouts", {"input": 1, "rollout_id": "ro-s2"})
    await pair.both("POST", "/dequeue", {"worker_id": "w"}, mask_ids=True)  # claims one each
    attempt_id = (await pair.fast.get(f"{API_PREFIX}/rollouts/ro-s/attempts/latest", headers=AUTH)).json()["attempt_id"]
    spans = [make_span("ro-s", attempt_id, i, name=f"step-{i % 2}", n=i).model_dump(mode="json") for i in (1, 2, 3)]
    assert (await pair.both("POST", "/spans", spans[0]))[2]  # an upsert: the same span twice agrees
    assert (await pair.both("POST", "/spans/batch", {"spans": spans[1:]}))[2]
    for query in (
        "",
        "?attempt_id=latest",
        f"?attempt_id={attempt_id}&limit=2&offset=1",
        "?name=step-1&sort_order=desc",
        "?sort_by=start_time",
    ):
        status, body, fast = await pair.both("GET", f"/rollouts/ro-s/spans{query}")
        assert (status, fast) == (200, True), query
        assert body["items"], query
    for query, expected in [
        ("?limit=abc", 422),
        ("?limit=-1", None),
        ("?offset=1.5", 422),
        ("?sort_by=bogus", 422),
        ("?unknown=1", 200),
        ("?limit=1&limit=2", 200),
        ("?attempt_id=at-missing", None),
    ]:
        status, _, _ = await pair.both("GET", f"/rollouts/ro-s/spans{query}")
        assert expected is None or status == expected, query
    status, body, _ = await pair.both("GET", "/rollouts/ro-missing/spans")
    assert status in (200, 404)
    wrong = [
        ("POST", "/spans", {**spans[0], "sequence_id": "first"}, 422),
        ("POST", "/spans", {**spans[0], "rollout_id": "ro-missing"}, 404),
        ("POST", "/spans", b'{"rollout_id": ', 400),
        ("POST", "/spans/batch", {"spans": [spans[0], {"name": 1}]}, 422),
    ]
    for method, path, body, expected in wrong:
        assert (await pair.both(method, path, body))[0] == expected, (method, path)


async def test_nan_and_infinity_are_refused_alike_and_nothing_is_stored(pair: Pair) -> None:
    await pair.both("POST", "/rollouts", {"input": 1, "rollout_id": "ro-n"})
    latest = f"{API_PREFIX}/rollouts/ro-n/attempts/latest"
    await pair.fast.post(f"{API_PREFIX}/dequeue", json={"worker_id": "w"}, headers=AUTH)
    attempt = (await pair.fast.get(latest, headers=AUTH)).json()
    for method, path, body in [
        ("POST", "/rollouts", b'{"input": NaN, "rollout_id": "ro-nan"}'),
        ("POST", "/rollouts", b'{"input": {"x": [1, -Infinity]}, "rollout_id": "ro-inf"}'),
        ("POST", "/rollouts", b'{"input": 1e999, "rollout_id": "ro-big"}'),
        ("POST", "/rollouts/batch", b'{"requests": [{"input": Infinity, "rollout_id": "ro-nan"}]}'),
        ("PATCH", "/rollouts/ro-n", b'{"metadata": {"score": NaN}}'),
        ("PATCH", "/rollouts/ro-n/attempts/latest", b'{"last_heartbeat_time": 1e999}'),
        ("PATCH", "/rollouts/ro-n/attempts/latest", b'{"metadata": {"loss": -1e400}}'),
    ]:
        status, answer, fast = await pair.both(method, path, body)
        assert (status, answer["error"], fast) == (400, "InvalidJson", False), (method, path, body)
        assert answer["message"].startswith("the request body is not valid JSON: "), answer
    for name in ("ro-nan", "ro-inf", "ro-big"):
        assert (await pair.both("GET", f"/rollouts/{name}"))[0] == 404
    rollout = (await pair.both("GET", "/rollouts/ro-n"))[1]
    assert rollout["metadata"] == {}
    assert (await pair.fast.get(latest, headers=AUTH)).json() == attempt
    # Where "NaN" is text, the body is JSON and served as ever.
    assert (await pair.both("POST", "/rollouts", {"input": "NaN Infinity 1e999", "rollout_id": "ro-text"}))[2]


async def test_requests_the_fast_path_leaves_to_fastapi(pair: Pair) -> None:
    await pair.both("POST", "/rollouts", {"input": 1, "rollout_id": "ro-x"})
    plain_text = {**AUTH, "Content-Type": "text/plain"}
    no_type = dict(AUTH)
    vendor_json = {**AUTH, "Content-Type": "application/vnd.agl+json"}
    for headers in (plain_text, no_type, vendor_json):
        _, _, fast = await pair.both("POST", "/rollouts", {"input": 1, "rollout_id": "ro-y"}, headers=headers)
        assert not fast, headers
    for path in ("/rollouts/", "/rollouts/ro-x/spans/", "/rollouts/ro-x/attempts/latest"):
        _, _, fast = await pair.both("GET", path)
        assert not fast, path
    _, _, fast = await pair.both("HEAD", "/rollouts/ro-x")
    assert not fast


async def test_a_body_not_sent_as_json_is_refused_saying_so(pair: Pair) -> None:
    """curl's ``-d`` sends a form's content type: pydantic's message blamed the body ("Input should
    be a valid dictionary"), not the header."""
    for headers, got in [
        (
            {**AUTH, "Content-Type": "application/x-www-form-urlencoded"},
            "Content-Type: application/x-www-form-urlencoded",
        ),
        ({**AUTH, "Content-Type": "text/plain"}, "Content-Type: text/plain"),
        (AUTH, "no Content-Type"),
    ]:
        status, answer, _ = await pair.both("POST", "/rollouts", {"input": 1}, headers=headers)
        message = f"the request body must be JSON sent with Content-Type: application/json, got {got}"
        assert (status, answer) == (422, {"error": "InvalidInput", "message": message, "detail": {}}), headers


async def test_token_and_size_limit_hold_on_the_fast_path(pair: Pair) -> None:
    span = make_span("ro-t", "at-t", 1).model_dump(mode="json")
    for method, path, body in [
        ("POST", "/rollouts", {"input": 1}),
        ("POST", "/dequeue", {}),
        ("POST", "/spans", span),
        ("GET", "/rollouts/ro-t/spans", None),
        ("PATCH", "/rollouts/ro-t/attempts/latest", {}),
    ]:
        for headers in ({"Content-Type": "application/json"}, {"Authorization": "Bearer wrong"}):
            status, body_seen, _ = await pair.both(method, path, body, headers=headers)
            assert status == 401 and body_seen["error"] == "Unauthorized", (method, path)
    status, body_seen, _ = await pair.both("POST", "/rollouts", {"input": "x" * (70 * 1024)})
    assert status == 413 and body_seen["error"] == "BodyTooLarge"
    assert pair.fallback == []  # refused before the fast path was reached


async def test_fast_requests_are_counted_under_their_route(pair: Pair) -> None:
    await pair.both("POST", "/rollouts", {"input": 1, "rollout_id": "ro-m"})
    await pair.both("GET", "/rollouts/ro-missing")
    text = (await pair.fast.get("/metrics", headers=AUTH)).text
    assert 'agl_http_requests_total{method="POST",route="/v1/agl/rollouts",status="200"} 1.0' in text
    assert 'agl_http_requests_total{method="GET",route="/v1/agl/rollouts/{rollout_id}",status="404"} 1.0' in text


async def test_every_fast_route_is_documented_in_the_spec(pair: Pair) -> None:
    spec = (await pair.fast.get("/openapi.json", headers=AUTH)).json()
    served = [*pair.fast_path._static.values(), *(r for rs in pair.fast_path._templated.values() for r in rs)]
    assert len(served) == 9
    for route in served:
        assert route.method.lower() in spec["paths"][route.path], route.path


async def _call(app: Any, path: str, messages: list[dict[str, Any]]) -> tuple[int, bytes]:
    """One request straight through ASGI, its body given as ``messages``."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": API_PREFIX + path,
        "raw_path": (API_PREFIX + path).encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"authorization", AUTH["Authorization"].encode()), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def test_a_body_in_several_parts_is_served_and_a_broken_one_passed_on(pair: Pair) -> None:
    app = pair.app
    parts = [b'{"input": ', b'{"q": 1}, "rollout_id": ', b'"ro-parts"}']
    messages = [{"type": "http.request", "body": part, "more_body": i < 2} for i, part in enumerate(parts)]
    status, body = await _call(app, "/rollouts", messages)
    assert status == 200 and json.loads(body)["rollout_id"] == "ro-parts" and pair.fallback == []
    status, _ = await _call(app, "/rollouts", [{"type": "http.request", "body": parts[0], "more_body": True}])
    assert pair.fallback == [API_PREFIX + "/rollouts"]  # the client left mid-body: FastAPI answers
    assert status == 400


def test_a_fast_route_must_be_a_documented_one() -> None:
    app = create_app(ServerSettings(), InMemoryLightningStore(), fast_path=False)

    async def handle(*_: Any) -> bytes:
        return b"{}"

    with pytest.raises(LookupError, match="GET /v1/agl/nowhere"):
        FastPath(app, fastapi=app, fast_routes=[FastRoute("GET", "/nowhere", handle)])
