"""A scripted OpenAI-compatible model server for tests (needs the server extra): real HTTP, no
model, every answer decided by a script, and exact token ids the way vLLM returns them.

    app = chat_server_app(["Hello!", Reply(tool_calls=[ToolCall("add", {"a": 1, "b": 2})])])
    with ServingThread(app) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="test")
        ...
    chat_log(app).replies[0].token_ids   # what the server sent

Routes: ``/v1/chat/completions`` (streaming or not, tool calls), ``/v1/completions``,
``/v1/models``. The script is a list of replies handed out in order (a request after the last one
is answered 500), or a callable given the request's messages (a completion's prompt arrives as one
user message). A reply is a string or a `Reply` with text and/or tool calls.

The toy tokenizer, so a test can recompute every id: each UTF-8 byte ``b`` of a text is the token
``b + 10`` (`encode`); ``1`` is ``<|im_start|>`` and ``2`` is ``<|im_end|>``. A chat prompt is
rendered by a fixed template (`chat_prompt_token_ids`)::

    [<|im_start|>system\\n# Tools\\n{tools as JSON}<|im_end|>\\n]      only when tools are sent
    <|im_start|>{role}\\n{text}<|im_end|>\\n                          for every message
    <|im_start|>assistant\\n                                          the generation prompt

where an assistant message's text is its content followed by ``<tool_call>{"name": NAME,
"arguments": ARGUMENTS}</tool_call>`` for each tool call (`render_assistant`). A reply's token ids
are its rendered text followed by ``<|im_end|>``, so the next turn's prompt continues the previous
prompt and reply exactly, as with a real chat template. Each sampled token's logprob is
`token_logprob` of its id.

Token ids and logprobs come in vLLM's shape, only when asked for: with ``"return_token_ids":
true`` a chat completion carries ``prompt_token_ids`` at the top level (in a stream, on the first
chunk) and ``token_ids`` on each choice (in a stream, the ids of each chunk's delta); a completion
carries both on each choice. ``logprobs`` (chat: ``true``; completions: an integer) adds the
OpenAI logprobs objects; ``return_tokens_as_token_ids`` names tokens ``token_id:N``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from agl.core.server.app import without_native_telemetry

IM_START = 1
IM_END = 2
BYTE_OFFSET = 10
SPECIAL_TOKENS = {IM_START: "<|im_start|>", IM_END: "<|im_end|>"}
VOCAB_SIZE = 256 + BYTE_OFFSET  # ids 0..265: the size of a model built over this tokenizer
CREATED = 1_700_000_000  # a fixed timestamp: answers are byte-for-byte reproducible
DEFAULT_MODELS = ("agl-toy",)
TOOL_ARGUMENT_PIECE = 8  # characters of tool-call arguments per streamed chunk


# --- the toy tokenizer --------------------------------------------------------------------


def encode(text: str) -> list[int]:
    """One token per UTF-8 byte: ``b + 10``."""
    return [byte + BYTE_OFFSET for byte in text.encode()]


def decode(token_ids: Sequence[int]) -> str:
    """The text of ``token_ids``, special tokens spelled out."""
    parts: list[str] = []
    pending = bytearray()
    for token_id in token_ids:
        if token_id in SPECIAL_TOKENS:
            parts.append(pending.decode(errors="replace"))
            pending.clear()
            parts.append(SPECIAL_TOKENS[token_id])
        else:
            pending.append(token_id - BYTE_OFFSET)
    parts.append(pending.decode(errors="replace"))
    return "".join(parts)


def token_logprob(token_id: int) -> float:
    """The logprob the server reports for sampling ``token_id``: fixed, so tests can recompute it."""
    return -((token_id % 7) + 1) / 8


def tool_call_opening(name: str) -> str:
    return f'<tool_call>{{"name": {json.dumps(name)}, "arguments": '


TOOL_CALL_CLOSING = "}</tool_call>"


def render_tool_call(name: str, arguments: str) -> str:
    return tool_call_opening(name) + arguments + TOOL_CALL_CLOSING


def render_assistant(content: str | None, tool_calls: Sequence[Mapping[str, Any]] = ()) -> str:
    """An assistant turn's text: its content, then its tool calls (OpenAI ``tool_calls`` entries)."""
    calls = "".join(render_tool_call(call["function"]["name"], call["function"]["arguments"]) for call in tool_calls)
    return (content or "") + calls


def chat_prompt_token_ids(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None = None) -> list[int]:
    """The prompt the template makes of ``messages`` (and ``tools``), generation prompt included."""
    ids: list[int] = []
    if tools:
        tools_text = json.dumps(list(tools), sort_keys=True, ensure_ascii=False)
        ids += [IM_START, *encode(f"system\n# Tools\n{tools_text}"), IM_END, *encode("\n")]
    for message in messages:
        text = _text_of(message.get("content"))
        if message.get("role") == "assistant":
            text = render_assistant(text, message.get("tool_calls") or ())
        ids += [IM_START, *encode(f"{message.get('role')}\n{text}"), IM_END, *encode("\n")]
    return [*ids, IM_START, *encode("assistant\n")]


def _text_of(content: Any) -> str:
    """Plain text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


# --- the script -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    """A mapping is sent as its JSON; a string is sent verbatim."""
    id: str | None = None
    """Default: ``call-<n>``, numbered across the server's life."""


@dataclass(frozen=True)
class Reply:
    content: str | None = None
    tool_calls: Sequence[ToolCall] = ()


Script = Callable[[list[dict[str, Any]]], str | Reply] | Sequence[str | Reply]


@dataclass(frozen=True)
class SentReply:
    """What the server answered one request with."""

    endpoint: str
    content: str | None
    tool_calls: list[dict[str, Any]]
    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str


@dataclass
class ChatLog:
    """Every request body received and every reply sent, in order."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    replies: list[SentReply] = field(default_factory=list)


class _ScriptError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- the app --------------------------------------------------------------------------------


def chat_server_app(script: Script, *, models: Sequence[str] = DEFAULT_MODELS) -> FastAPI:
    """An app answering from ``script``; `chat_log` of it tells what it received and sent."""
    app = FastAPI(title="agl scripted chat server", docs_url=None, redoc_url=None, **without_native_telemetry())
    log = app.state.chat_log = ChatLog()
    next_reply = _script_reader(script)
    counter = itertools.count(1)

    def answer(body: dict[str, Any], messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
        log.requests.append(body)
        if body.get("n") not in (None, 1):
            raise _ScriptError(400, "the scripted server answers one choice (n=1)")
        reply = next_reply(messages)
        if isinstance(reply, str):
            return reply, []
        calls = [
            {
                "id": call.id or f"call-{next(counter)}",
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": (call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments))
                    or "{}",
                },
            }
            for call in reply.tool_calls
        ]
        return reply.content, calls

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        data = [{"id": name, "object": "model", "created": CREATED, "owned_by": "agl"} for name in models]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        try:
            body = await _json_object(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _ScriptError(400, "messages must be a non-empty list")
            content, calls = answer(body, messages)
        except _ScriptError as error:
            return _error(error)
        prompt_ids = chat_prompt_token_ids(messages, body.get("tools"))
        sent = _sent("chat.completions", content, calls, prompt_ids)
        log.replies.append(sent)
        response = _Chat(body, sent, f"chatcmpl-{next(counter)}")
        if body.get("stream"):
            return _event_stream(response.chunks())
        return JSONResponse(response.whole())

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> JSONResponse | StreamingResponse:
        try:
            body = await _json_object(request)
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise _ScriptError(400, "prompt must be one string")
            content, calls = answer(body, [{"role": "user", "content": prompt}])
        except _ScriptError as error:
            return _error(error)
        sent = _sent("completions", content, calls, encode(prompt))
        log.replies.append(sent)
        response = _Completion(body, sent, f"cmpl-{next(counter)}")
        if body.get("stream"):
            return _event_stream(response.chunks())
        return JSONResponse(response.whole())

    return app


def chat_log(app: FastAPI) -> ChatLog:
    """What the app made by `chat_server_app` received and sent."""
    log: ChatLog = app.state.chat_log
    return log


def _script_reader(script: Script) -> Callable[[list[dict[str, Any]]], str | Reply]:
    if callable(script):
        return script
    canned: Iterator[str | Reply] = iter(list(script))

    def next_canned(messages: list[dict[str, Any]]) -> str | Reply:
        try:
            return next(canned)
        except StopIteration:
            raise _ScriptError(500, "the script has no replies left") from None

    return next_canned


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise _ScriptError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise _ScriptError(400, "the body must be a JSON object")
    return body


def _error(error: _ScriptError) -> JSONResponse:
    """OpenAI's error shape, which the openai client turns into its typed exceptions."""
    kind = "invalid_request_error" if error.status < 500 else "server_error"
    return JSONResponse({"error": {"message": str(error), "type": kind, "param": None, "code": None}}, error.status)


def _sent(endpoint: str, content: str | None, calls: list[dict[str, Any]], prompt_ids: list[int]) -> SentReply:
    token_ids = [*encode(render_assistant(content, calls)), IM_END]
    finish_reason = "tool_calls" if calls and endpoint == "chat.completions" else "stop"
    logprobs = [token_logprob(token_id) for token_id in token_ids]
    return SentReply(endpoint, content, calls, prompt_ids, token_ids, logprobs, finish_reason)


def _event_stream(chunks: Iterator[dict[str, Any]]) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _usage(sent: SentReply) -> dict[str, int]:
    prompt, completion = len(sent.prompt_token_ids), len(sent.token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _token_name(token_id: int, as_ids: bool) -> str:
    return f"token_id:{token_id}" if as_ids else decode([token_id])


class _Chat:
    """One chat completion's answer, whole or as chunks."""

    def __init__(self, body: dict[str, Any], sent: SentReply, response_id: str) -> None:
        self.sent = sent
        self.head = {"id": response_id, "created": CREATED, "model": body.get("model")}
        self.token_ids = bool(body.get("return_token_ids"))
        self.logprobs = bool(body.get("logprobs"))
        self.top_logprobs = int(body.get("top_logprobs") or 0)
        self.as_ids = bool(body.get("return_tokens_as_token_ids"))
        self.usage_chunk = bool((body.get("stream_options") or {}).get("include_usage"))

    def _logprobs(self, token_ids: Sequence[int]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        content = []
        for token_id in token_ids:
            entry = {
                "token": _token_name(token_id, self.as_ids),
                "logprob": token_logprob(token_id),
                "bytes": [token_id - BYTE_OFFSET] if token_id >= BYTE_OFFSET else list(decode([token_id]).encode()),
            }
            content.append({**entry, "top_logprobs": [entry] if self.top_logprobs else []})
        return {"content": content}

    def whole(self) -> dict[str, Any]:
        sent = self.sent
        message: dict[str, Any] = {"role": "assistant", "content": sent.content}
        if sent.tool_calls:
            message["tool_calls"] = sent.tool_calls
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "logprobs": self._logprobs(sent.token_ids),
            "finish_reason": sent.finish_reason,
        }
        body: dict[str, Any] = {**self.head, "object": "chat.completion", "choices": [choice], "usage": _usage(sent)}
        if self.token_ids:
            choice["token_ids"] = sent.token_ids
            body["prompt_token_ids"] = sent.prompt_token_ids
        return body

    def _chunk(self, delta: dict[str, Any], text: str, finish_reason: str | None = None) -> dict[str, Any]:
        token_ids = encode(text) if finish_reason is None else [IM_END]
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "logprobs": self._logprobs(token_ids),
            "finish_reason": finish_reason,
        }
        if self.token_ids:
            choice["token_ids"] = token_ids
        return {**self.head, "object": "chat.completion.chunk", "choices": [choice]}

    def chunks(self) -> Iterator[dict[str, Any]]:
        """vLLM's order: the role (with the prompt's ids), the content a character at a time, each
        tool call (its name, then its arguments in pieces), the finish; the usage if asked for.
        The chunks' ``token_ids`` add up to the whole reply's."""
        first = {**self.head, "object": "chat.completion.chunk"}
        first["choices"] = [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        if self.token_ids:
            first["prompt_token_ids"] = self.sent.prompt_token_ids
        yield first
        for character in self.sent.content or "":
            yield self._chunk({"content": character}, character)
        for index, call in enumerate(self.sent.tool_calls):
            name, arguments = call["function"]["name"], call["function"]["arguments"]
            function = {"name": name, "arguments": ""}
            opening = {"index": index, "id": call["id"], "type": "function", "function": function}
            yield self._chunk({"tool_calls": [opening]}, tool_call_opening(name))
            pieces = [arguments[i : i + TOOL_ARGUMENT_PIECE] for i in range(0, len(arguments), TOOL_ARGUMENT_PIECE)]
            for number, piece in enumerate(pieces, 1):
                closing = TOOL_CALL_CLOSING if number == len(pieces) else ""
                yield self._chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}, piece + closing)
        yield self._chunk({}, "", self.sent.finish_reason)
        if self.usage_chunk:
            yield {**self.head, "object": "chat.completion.chunk", "choices": [], "usage": _usage(self.sent)}


class _Completion:
    """One text completion's answer, whole or as chunks."""

    def __init__(self, body: dict[str, Any], sent: SentReply, response_id: str) -> None:
        self.sent = sent
        self.text = render_assistant(sent.content, sent.tool_calls)
        self.head = {"id": response_id, "object": "text_completion", "created": CREATED, "model": body.get("model")}
        self.token_ids = bool(body.get("return_token_ids"))
        self.logprobs = body.get("logprobs") is not None
        self.as_ids = bool(body.get("return_tokens_as_token_ids"))
        self.usage_chunk = bool((body.get("stream_options") or {}).get("include_usage"))

    def _choice(self, text: str, token_ids: list[int], offset: int, finish_reason: str | None) -> dict[str, Any]:
        """``offset``: where ``text`` starts in the whole reply (for ``text_offset``)."""
        choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        if self.logprobs:
            names = [_token_name(token_id, self.as_ids) for token_id in token_ids]
            # Every byte token of a character starts where the character does; <|im_end|> after the text.
            offsets = [offset + i for i, character in enumerate(text) for _ in character.encode()]
            choice["logprobs"] = {
                "tokens": names,
                "token_logprobs": [token_logprob(token_id) for token_id in token_ids],
                "top_logprobs": [{name: token_logprob(t)} for name, t in zip(names, token_ids, strict=True)],
                "text_offset": offsets + [offset + len(text)] * (len(token_ids) - len(offsets)),
            }
        if self.token_ids:
            choice["token_ids"] = token_ids
        return choice

    def whole(self) -> dict[str, Any]:
        choice = self._choice(self.text, self.sent.token_ids, 0, self.sent.finish_reason)
        if self.token_ids:
            choice["prompt_token_ids"] = self.sent.prompt_token_ids
        return {**self.head, "choices": [choice], "usage": _usage(self.sent)}

    def chunks(self) -> Iterator[dict[str, Any]]:
        """A character at a time, then the finish; the first chunk also carries the prompt's ids."""
        choices = [self._choice(c, encode(c), offset, None) for offset, c in enumerate(self.text)]
        choices.append(self._choice("", [IM_END], len(self.text), self.sent.finish_reason))
        if self.token_ids:
            choices[0]["prompt_token_ids"] = self.sent.prompt_token_ids
        for choice in choices:
            yield {**self.head, "choices": [choice]}
        if self.usage_chunk:
            yield {**self.head, "choices": [], "usage": _usage(self.sent)}
