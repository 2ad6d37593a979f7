"""How the LLM proxy reads an engine's event stream, over real HTTP on 127.0.0.1: what the engine
sent reaches the agent and the span however the bytes are cut or the connection ends."""

from __future__ import annotations

import asyncio
import json
import threading
from contextlib import suppress

import aiohttp
from starlette.types import Receive, Scope, Send

from agl.core.testing.server import ServingThread
from agl.core.tracing import semconv
from agl.core.types import Span
from agl.trainer.proxy.app import _Relay
from agl.trainer.proxy.forward import Forwarder, Sent, new_session
from agl.trainer.proxy.routing import Upstreams
from agl.trainer.proxy.shape import Asked
from agl.trainer.proxy.spans import CallRecord

CHUNK = {
    "id": "chatcmpl-x",
    "model": "m",
    "prompt_token_ids": [1, 2],
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "token_ids": [40, 41]}],
}
EVERYTHING = Asked(token_ids=True, logprobs=True)


async def relayed(sent: Sent) -> tuple[bytes, Span]:
    """What `_Relay` gives the agent from ``sent``, and the span it stores."""
    saved: list[Span] = []

    async def save(record: CallRecord) -> None:
        saved.append(record.span())

    record = CallRecord("chat", {"messages": []}, rollout_id="ro-1", attempt_id="at-1", sequence_id=1)
    out = b"".join([event async for event in _Relay("chat", sent, record, EVERYTHING, save).events()])
    [span] = saved
    return out, span


async def chunk_then_crash(scope: Scope, receive: Receive, send: Send) -> None:
    """An engine that sends a chunk and crashes (the connection drops without the stream's end)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": f"data: {json.dumps(CHUNK)}\n\n".encode(), "more_body": True})
    raise RuntimeError("the engine crashed")


async def test_chunks_that_arrived_before_the_engine_broke_off_are_relayed_and_recorded() -> None:
    """aiohttp raises a dropped connection's error before it returns what it buffered: a chunk
    not read by the time the connection dropped was lost, to the agent and to the span."""
    with ServingThread(chunk_then_crash) as engine:  # type: ignore[arg-type]
        async with new_session() as session:
            sent = await Forwarder(session, Upstreams([f"{engine.url}/v1"])).send("ro-1", "POST", "/x", b"{}")
            with suppress(aiohttp.ClientPayloadError):  # the proxy is slow to read: the drop came first
                await sent.response.content.wait_eof()
            out, span = await relayed(sent)
    assert b'"Hel"' in out and b"broke off" in out  # the chunk, then the error event
    assert span.status.status_code == "ERROR"
    assert span.attributes[semconv.RESPONSE_TOKEN_IDS] == [40, 41]


class CrlfEngine:
    """An engine whose events end in CRLF (as servers on sse-starlette send), its second event's
    end cut between ``\\r`` and ``\\n``: the rest is sent once the test has read the first event."""

    def __init__(self) -> None:
        self.go_on = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        second = {**CHUNK, "choices": [{"index": 0, "delta": {"content": "lo"}, "token_ids": [42]}]}
        head = f"data: {json.dumps(CHUNK)}\r\n\r\ndata: {json.dumps(second)}\r\n\r".encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": head, "more_body": True})
        await asyncio.to_thread(self.go_on.wait, 30)
        await send({"type": "http.response.body", "body": b"\ndata: [DONE]\r\n\r\n"})


async def test_an_event_end_cut_between_cr_and_lf_still_ends_the_event() -> None:
    """Line ends were made LF in each piece as it arrived, so a CRLF split over two pieces stayed
    ``\\r`` + ``\\n``: the event ran on into the next, both unparsed, their token ids unrecorded."""
    engine = CrlfEngine()
    saved: list[Span] = []

    async def save(record: CallRecord) -> None:
        saved.append(record.span())

    with ServingThread(engine) as served:  # type: ignore[arg-type]
        async with new_session() as session:
            sent = await Forwarder(session, Upstreams([f"{served.url}/v1"])).send("ro-1", "POST", "/x", b"{}")
            record = CallRecord("chat", {"messages": []}, rollout_id="ro-1", attempt_id="at-1", sequence_id=1)
            events = _Relay("chat", sent, record, EVERYTHING, save).events()
            out = [await anext(events)]
            engine.go_on.set()
            out += [event async for event in events]
    assert b"".join(out).count(b"data: ") == 3  # each event relayed as it was
    [span] = saved
    assert span.attributes[semconv.RESPONSE_TOKEN_IDS] == [40, 41, 42]
    assert json.loads(span.attributes[semconv.OUTPUT_MESSAGES])[0]["content"] == "Hello"


async def done_then_crash(scope: Scope, receive: Receive, send: Send) -> None:
    """An engine that sends its whole stream, [DONE] included, and drops the connection before
    the response's own end (a crash, or a middlebox closing early)."""
    if scope["type"] != "http":
        return
    body = f"data: {json.dumps(CHUNK)}\n\ndata: [DONE]\n\n".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": body, "more_body": True})
    raise RuntimeError("the engine crashed")


async def test_a_connection_dropped_after_done_leaves_the_call_complete() -> None:
    """The span stored at [DONE] was stored again as an error, and an error event followed
    [DONE]: a call the agent had whole was recorded as failed."""
    with ServingThread(done_then_crash) as engine:  # type: ignore[arg-type]
        async with new_session() as session:
            sent = await Forwarder(session, Upstreams([f"{engine.url}/v1"])).send("ro-1", "POST", "/x", b"{}")
            out, span = await relayed(sent)
    assert out.endswith(b"data: [DONE]\n\n")
    assert span.status.status_code == "OK"
    assert span.attributes[semconv.RESPONSE_TOKEN_IDS] == [40, 41]
