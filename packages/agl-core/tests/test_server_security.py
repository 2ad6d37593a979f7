"""The store server's security defaults, over real HTTP on 127.0.0.1: the token guards every path
but /health however the request is spelled, the bearer scheme is read as RFC 7235 says, a blank
token is refused, WebSocket handshakes need the token too, no CORS by default, errors say nothing
internal, and body limits hold without a Content-Length."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, WebSocket
from google.rpc.status_pb2 import Status
from pydantic import SecretStr
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from agl.core.errors import InvalidInput
from agl.core.server import ServerSettings, create_app
from agl.core.server.auth import TokenAuth
from agl.core.server.protocol import MAX_HEAD_BYTES, OneWriteHttpProtocol
from agl.core.server.settings import check_exposure
from agl.core.store import SqliteLightningStore
from agl.core.testing.server import ServingThread

TOKEN = "s3cret-token"
MAX_BODY = 4096


@pytest.fixture
def server(backing: SqliteLightningStore) -> Iterator[ServingThread]:
    settings = ServerSettings(token=SecretStr(TOKEN), max_body_bytes=MAX_BODY)
    with ServingThread(create_app(settings, backing)) as running:
        yield running


def exchange(server: ServingThread, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request sent byte for byte as written (no client normalising the path or headers);
    the status, the headers (lower-case names) and the body of the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        connection.sendall(head.replace("\n", "\r\n").encode() + b"Connection: close\r\n\r\n" + body)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    header_block, _, answer = rest.partition(b"\r\n\r\n")
    headers = {}
    for line in header_block.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, answer


def get(server: ServingThread, path: str, *headers: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    lines = "".join(f"{header}\n" for header in headers)
    return exchange(server, f"{method} {path} HTTP/1.1\nHost: test\n{lines}")


def assert_refused(answer: tuple[int, dict[str, str], bytes]) -> None:
    status, headers, body = answer
    assert status == 401
    assert headers["www-authenticate"] == "Bearer"
    assert json.loads(body)["message"] == "missing or wrong bearer token"


@pytest.mark.parametrize(
    "header",
    [f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer  {TOKEN}", f"Bearer {TOKEN} ", f"Authorization:\tBearer {TOKEN}"],
)
def test_the_bearer_scheme_is_case_insensitive_and_any_spaces_may_follow_it(server: ServingThread, header: str) -> None:
    """RFC 7235: the scheme is case-insensitive, then one or more spaces; space around a value is no part of it."""
    line = header if header.startswith("Authorization:") else f"Authorization: {header}"
    status, _, body = get(server, "/v1/agl/statistics", line)
    assert status == 200, body


@pytest.mark.parametrize(
    "header",
    [
        None,
        f"Authorization: {TOKEN}",
        f"Authorization: Basic {TOKEN}",
        f"Authorization: Token {TOKEN}",
        f"Authorization: Bearer{TOKEN}",
        "Authorization: Bearer",
        "Authorization: Bearer ",
        "Authorization: Bearer wrong",
        f"Authorization: Bearer {TOKEN}x",
        f"Authorization: Bearer {TOKEN[:-1]}",
        f"Authorization: Bearer {TOKEN.upper()}",
        f"X-Api-Key: {TOKEN}",
    ],
)
def test_anything_but_the_bearer_token_is_a_401_saying_nothing_more(server: ServingThread, header: str | None) -> None:
    assert_refused(get(server, "/v1/agl/statistics", *([header] if header else [])))


def test_a_token_in_the_query_string_is_not_a_token(server: ServingThread) -> None:
    assert_refused(get(server, f"/v1/agl/statistics?token={TOKEN}&access_token={TOKEN}&api_key={TOKEN}"))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/redoc"),
        ("GET", "/metrics"),
        ("POST", "/v1/traces"),
        ("POST", "/v1/agl/rollouts"),
        ("POST", "/v1/agl/spans"),
        ("POST", "/v1/agl/dequeue"),
        ("GET", "/v1/agl/rollouts/ro-1"),
        ("HEAD", "/v1/agl/statistics"),
        ("OPTIONS", "/v1/agl/statistics"),
        ("GET", "//v1/agl/statistics"),
        ("GET", "/v1/agl/statistics/"),
        ("GET", "/V1/AGL/STATISTICS"),
        ("GET", "/v1%2Fagl%2Fstatistics"),
        ("GET", "/health/"),
        ("GET", "/%68ealth"),
        ("GET", "/health/../v1/agl/statistics"),
        ("GET", "/no/such/route"),
        ("GET", "*"),
        ("GET", "http://test/v1/agl/statistics"),
    ],
)
def test_every_path_but_health_needs_the_token_however_it_is_spelled(
    server: ServingThread, method: str, path: str
) -> None:
    status, headers, _ = get(server, path, method=method)
    assert (status, headers["www-authenticate"]) == (401, "Bearer")


def test_health_alone_is_open(server: ServingThread) -> None:
    status, _, body = get(server, "/health?probe=1")
    assert (status, json.loads(body)) == (200, {"status": "ok"})


def test_a_blank_token_is_refused_before_serving(backing: SqliteLightningStore) -> None:
    """A blank token guarded nothing: ``Authorization: Bearer`` and spaces matched it, and it let
    the server listen beyond this machine."""
    exposed = ServerSettings(host="0.0.0.0", token=SecretStr("  "))
    with pytest.raises(InvalidInput, match="the token is blank"):
        check_exposure(exposed)
    with pytest.raises(InvalidInput, match="the token is blank"):
        create_app(ServerSettings(token=SecretStr("")), backing)


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("s3cret\n", "a line break"),
        ("s3cret\r\n", "a line break"),
        ("s3cr\x00et", "a control character"),
        ("s3cr\u00e9t", "a non-ASCII character"),
    ],
)
def test_a_token_no_header_can_carry_is_refused_before_serving(
    backing: SqliteLightningStore, token: str, why: str
) -> None:
    """A token from a file or a secret ending with a line break was taken: every client sending it
    got a 400 "Invalid HTTP request" (agl's own, reading the same variable), never a word of the
    token; a non-ASCII one was a 401 for the right token."""
    message = f"the token has a character an HTTP header cannot carry \\({why}\\): use printable ASCII"
    with pytest.raises(InvalidInput, match=message):
        create_app(ServerSettings(token=SecretStr(token)), backing)
    with pytest.raises(InvalidInput, match=message):
        check_exposure(ServerSettings(host="0.0.0.0", token=SecretStr(token)))


def test_a_token_with_inner_spaces_or_tabs_around_it_is_taken(backing: SqliteLightningStore) -> None:
    settings = ServerSettings(token=SecretStr("\tmy s3cret "), max_body_bytes=MAX_BODY)
    with ServingThread(create_app(settings, backing)) as running:
        assert get(running, "/v1/agl/rollouts/x", "Authorization: Bearer my s3cret")[0] == 404


def test_a_websocket_handshake_needs_the_token() -> None:
    """`TokenAuth` guards WebSocket routes as it does HTTP ones (none of agl's servers has one yet;
    an app that adds one must not open a hole)."""
    app = FastAPI()

    @app.websocket("/echo")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    app.add_middleware(TokenAuth, token=TOKEN)
    with ServingThread(app) as served:
        url = served.url.replace("http://", "ws://") + "/echo"
        with pytest.raises(InvalidStatus) as refused:
            connect(url, open_timeout=30).close()
        assert refused.value.response.status_code == 403
        with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, open_timeout=30) as websocket:
            websocket.send("hi")
            assert websocket.recv(timeout=30) == "hi"


def test_a_websocket_handshake_to_the_store_is_refused(server: ServingThread) -> None:
    url = server.url.replace("http://", "ws://") + "/v1/agl/statistics"
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
        with pytest.raises(InvalidStatus):
            connect(url, additional_headers=headers, open_timeout=30).close()


def test_no_cors_headers_by_default(server: ServingThread) -> None:
    auth = f"Authorization: Bearer {TOKEN}"
    origin = "Origin: http://elsewhere.example"
    simple = get(server, "/v1/agl/statistics", auth, origin)
    preflight = get(server, "/v1/agl/rollouts", origin, "Access-Control-Request-Method: POST", auth, method="OPTIONS")
    assert simple[0] == 200 and preflight[0] == 405
    for _, headers, _ in (simple, preflight):
        assert not [name for name in headers if name.startswith("access-control-")]


def test_with_cors_and_a_token_a_preflight_passes_and_a_refusal_is_readable(backing: SqliteLightningStore) -> None:
    """A browser sends its preflight without the token: a 401 to it failed every cross-origin call."""
    origin = "http://ui.example"
    settings = ServerSettings(token=SecretStr(TOKEN), cors_origins=(origin,))
    with ServingThread(create_app(settings, backing)) as running:
        asks = (
            f"Origin: {origin}",
            "Access-Control-Request-Method: POST",
            "Access-Control-Request-Headers: authorization",
        )
        status, headers, _ = get(running, "/v1/agl/rollouts", *asks, method="OPTIONS")
        assert (status, headers["access-control-allow-origin"]) == (200, origin)
        assert "authorization" in headers["access-control-allow-headers"].lower()
        status, headers, _ = get(running, "/v1/agl/statistics", f"Origin: {origin}")
        assert (status, headers["access-control-allow-origin"]) == (401, origin)
        assert get(running, "/v1/agl/statistics", f"Origin: {origin}", f"Authorization: Bearer {TOKEN}")[0] == 200
        assert_refused(get(running, "/v1/agl/statistics", method="OPTIONS"))  # no preflight: the token is needed


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/<script>alert(1)</script>", b"", 404),
        ("DELETE", "/v1/agl/statistics", b"", 405),
        ("GET", "/v1/agl/rollouts/%3Cscript%3E", b"", 404),
        ("GET", "/v1/agl/rollouts/ro-1/spans?limit=%3Cb%3E", b"", 422),
        ("POST", "/v1/agl/rollouts", b"{not json", 400),
        ("POST", "/v1/agl/rollouts", b'{"input": NaN}', 400),
        ("POST", "/v1/agl/spans", b"[]", 422),
        ("POST", "/v1/traces", b"\x00\x01garbage", 400),
    ],
)
def test_client_errors_are_one_line_json_without_internals(
    server: ServingThread, method: str, path: str, body: bytes, status: int
) -> None:
    head = (
        f"{method} {path} HTTP/1.1\nHost: test\nAuthorization: Bearer {TOKEN}\n"
        "Content-Type: application/json\n"
        f"Content-Length: {len(body)}\n"
    )
    answered, headers, answer = exchange(server, head, body)
    assert answered == status
    assert headers["content-type"].startswith("application/json")  # never HTML: nothing to inject into
    message = json.loads(answer)["message"]
    assert "\n" not in message and len(message) < 300
    for internal in (b"Traceback", b'File "', b".py", b"site-packages"):
        assert internal not in answer


def test_a_chunked_body_over_the_limit_is_a_413(server: ServingThread) -> None:
    body = b"x" * (MAX_BODY + 1)
    for path, kind in (("/v1/agl/rollouts", "application/json"), ("/v1/traces", "application/x-protobuf")):
        head = (
            f"POST {path} HTTP/1.1\nHost: test\nAuthorization: Bearer {TOKEN}\nContent-Type: {kind}\n"
            "Transfer-Encoding: chunked\n"
        )
        status, _, answer = exchange(server, head, b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        assert status == 413, answer
        if path == "/v1/traces":  # OTLP/HTTP's failure body: a google.rpc.Status, protobuf as the request
            assert Status.FromString(answer) == Status(code=8, message=f"request body exceeds {MAX_BODY} bytes")
        else:
            assert json.loads(answer)["error"] == "BodyTooLarge"


def received_until_closed(connection: socket.socket) -> bytes:
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


class QuickHeadDeadline(OneWriteHttpProtocol):
    head_timeout_seconds = 0.2  # the default's 30 s, shortened so the test need not wait for it


@pytest.mark.parametrize("sent", ["", "GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 1"], ids=["nothing", "half a head"])
def test_a_head_that_does_not_arrive_in_time_is_a_408_and_the_connection_closed(
    backing: SqliteLightningStore, sent: str
) -> None:
    """A slow client (one header a minute, or a connection that never sends) held its connection
    for as long as it liked."""
    app = create_app(ServerSettings(), backing)
    with (
        ServingThread(app, http=QuickHeadDeadline) as running,
        socket.create_connection(("127.0.0.1", running.port), timeout=30) as connection,
    ):
        connection.sendall(sent.encode())
        received = received_until_closed(connection)  # the server's answer, then its close
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert json.loads(received.partition(b"\r\n\r\n")[2])["message"] == "the request's head did not arrive within 0.2 s"


def test_the_deadline_is_on_the_head_only(backing: SqliteLightningStore) -> None:
    """A request whose head arrived is answered however long it runs; so is the next on the connection."""
    app = create_app(ServerSettings(), backing)
    with (
        ServingThread(app, http=QuickHeadDeadline) as running,
        socket.create_connection(("127.0.0.1", running.port), timeout=30) as connection,
    ):
        for _ in range(2):
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert connection.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")


def test_headers_without_end_are_a_431(server: ServingThread) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        for index in range(2 * MAX_HEAD_BYTES // 1024):  # the server reads on after refusing: no reset
            connection.sendall(f"X-Filler-{index}: {'y' * 1000}\r\n".encode())
        received = received_until_closed(connection)
    assert received.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")


def test_an_unknown_path_of_kilobytes_is_not_echoed_whole(server: ServingThread) -> None:
    status, _, body = get(server, "/v1/agl/" + "x" * 20_000, f"Authorization: Bearer {TOKEN}")
    message = json.loads(body)["message"]
    assert status == 404 and len(message) < 300 and message.startswith("GET /v1/agl/xxx")
