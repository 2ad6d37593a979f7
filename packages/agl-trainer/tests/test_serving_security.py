"""Security defaults of the trainer's two servers over real HTTP on 127.0.0.1: the LLM proxy (with
agl-core's scripted chat server as its engine) and ``agl serve``'s model server (a tiny model). The
token guards every path but /health, the 401 is in OpenAI's error shape, the bearer scheme is read
as RFC 7235 says, a blank token is refused, no CORS, and requests cannot steer the proxy's upstream
or the model server's files."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agl.core.errors import InvalidInput
from agl.core.store.base import LightningStore
from agl.core.testing.chat_server import ChatLog, chat_log, chat_server_app
from agl.core.testing.server import ServingThread
from agl.trainer.proxy import LlmProxy, Upstreams, create_proxy_app

TOKEN = "agent-s3cret"
UPSTREAM_TOKEN = "engine-s3cret"
MODEL = "agl-toy"
ODD_PATHS = [
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/redoc"),
    ("GET", "/metrics"),
    ("GET", "/no/such/route"),
    ("GET", "/v1/models"),
    ("HEAD", "/v1/models"),
    ("OPTIONS", "/v1/models"),
    ("GET", "//v1/models"),
    ("GET", "/v1/models/"),
    ("GET", "/V1/MODELS"),
    ("GET", "/health/"),
]
PROXY_PATHS = [
    *ODD_PATHS,
    ("POST", "/rollout/ro-1/attempt/at-1/v1/chat/completions"),
    ("POST", "/rollout/ro-1/attempt/at-1/v1/completions"),
    ("GET", "/rollout/ro-1/attempt/at-1/v1/models"),
    ("POST", "/rollout/ro-1/attempt/at-1/v1/embeddings"),
]
MODEL_SERVER_PATHS = [
    *ODD_PATHS,
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("GET", "/v1/models/tiny"),
    ("POST", "/load_weights"),
    ("POST", "/v1/load_weights"),
]
RFC_7235_SPELLINGS = [f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer   {TOKEN}"]


def assert_openai_401(response: httpx.Response) -> None:
    assert response.status_code == 401, (response.request.method, response.request.url, response.text)
    assert response.headers["www-authenticate"] == "Bearer"
    if response.request.method != "HEAD":
        assert response.json()["error"]["message"] == "missing or wrong bearer token"


def assert_no_cors(client: httpx.Client, path: str) -> None:
    origin = {"origin": "http://elsewhere.example", "authorization": f"Bearer {TOKEN}"}
    simple = client.get(path, headers=origin)
    preflight = client.options(path, headers={**origin, "access-control-request-method": "POST"})
    for response in (simple, preflight):
        assert not [name for name in response.headers if name.lower().startswith("access-control-")]


# --- the LLM proxy ---------------------------------------------------------------------------


@pytest.fixture
def engine() -> Iterator[tuple[str, ChatLog]]:
    app = chat_server_app(["hello"])
    with ServingThread(app) as served:
        yield f"{served.url}/v1", chat_log(app)


@pytest.fixture
def proxy(sqlite_store: LightningStore, engine: tuple[str, ChatLog]) -> Iterator[httpx.Client]:
    with (
        LlmProxy(sqlite_store, [engine[0]], token=TOKEN, upstream_token=UPSTREAM_TOKEN, model=MODEL) as running,
        httpx.Client(base_url=running.url, timeout=30) as client,
    ):
        yield client


@pytest.mark.parametrize(("method", "path"), PROXY_PATHS)
def test_the_proxy_guards_every_path_but_health(
    proxy: httpx.Client, engine: tuple[str, ChatLog], method: str, path: str
) -> None:
    """/openapi.json and unknown paths were open (the check was per route); now a middleware
    refuses before routing, in OpenAI's error shape."""
    assert_openai_401(proxy.request(method, path, json={} if method == "POST" else None))
    assert engine[1].requests == []
    assert proxy.get("/health").status_code == 200


@pytest.mark.parametrize("authorization", RFC_7235_SPELLINGS)
def test_the_proxy_reads_the_bearer_scheme_as_rfc_7235_says(proxy: httpx.Client, authorization: str) -> None:
    answered = proxy.get("/v1/models", headers={"authorization": authorization})
    assert answered.status_code == 200, answered.text
    assert [model["id"] for model in answered.json()["data"]] == [MODEL]
    assert UPSTREAM_TOKEN not in answered.text and UPSTREAM_TOKEN not in str(answered.headers)


@pytest.mark.parametrize("authorization", [f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x", f"Bearer{TOKEN}", "Bearer"])
def test_the_proxy_refuses_anything_but_its_token(proxy: httpx.Client, authorization: str) -> None:
    assert_openai_401(proxy.get("/v1/models", headers={"authorization": authorization}))
    assert_openai_401(proxy.get(f"/v1/models?token={TOKEN}&api_key={TOKEN}"))


def test_the_proxy_refuses_a_blank_token(sqlite_store: LightningStore) -> None:
    with pytest.raises(InvalidInput, match="the token is blank"):
        create_proxy_app(sqlite_store, Upstreams(["http://127.0.0.1:1/v1"]), token="  ")


@pytest.mark.parametrize(
    "path",
    [
        "/rollout/ro-1/attempt/at-1/v1/http:%2F%2F169.254.169.254%2Flatest",
        "/rollout/ro-1/attempt/at-1/v1/../../../admin",
        "/rollout/ro-1/attempt/at-1/v1//chat/completions",
        "/rollout/ro-1/attempt/at-1/v1/chat/completions/..%2F..%2Fmodels",
    ],
)
def test_a_path_cannot_steer_the_proxy_elsewhere(proxy: httpx.Client, engine: tuple[str, ChatLog], path: str) -> None:
    """The upstream path is one of the proxy's own (`shape.PATHS`), never taken from the request."""
    answered = proxy.post(path, json={"model": MODEL, "messages": []}, headers={"authorization": f"Bearer {TOKEN}"})
    assert answered.status_code == 404
    assert engine[1].requests == []


def test_the_proxy_answers_no_cors(proxy: httpx.Client) -> None:
    assert_no_cors(proxy, "/v1/models")


# --- the model server (agl serve) ------------------------------------------------------------


@pytest.fixture(scope="module")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An `EmbeddedModelServer` of a tiny model, with the token."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from agl.trainer.serving.embedded import EmbeddedModelServer
    from agl.trainer.testing import build_tiny_model

    with EmbeddedModelServer(
        build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny", seed=0), token=TOKEN
    ) as running:
        yield running


@pytest.fixture(scope="module")
def model_server(served_model: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served_model.base_url.removesuffix("/v1"), timeout=120) as client:
        yield client


@pytest.mark.parametrize(("method", "path"), MODEL_SERVER_PATHS)
def test_the_model_server_refuses_in_openais_shape(model_server: httpx.Client, method: str, path: str) -> None:
    """An openai client reads ``error.message``; the 401 was in the store's shape."""
    assert_openai_401(model_server.request(method, path, json={} if method == "POST" else None))


@pytest.mark.parametrize("authorization", RFC_7235_SPELLINGS)
def test_the_model_server_reads_the_bearer_scheme_as_rfc_7235_says(
    model_server: httpx.Client, authorization: str
) -> None:
    answered = model_server.get("/v1/models", headers={"authorization": authorization})
    assert answered.status_code == 200, answered.text


def test_the_model_server_refuses_a_blank_token(served_model: Any) -> None:
    from agl.trainer.serving.openai_app import create_openai_app

    with pytest.raises(InvalidInput, match="the token is blank"):
        create_openai_app(served_model.engine, token=" ")


@pytest.mark.parametrize("model", ["../../../../etc/passwd", "/etc/passwd", "tiny/../../secret", "file:///etc/passwd"])
def test_a_model_name_is_never_a_path(model_server: httpx.Client, model: str) -> None:
    """The request's model is only compared with the served name: another is a 404, nothing is opened."""
    body = {"model": model, "prompt": "hi", "max_tokens": 1}
    answered = model_server.post("/v1/completions", json=body, headers={"authorization": f"Bearer {TOKEN}"})
    assert answered.status_code == 404
    assert "root:" not in answered.text


def test_the_model_server_answers_no_cors(model_server: httpx.Client) -> None:
    assert_no_cors(model_server, "/v1/models")


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/v1/nowhere", 404), ("DELETE", "/v1/models", 405)])
def test_an_unknown_route_or_method_is_answered_in_openais_shape(
    model_server: httpx.Client, method: str, path: str, status: int
) -> None:
    answered = model_server.request(method, path, headers={"authorization": f"Bearer {TOKEN}"})
    assert answered.status_code == status
    assert isinstance(answered.json()["error"]["message"], str)


def test_the_responses_api_is_a_404_that_says_to_use_chat_completions(model_server: httpx.Client) -> None:
    """The OpenAI Agents SDK calls the Responses API by default; the 404 says how to switch it."""
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=f"{model_server.base_url}/v1", api_key=TOKEN, max_retries=0)
    with pytest.raises(NotFoundError, match=r'set_default_openai_api\("chat_completions"\)'):
        client.responses.create(model="any", input="hi")


def head_of_kilobytes_refused(base_url: str) -> bytes:
    """A request whose headers never end (70 KiB and counting): the store server's protocol answers 431."""
    address = httpx.URL(base_url)
    with socket.create_connection((address.host, address.port), timeout=30) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"y" * 70_000)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


def test_the_model_server_and_the_proxy_bound_a_requests_head(model_server: httpx.Client, proxy: httpx.Client) -> None:
    """They ran uvicorn's own protocol, which bounds neither the size nor the time of a head."""
    for client in (model_server, proxy):
        assert head_of_kilobytes_refused(str(client.base_url)).startswith(b"HTTP/1.1 431 ")
