"""The embedded engine: a transformers causal LM served in-process, on CPU or GPU, weights reloadable live.

    engine = TransformersEngine.load("SmolLM2-135M-Instruct.Q4_1.gguf")   # or a model folder
    ids = engine.chat_prompt_token_ids([{"role": "user", "content": "Hi"}])
    generation = await engine.generate(ids, SamplingParams(max_tokens=32, seed=1))
    await engine.load_weights("checkpoints/step-10")                     # full weights or a LoRA adapter

Generation runs on one worker thread (torch releases the GIL, so the event loop stays free).
Requests waiting when the worker is free (or queued while a trainer held the model) are decoded
together as one batch, up to ``max_batch_size``: prompts left-padded,
an attention mask and explicit positions, one forward pass per token over the KV cache. A request
arriving mid-batch waits for the next batch (static batching, no continuous batching); a request
whose caller stopped waiting before its batch began takes no row. Each row
samples with its own seeded generator, so a request's tokens do not depend on its neighbours'
random draws; the logits of a batched row may differ from an unbatched run in the last bits.

`exclusive()` holds the lock the worker takes for each batch: a trainer updating ``engine.model``
in place holds it, and no token is sampled from half-updated weights.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import numbers
import queue
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agl.trainer.serving import checkpoints
from agl.trainer.serving.engine import Generation, PromptError, SamplingParams
from agl.trainer.serving.sampling import sample
from agl.trainer.serving.seeds import RequestSeeds


class EngineClosed(RuntimeError):
    """The engine was closed before the request was answered."""


@dataclass(frozen=True)
class Token:
    """One sampled token, as streamed by `TransformersEngine.stream` before the final `Generation`."""

    token_id: int
    logprob: float


@dataclass
class _Request:
    prompt: list[int]
    params: SamplingParams
    seed: int
    on_token: Callable[[Token], None] | None
    on_done: Callable[[Generation | BaseException], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set once the caller stopped waiting (a client gone): nobody listens for the answer any more."""


class _Row:
    """A request's progress inside a batch."""

    def __init__(self, request: _Request, engine: TransformersEngine, device: torch.device) -> None:
        self.request = request
        self.engine = engine
        self.generator = torch.Generator(device=device).manual_seed(request.seed)
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.finish_reason: str | None = None
        self.text: str | None = None
        self.error: Exception | None = None
        self.limit = min(request.params.max_tokens, engine.max_positions - len(request.prompt))

    def add(self, token: int, logprob: float) -> None:
        self.token_ids.append(token)
        self.logprobs.append(logprob)
        if self.request.on_token is not None:
            self.request.on_token(Token(token, logprob))
        if token in self.engine.eos_token_ids:
            self.finish_reason = "stop"
        elif self.request.params.stop:
            text = self.engine.decode(self.token_ids)
            cut = min((i for i in (text.find(s) for s in self.request.params.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.finish_reason, self.text = "stop", text[:cut]
        if self.finish_reason is None and len(self.token_ids) >= self.limit:
            self.finish_reason = "length"

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None or self.request.cancelled.is_set()

    def generation(self) -> Generation:
        text = self.text if self.text is not None else self.engine.decode(self.token_ids)
        return Generation(
            list(self.request.prompt), self.token_ids, self.logprobs, self.finish_reason or "length", text
        )

    def outcome(self) -> Generation | Exception:
        """The answer, or this request's own failure: one raised here would stop the worker thread,
        leaving this batch's other callers and every later request waiting for ever."""
        if self.error is not None:
            return self.error
        try:
            return self.generation()
        except Exception as error:  # a tokenizer that cannot decode these ids
            return error


class TransformersEngine:
    """An `Engine` over a transformers causal LM; ``.model`` and ``.tokenizer`` are the live objects."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_name: str,
        device: str = "cpu",
        seed: int | None = None,
        max_batch_size: int = 8,
    ) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.lock = threading.RLock()
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        self.pad_token_id = _first_int(tokenizer.pad_token_id, *self.eos_token_ids, 0)
        self.max_positions = int(getattr(model.config, "max_position_embeddings", None) or 1 << 20)
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        self._seeds = RequestSeeds(seed)
        self._token_bytes: dict[int, bytes] = {}
        self._base_weights: dict[str, torch.Tensor] | None = None  # the weights adapters are merged into
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._closed = False
        self.stats = {"batches": 0, "requests": 0, "largest_batch": 0}
        """Decoded so far: batches, requests, and the most requests one batch held."""
        self._worker = threading.Thread(target=self._work, name=f"agl-engine-{model_name}", daemon=True)
        self._worker.start()

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        seed: int | None = None,
        model_name: str | None = None,
        max_batch_size: int = 8,
    ) -> TransformersEngine:
        """Load a model folder or a ``.gguf`` file. ``seed`` makes the samples of unseeded requests
        reproducible, whatever order they arrive in (see `RequestSeeds`); ``model_name`` defaults to
        the folder's or file's name."""
        _check_device(device)
        model, tokenizer = checkpoints.load_model_and_tokenizer(path, checkpoints.resolve_dtype(dtype, device))
        name = model_name or (Path(path).stem if Path(path).suffix == ".gguf" else Path(path).name)
        return cls(model, tokenizer, model_name=name, device=device, seed=seed, max_batch_size=max_batch_size)

    # --- text and ids -------------------------------------------------------------------------

    def chat_prompt_token_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        try:
            ids = self.tokenizer.apply_chat_template(
                [_text_message(message) for message in messages],
                tools=tools or None,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        except Exception as error:  # jinja raises its own errors for messages a template refuses
            raise PromptError(f"the chat template refused the messages: {error}") from None
        return [int(token) for token in ids]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        # No clean-up of spaces before punctuation: it would make the text differ from the ids and
        # change text a stream already sent ("Hello " then "Hello,"); vLLM does not clean up either.
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for, which OpenAI's logprobs carry so that a character split
        across tokens can be put back together: ``decode([id])`` alone turns a piece of a character
        into U+FFFD. Cached per id (logprobs ask for every sampled token)."""
        cached = self._token_bytes.get(token_id)
        if cached is None:
            cached = self._token_bytes[token_id] = _token_bytes(self.tokenizer, token_id, self.decode)
        return cached

    # --- generation ---------------------------------------------------------------------------

    async def generate(self, prompt_token_ids: list[int], params: SamplingParams) -> Generation:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Generation] = loop.create_future()
        request = self._submit(prompt_token_ids, params, None, _resolver(loop, future))
        try:
            return await future
        finally:
            request.cancelled.set()  # no-op once answered; stops the row if the caller gave up

    async def stream(self, prompt_token_ids: list[int], params: SamplingParams) -> AsyncIterator[Token | Generation]:
        """Each `Token` as it is sampled, then the whole `Generation`."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Token | Generation | BaseException] = asyncio.Queue()

        def put(item: Token | Generation | BaseException) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
                loop.call_soon_threadsafe(events.put_nowait, item)

        request = self._submit(prompt_token_ids, params, put, put)
        try:
            while True:
                item = await events.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Generation):
                    return
        finally:
            request.cancelled.set()

    def generate_sync(self, prompt_token_ids: list[int], params: SamplingParams) -> Generation:
        """`generate` for code without an event loop (benchmarks, trainers' own threads)."""
        done = threading.Event()
        result: list[Generation | BaseException] = []

        def finish(outcome: Generation | BaseException) -> None:
            result.append(outcome)
            done.set()

        self._submit(prompt_token_ids, params, None, finish)
        done.wait()
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def _submit(
        self,
        prompt: list[int],
        params: SamplingParams,
        on_token: Callable[[Token], None] | None,
        on_done: Callable[[Generation | BaseException], None],
    ) -> _Request:
        self._check(prompt, params)
        seed = int(params.seed) if params.seed is not None else self._seeds.for_prompt(prompt)
        seed %= 2**64  # any integer a client sends is a valid torch seed
        request = _Request([int(token) for token in prompt], params, seed, on_token, on_done)
        self._requests.put(request)
        return request

    def _check(self, prompt: list[int], params: SamplingParams) -> None:
        if self._closed:
            raise EngineClosed("the engine is closed")
        if not prompt:
            raise PromptError("the prompt is empty")
        if len(prompt) >= self.max_positions:
            raise PromptError(f"the prompt has {len(prompt)} tokens; this model takes at most {self.max_positions - 1}")
        if any(not 0 <= int(token) < self.vocab_size for token in prompt):
            raise PromptError(f"prompt token ids must be in [0, {self.vocab_size})")
        if params.max_tokens < 1:
            raise PromptError("max_tokens must be at least 1")
        if not params.temperature >= 0 or not 0 < params.top_p <= 1:  # the app checks these; direct callers too
            raise PromptError("temperature must be >= 0 and top_p in (0, 1]")
        if params.seed is not None and not isinstance(params.seed, numbers.Integral):  # torch would fail the batch
            raise PromptError(f"seed must be an integer, not {type(params.seed).__name__}")

    def _work(self) -> None:
        while True:
            first = self._requests.get()
            if first is None:
                break
            if first.cancelled.is_set():
                continue
            with self.lock:  # requests that queue while a trainer holds the model are batched together
                batch = self._batch_after(first)
                try:
                    rows = self._decode([_Row(request, self, self.device) for request in batch])
                except BaseException as error:  # every waiting caller must hear of it
                    for request in batch:
                        request.on_done(error)
                    continue
            self.stats["batches"] += 1
            self.stats["requests"] += len(batch)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            for row in rows:
                row.request.on_done(row.outcome())
        while True:  # closed: fail what is still queued
            try:
                left = self._requests.get_nowait()
            except queue.Empty:
                return
            if left is not None:
                left.on_done(EngineClosed("the engine is closed"))

    def _batch_after(self, first: _Request) -> list[_Request]:
        """``first`` and the requests queued behind it, up to ``max_batch_size``."""
        batch = [first]
        while len(batch) < self.max_batch_size:
            try:
                more = self._requests.get_nowait()
            except queue.Empty:
                break
            if more is None:
                self._requests.put(None)  # finish this batch, then stop
                break
            if not more.cancelled.is_set():  # a request nobody waits for would take a row and widen the prefill
                batch.append(more)
        return batch

    def _decode(self, rows: list[_Row]) -> list[_Row]:
        """Run one batch to the end: a prefill of the left-padded prompts, then a token per step."""
        with self.exclusive() as model, torch.inference_mode():
            was_training = model.training
            model.eval()
            try:
                width = max(len(row.request.prompt) for row in rows)
                input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for i, row in enumerate(rows):
                    input_ids[i, width - len(row.request.prompt) :] = torch.tensor(row.request.prompt)
                    mask[i, width - len(row.request.prompt) :] = 1
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                input_ids, mask, positions = (t.to(self.device) for t in (input_ids, mask, positions))
                cache = None
                while True:
                    out = model(
                        input_ids=input_ids,
                        attention_mask=mask,
                        position_ids=positions,
                        past_key_values=cache,
                        use_cache=True,
                        logits_to_keep=1,
                    )
                    cache = out.past_key_values
                    logits = out.logits[:, -1, :]
                    step, moving = [], []
                    for i, row in enumerate(rows):
                        if not row.done:
                            try:
                                token, logprob = sample(logits[i], row.request.params, row.generator)
                                row.add(token, logprob)
                            except Exception as error:  # fails this request only, not its neighbours
                                row.error = error
                        step.append(row.token_ids[-1] if row.token_ids and not row.done else self.pad_token_id)
                        moving.append(0 if row.done else 1)
                    if all(row.done for row in rows):
                        return rows
                    input_ids = torch.tensor(step, device=self.device)[:, None]
                    mask = torch.cat([mask, torch.ones_like(input_ids)], dim=-1)
                    # A finished row stays at its last position: past the context length a model with
                    # learned positions fails the whole batch, and RoPE scaling that follows the
                    # batch's largest position (dynamic, longrope) would change its neighbours' logits.
                    positions = positions[:, -1:] + torch.tensor(moving, device=self.device)[:, None]
            finally:
                model.train(was_training)

    # --- weights ------------------------------------------------------------------------------

    @contextmanager
    def exclusive(self) -> Iterator[Any]:
        """Hold the model: no batch runs meanwhile. Yields ``self.model`` (which a trainer may update in place)."""
        with self.lock:
            yield self.model

    async def load_weights(self, folder: str | Path) -> None:
        await asyncio.to_thread(self.load_weights_sync, folder)

    def load_weights_sync(self, folder: str | Path) -> None:
        """Serve a checkpoint from the next batch on. Full weights replace the model's; a peft adapter
        is merged into the last full weights (adapters do not stack: each is relative to the base).
        Values change in place: ``self.model`` and its parameter tensors stay the same objects, so a
        trainer's optimizer over them stays valid."""
        folder = Path(folder)
        with self.exclusive():
            if checkpoints.is_adapter(folder):
                if self._base_weights is None:
                    self._base_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                else:
                    self.model.load_state_dict(self._base_weights)
                self.model = checkpoints.merge_adapter(self.model, folder).eval()
            else:
                checkpoints.copy_full_weights(self.model, folder)
                self._base_weights = None
            self._seeds.next_weights()

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        """Finish the running batch, fail queued requests, stop the worker."""
        if not self._closed:
            self._closed = True
            self._requests.put(None)
        self._worker.join()


def _resolver(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> Callable[[Any], None]:
    """A worker-thread callback that settles ``future`` on its loop (ignored if cancelled meanwhile)."""

    def settle(outcome: Any) -> None:
        if future.done():
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def resolve(outcome: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(settle, outcome)

    return resolve


def _text_message(message: dict) -> dict:
    """A message whose content is a list of parts, flattened to its text (text-only models)."""
    content = message.get("content")
    if isinstance(content, list):
        text = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return {**message, "content": text}
    if content is None:
        return {**message, "content": ""}
    return message


def _eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
"""SentencePiece's byte-fallback pieces: ``<0xE6>`` is the byte 0xE6."""


def _token_bytes(tokenizer: Any, token_id: int, decode: Callable[[Sequence[int]], str]) -> bytes:
    """A token's own bytes: a byte-level BPE piece through GPT-2's byte alphabet, a byte-fallback
    piece as its byte, and any other token (added and special ones included) as its decoded text."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if isinstance(piece, str) and token_id not in getattr(tokenizer, "added_tokens_decoder", {}):
        if byte := _BYTE_FALLBACK.fullmatch(piece):
            return bytes([int(byte.group(1), 16)])
        if _is_byte_level(tokenizer) and all(char in _byte_of_char() for char in piece):
            return bytes(_byte_of_char()[char] for char in piece)
    return decode([token_id]).encode()


def _is_byte_level(tokenizer: Any) -> bool:
    """Whether the tokenizer's pieces spell bytes in GPT-2's alphabet (GPT-2, Qwen, SmolLM2, Llama 3)."""
    if hasattr(tokenizer, "byte_decoder"):  # the slow GPT-2 tokenizers
        return True
    from tokenizers import decoders

    return isinstance(getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None), decoders.ByteLevel)


@functools.cache
def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte alphabet, reversed: printable bytes stand for themselves, the others for the
    characters from U+0100 on, in order (``Ġ`` is the space). Written here because transformers
    moves its own copy (``bytes_to_unicode``) between modules across versions."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {chr(byte): byte for byte in printable} | {chr(256 + n): byte for n, byte in enumerate(others)}


def _first_int(*values: Any) -> int:
    return next(int(value) for value in values if isinstance(value, int))


def _check_device(device: str) -> None:
    """Refuse a device this torch cannot use, in one line and before the model loads: torch itself
    fails only at ``model.to(device)``, deep inside (an AssertionError for CUDA on a CPU-only build)."""
    kind = torch.device(device).type
    is_available = getattr(getattr(torch, kind, None), "is_available", None)  # torch.cuda, torch.xpu, ...
    if callable(is_available) and not is_available():
        raise ValueError(f"device {device!r} is not available to this torch ({torch.__version__})")
