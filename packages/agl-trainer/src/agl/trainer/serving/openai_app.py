"""An OpenAI-compatible FastAPI app over any `Engine`, with vLLM's token-id extensions.

    app = create_openai_app(engine, token="secret")

Routes: ``POST /v1/chat/completions`` (the model's chat template; streaming or not),
``POST /v1/completions`` (a string or a list of token ids), ``GET /v1/models`` (and
``/v1/models/{name}``, which ``client.models.retrieve`` reads), ``GET /health``.
With ``"return_token_ids": true`` a chat completion carries ``prompt_token_ids`` at the top level
(in a stream, on the first chunk) and ``token_ids`` on its choice (in a stream, each chunk's ids,
which add up to the whole); a completion carries both on its choice. ``"logprobs": true`` (chat) or
``"logprobs": 0`` (completions) adds the sampled tokens' logprobs; top alternatives are not
computed (``top_logprobs`` come back empty, and asking for some is a 400). A chat logprob's
``bytes`` are the token's own bytes (see `TransformersEngine.token_bytes`), which add up to a
character that spans several tokens, whose ``token`` text alone is U+FFFD. One choice per request
(``n=1``). Options the engine cannot honour are a 400 naming them (see `openai_wire`); a request
naming another model than the one ``/v1/models`` lists is a 404 (no model: the served one).

Messages take OpenAI's roles and text content (a string or text parts); other roles and parts
(images) are a 400. Tool definitions reach the chat template, and so do earlier turns' tool calls
(their JSON-string ``arguments`` decoded, as templates expect) and ``tool`` messages. With a tool
call parser on (``tool_call_parser``: by default, when the chat template itself writes the hermes
``<tool_call>`` markup), a request offering ``tools`` (``tool_choice`` not "none") gets the calls
the model wrote as ``tool_calls`` (in a stream, one delta per complete call) and ``finish_reason``
"tool_calls"; token ids and logprobs stay those of the raw markup, which is what a trainer learns
from (see `tool_calls`). A chat template that never names ``tools`` (SmolLM2's) cannot show them
to the model: such requests are answered all the same, and the log says so once. Prompts are
tokenized off the event loop, one at a time: one near the body limit takes many seconds, which
would otherwise stall every other request and stream.
A bearer token (when set) guards every route but ``/health``; bodies over ``max_body_bytes`` get
a 413; bad bodies a 400 with a one-line message; an engine failure a 500 saying only "internal
server error" (the traceback goes to the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agl.core.server.app import without_native_telemetry
from agl.core.server.auth import TokenAuth, check_token
from agl.core.server.limits import BodyLimit
from agl.trainer.serving import openai_wire as wire
from agl.trainer.serving.engine import Engine, Generation, PromptError, SamplingParams
from agl.trainer.serving.text_stream import TextStream
from agl.trainer.serving.tool_calls import Delta, ToolCallStream, parse_tool_calls, resolve_parser

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 1024
COMPLETION_MAX_TOKENS = 16
"""A text completion's ``max_tokens`` when none is sent: OpenAI's and vLLM's default for that API."""
MAX_BODY_BYTES = 16 * 1024 * 1024


def _too_large(limit: int) -> bytes:
    """In OpenAI's error shape, so openai clients read the message."""
    return json.dumps(wire.error_body(f"the request body exceeds {limit} bytes", 413)).encode()


def create_openai_app(
    engine: Engine,
    *,
    token: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    tool_call_parser: str | None = "auto",
) -> FastAPI:
    """The app; the caller owns ``engine`` (it is neither started nor closed here).

    ``tool_call_parser``: "hermes" reads tool calls out of replies, None leaves them as text, and
    "auto" reads them when the engine's chat template writes the hermes markup itself.
    ``default_max_tokens``: a chat completion's ``max_tokens`` when none is sent (a text
    completion's is `COMPLETION_MAX_TOKENS`, as in OpenAI's API)."""
    template = _chat_template(engine)
    parser = resolve_parser(tool_call_parser, template)
    unseen_tools = _ToolsUnseen(engine.model_name) if not _renders_tools(template) else None
    app = FastAPI(title="agl model server", docs_url=None, redoc_url=None, **without_native_telemetry())
    tokenizing = asyncio.Lock()  # one prompt at a time: a fast tokenizer refuses concurrent mutable use

    async def tokenized(encode: Callable[..., list[int]], *args: Any) -> list[int]:
        async with tokenizing:
            return await asyncio.to_thread(encode, *args)

    @app.exception_handler(wire.WireError)
    async def refused(request: Request, error: wire.WireError) -> JSONResponse:
        return JSONResponse(wire.error_body(str(error), error.status, error.param), error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        """An unknown route or method, in OpenAI's error shape like every other answer."""
        message = str(error.detail)
        if error.status_code == 404:
            message = wire.not_found(request.url.path, message)
        return JSONResponse(wire.error_body(message, error.status_code), error.status_code, error.headers)

    @app.exception_handler(PromptError)
    async def bad_prompt(request: Request, error: PromptError) -> JSONResponse:
        return JSONResponse(wire.error_body(" ".join(str(error).split()), 400), 400)

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:
        logger.exception("model server: %s %s failed", request.method, request.url.path)
        return JSONResponse(wire.error_body("internal server error", 500), 500)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    def model_entry() -> dict[str, Any]:
        return {"id": engine.model_name, "object": "model", "created": int(time.time()), "owned_by": "agl"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_entry()]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> dict[str, Any]:
        """``client.models.retrieve(name)``: the served model, or a 404 as for a request naming another."""
        if model != engine.model_name:
            raise wire.WireError(f"The model `{model[:200]}` does not exist.", 404, param="model")
        return model_entry()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        body: wire.ChatRequest = wire.parse(wire.ChatRequest, await request.body())
        body.check_model(engine.model_name)
        if body.may_call_tools and unseen_tools:
            unseen_tools.warn()
        prompt = await tokenized(engine.chat_prompt_token_ids, body.messages, body.tools)
        answer = _Chat(engine, body, prompt, body.sampling(default_max_tokens), parser is not None)
        if body.stream:
            return await _event_stream(answer.chunks())
        return JSONResponse(await answer.whole())

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response:
        body: wire.CompletionRequest = wire.parse(wire.CompletionRequest, await request.body())
        body.check_model(engine.model_name)
        prompt = await tokenized(body.prompt_ids, engine.encode)
        answer = _Completion(engine, body, prompt, body.sampling(COMPLETION_MAX_TOKENS))
        if body.stream:
            return await _event_stream(answer.chunks())
        return JSONResponse(await answer.whole())

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, error_body=_too_large)
    if token:
        check_token(token)
        unauthorized = json.dumps(wire.error_body("missing or wrong bearer token", 401)).encode()
        app.add_middleware(TokenAuth, token=token, error_body=unauthorized)  # added last: runs first
    return app


def _chat_template(engine: Engine) -> str:
    """The engine's chat template text, if it has a tokenizer that holds one (several named
    templates: all of them)."""
    template = getattr(getattr(engine, "tokenizer", None), "chat_template", None)
    if isinstance(template, dict):
        return "\n".join(str(text) for text in template.values())
    return template if isinstance(template, str) else ""


def _renders_tools(template: str) -> bool:
    """Whether a chat template can show the model the tools offered: it must name ``tools``, the
    variable they come in (a template not known here is given the benefit of the doubt)."""
    return not template or "tools" in template


class _ToolsUnseen:
    """Says once, in the server's log, that the tools requests offer never reach the model: its
    answers carry no tool calls, and an agent stops at its first reply with no error to read."""

    def __init__(self, model_name: str) -> None:
        self.model_name, self.warned = model_name, False

    def warn(self) -> None:
        if not self.warned:
            self.warned = True
            logger.warning(
                "model server: a request offers tools, but the chat template of %s does not render "
                "tools: the model never sees them, and answers as if none were offered",
                self.model_name,
            )


async def _event_stream(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """Server-sent events. The first chunk is made before answering, so a prompt the engine refuses
    gets a 400; a failure later ends the stream with an error event (the status is already sent)."""
    first = await anext(chunks)

    async def events() -> AsyncIterator[bytes]:
        try:
            yield f"data: {json.dumps(first)}\n\n".encode()
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n".encode()
        except PromptError as error:
            yield f"data: {json.dumps(wire.error_body(' '.join(str(error).split()), 400))}\n\n".encode()
        except Exception:
            logger.exception("model server: stream failed")
            yield f"data: {json.dumps(wire.error_body('internal server error', 500))}\n\n".encode()
        finally:
            await chunks.aclose()  # a client gone: the engine stops decoding for it
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def _steps(
    engine: Engine, prompt: list[int], params: SamplingParams
) -> AsyncIterator[tuple[int, float] | Generation]:
    """Each sampled token as it comes, then the generation; engines without ``stream`` give it all at the end."""
    stream = getattr(engine, "stream", None)
    if stream is None:
        generation = await engine.generate(prompt, params)
        for pair in zip(generation.token_ids, generation.logprobs, strict=True):
            yield pair
        yield generation
        return
    async with contextlib.aclosing(stream(prompt, params)) as items:
        async for item in items:
            yield item if isinstance(item, Generation) else (item.token_id, item.logprob)


class _Answer:
    """What chat and text completions share: the request, the sampled tokens, the logprob names."""

    kind = ""

    def __init__(self, engine: Engine, body: Any, prompt: list[int], params: SamplingParams) -> None:
        self.engine, self.body, self.prompt, self.params = engine, body, prompt, params
        self.head = {"id": f"{self.kind}-{uuid.uuid4().hex}", "created": int(time.time()), "model": engine.model_name}

    def token_name(self, token_id: int) -> str:
        return f"token_id:{token_id}" if self.body.return_tokens_as_token_ids else self.engine.decode([token_id])

    def token_bytes(self, token_id: int) -> list[int]:
        """The token's own bytes (see `TransformersEngine.token_bytes`), which add up to the reply's
        text where a character spans several tokens; an engine without them: its decoded text's."""
        token_bytes = getattr(self.engine, "token_bytes", None)
        return list(token_bytes(token_id) if token_bytes else self.engine.decode([token_id]).encode())


class _Chat(_Answer):
    kind = "chatcmpl"

    def __init__(self, engine: Engine, body: Any, prompt: list[int], params: SamplingParams, parser_on: bool) -> None:
        super().__init__(engine, body, prompt, params)
        self.reads_tool_calls = parser_on and body.may_call_tools
        """Whether tool-call markup in the reply becomes ``tool_calls`` (else it stays content)."""

    def _logprobs(self, token_ids: Sequence[int], logprobs: Sequence[float]) -> dict[str, Any] | None:
        if not self.body.logprobs:
            return None
        content = []
        for token_id, logprob in zip(token_ids, logprobs, strict=True):
            entry = {"token": self.token_name(token_id), "logprob": logprob, "bytes": self.token_bytes(token_id)}
            content.append({**entry, "top_logprobs": []})
        return {"content": content}

    async def whole(self) -> dict[str, Any]:
        generation = await self.engine.generate(self.prompt, self.params)
        message: dict[str, Any] = {"role": "assistant", "content": generation.text}
        finish = generation.finish_reason
        if self.reads_tool_calls:
            message["content"], calls = parse_tool_calls(generation.text)
            if calls:
                message["tool_calls"], finish = calls, "tool_calls"
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "logprobs": self._logprobs(generation.token_ids, generation.logprobs),
            "finish_reason": finish,
        }
        answer: dict[str, Any] = {**self.head, "object": "chat.completion", "choices": [choice]}
        answer["usage"] = wire.usage(self.prompt, generation.token_ids)
        if self.body.return_token_ids:
            choice["token_ids"] = generation.token_ids
            answer["prompt_token_ids"] = self.prompt
        return answer

    def _chunk(
        self, delta: dict[str, Any], ids: list[int], logprobs: list[float], finish: str | None
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "logprobs": self._logprobs(ids, logprobs),
            "finish_reason": finish,
        }
        if self.body.return_token_ids:
            choice["token_ids"] = ids
        return {**self.head, "object": "chat.completion.chunk", "choices": [choice]}

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        """The role (with the prompt's ids), a chunk per sampled token, the finish; usage if asked."""
        async with contextlib.aclosing(_steps(self.engine, self.prompt, self.params)) as steps:
            step = await anext(steps)  # the engine takes (or refuses) the prompt before anything is sent
            first: dict[str, Any] = {**self.head, "object": "chat.completion.chunk"}
            first["choices"] = [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
            if self.body.return_token_ids:
                first["prompt_token_ids"] = self.prompt
            yield first
            text = TextStream(self.engine.decode, self.params.stop)
            calls = ToolCallStream() if self.reads_tool_calls else None
            ids: list[int] = []
            while not isinstance(step, Generation):
                ids.append(step[0])
                piece = text.delta(ids)
                delta = _delta(calls.feed(piece)) if calls else {"content": piece}
                yield self._chunk(delta, [step[0]], [step[1]], None)
                step = await anext(steps)
        rest = text.finish(step.text)
        last = calls.finish(rest) if calls else Delta(rest)
        finish = "tool_calls" if calls and calls.calls else step.finish_reason
        yield self._chunk(_delta(last) if last.content or last.tool_calls else {}, [], [], finish)
        if self.body.include_usage:
            usage = wire.usage(self.prompt, step.token_ids)
            yield {**self.head, "object": "chat.completion.chunk", "choices": [], "usage": usage}


def _delta(piece: Delta) -> dict[str, Any]:
    """A chunk's delta: its content (empty while text is held back) and the calls it completes."""
    delta: dict[str, Any] = {"content": piece.content} if piece.content or not piece.tool_calls else {}
    if piece.tool_calls:
        delta["tool_calls"] = piece.tool_calls
    return delta


class _Completion(_Answer):
    kind = "cmpl"

    def _choice(self, text: str, ids: list[int], logprobs: list[float], offset: int, finish: str | None) -> dict:
        choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        if self.body.logprobs is not None:
            names = [self.token_name(token_id) for token_id in ids]
            offsets = []
            for name in names:
                offsets.append(offset)
                offset += len(name)
            choice["logprobs"] = {
                "tokens": names,
                "token_logprobs": list(logprobs),
                "top_logprobs": None,
                "text_offset": offsets,
            }
        if self.body.return_token_ids:
            choice["token_ids"] = ids
        return choice

    async def whole(self) -> dict[str, Any]:
        generation = await self.engine.generate(self.prompt, self.params)
        choice = self._choice(generation.text, generation.token_ids, generation.logprobs, 0, generation.finish_reason)
        if self.body.return_token_ids:
            choice["prompt_token_ids"] = self.prompt
        usage = wire.usage(self.prompt, generation.token_ids)
        return {**self.head, "object": "text_completion", "choices": [choice], "usage": usage}

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        """A chunk per sampled token (the first also carries the prompt's ids), then the finish."""
        text = TextStream(self.engine.decode, self.params.stop)
        ids: list[int] = []
        head = {**self.head, "object": "text_completion"}
        async with contextlib.aclosing(_steps(self.engine, self.prompt, self.params)) as steps:
            step = await anext(steps)
            while not isinstance(step, Generation):
                before = len(text.sent)
                ids.append(step[0])
                choice = self._choice(text.delta(ids), [step[0]], [step[1]], before, None)
                if len(ids) == 1 and self.body.return_token_ids:
                    choice["prompt_token_ids"] = self.prompt
                yield {**head, "choices": [choice]}
                step = await anext(steps)
        rest = text.finish(step.text)
        yield {**head, "choices": [self._choice(rest, [], [], len(text.sent) - len(rest), step.finish_reason)]}
        if self.body.include_usage:
            yield {**head, "choices": [], "usage": wire.usage(self.prompt, step.token_ids)}
