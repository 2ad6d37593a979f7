"""The canonical LLM-call span of one proxied call, built from the request and the engine's reply.

The same attributes `agl.core.tracing.llm` writes (so adapters, the CLI and the dedupe of
`agl.core.adapters` read proxy spans and instrumented spans alike): messages as JSON text, the
engine's exact token ids and logprobs (of each choice, see `choice_attribute`), usage, response id
and model, the rollout and attempt.
The span is built as a stored `Span` and written to the store directly, not through an
OpenTelemetry provider, so the proxy records the same way in any process.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from agl.core.tracing import semconv
from agl.core.tracing.chat import REASONING_KEYS, ChoiceDraft, request_parameters
from agl.core.types.spans import Span, SpanResource, SpanStatus
from agl.trainer.proxy.shape import Endpoint

UPSTREAM = "agl.proxy.upstream"
"""The engine base URL that answered (or last failed)."""
SERVICE = SpanResource(attributes={"service.name": "agl-llm-proxy"})
UNKNOWN_MODEL = "unknown"
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


@dataclass
class _Choice(ChoiceDraft):
    """One choice, whole or put together from stream deltas."""

    logprobs: list[float] | None = field(default_factory=list)  # None once a token came without one

    def add_logprobs(self, endpoint: Endpoint, logprobs: Any, tokens: int) -> None:
        """Chat: ``logprobs.content[*].logprob``; completions: ``logprobs.token_logprobs``."""
        if self.logprobs is None:
            return
        if endpoint == "chat":
            entries = logprobs.get("content") if isinstance(logprobs, dict) else None
            values = [entry.get("logprob") for entry in entries or () if isinstance(entry, dict)]
        else:
            values = list(logprobs.get("token_logprobs") or ()) if isinstance(logprobs, dict) else []
        if len(values) != tokens or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            if tokens or values:  # ids without their logprobs (or the reverse): none are trustworthy
                self.logprobs = None
            return
        self.logprobs += [float(v) for v in values]

    def add_delta(self, delta: dict[str, Any]) -> None:
        if isinstance(delta.get("content"), str):
            self.content.append(delta["content"])
        for key in REASONING_KEYS:
            self.add_reasoning(key, delta.get(key))
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            function = call.get("function") or {}
            self.add_tool_call(
                call.get("index"),
                call.get("id"),
                call.get("type"),
                function.get("name"),
                function.get("arguments"),
            )


class CallRecord:
    """One proxied call on its way to becoming a span: the request now, the reply as it arrives."""

    def __init__(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        *,
        rollout_id: str,
        attempt_id: str,
        sequence_id: int,
        traceparent: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.body = body
        self.rollout_id, self.attempt_id, self.sequence_id = rollout_id, attempt_id, sequence_id
        self.start_time = time.time()
        self.upstream: str | None = None
        self.response_id: str | None = None
        self.model: str | None = None
        self.prompt_token_ids: list[int] | None = None
        self.usage: dict[str, Any] | None = None
        self.choices: dict[int, _Choice] = {}
        self.error: tuple[str, str] | None = None  # (type, one-line message)
        parent = _TRACEPARENT.match(traceparent or "")
        self.trace_id = parent.group(1) if parent else os.urandom(16).hex()
        self.parent_id = parent.group(2) if parent else None
        self.span_id = os.urandom(8).hex()  # fixed: storing the span again (an error after the end) replaces it

    # --- the reply ------------------------------------------------------------------------
    def add_reply(self, data: dict[str, Any]) -> None:
        """A whole (non-streamed) reply."""
        self._add(data, streamed=False)

    def add_chunk(self, data: dict[str, Any]) -> None:
        """One streamed chunk: deltas, each chunk's own token ids and logprobs."""
        self._add(data, streamed=True)

    def _add(self, data: dict[str, Any], *, streamed: bool) -> None:
        self._add_head(data)
        for position, choice in enumerate(data.get("choices") or ()):
            if not isinstance(choice, dict):
                continue
            draft = self.choices.setdefault(_index(choice, position), _Choice())
            if self.endpoint == "chat" and streamed:
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    draft.add_delta(delta)
            elif self.endpoint == "chat":
                message = choice.get("message") or {}
                draft.add_delta({key: value for key, value in message.items() if key != "tool_calls"})
                for index, call in enumerate(message.get("tool_calls") or ()):
                    if isinstance(call, dict):
                        draft.add_delta({"tool_calls": [{**call, "index": index}]})
            elif isinstance(choice.get("text"), str):
                draft.content.append(choice["text"])
            self._add_ids_and_finish(draft, choice)

    def fail(self, error_type: str, message: str) -> None:
        self.error = (error_type, message)

    def _add_head(self, data: dict[str, Any]) -> None:
        self.response_id = self.response_id or _str(data.get("id"))
        self.model = self.model or _str(data.get("model"))
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        self.prompt_token_ids = self.prompt_token_ids or _int_list(data.get("prompt_token_ids"))

    def _add_ids_and_finish(self, draft: _Choice, choice: dict[str, Any]) -> None:
        # vLLM's completions carry the prompt's ids on the choice; chat, at the top level
        self.prompt_token_ids = self.prompt_token_ids or _int_list(choice.get("prompt_token_ids"))
        token_ids = _int_list(choice.get("token_ids")) or []
        draft.token_ids += token_ids
        if choice.get("logprobs") is not None or token_ids:
            draft.add_logprobs(self.endpoint, choice.get("logprobs"), len(token_ids))
        draft.finish_reason = _str(choice.get("finish_reason")) or draft.finish_reason

    # --- the span -------------------------------------------------------------------------
    def span(self) -> Span:
        requested_model = _str(self.body.get("model")) or UNKNOWN_MODEL
        operation = "chat" if self.endpoint == "chat" else "text_completion"
        attributes: dict[str, Any] = {
            semconv.LLM_CALL: True,
            semconv.OPERATION_NAME: operation,
            semconv.REQUEST_MODEL: requested_model,
            semconv.ROLLOUT_ID: self.rollout_id,
            semconv.ATTEMPT_ID: self.attempt_id,
            semconv.SEQUENCE_ID: self.sequence_id,
        }
        messages = self._input_messages()
        if messages is not None:
            attributes[semconv.INPUT_MESSAGES] = _json(messages)
        if self.body.get("tools"):
            attributes[semconv.TOOL_DEFINITIONS] = _json(self.body["tools"])
        for name, value in request_parameters(self.body).items():
            attributes[semconv.REQUEST_PREFIX + name] = value
        if self.upstream:
            attributes[UPSTREAM] = self.upstream
        drafts = [self.choices[index] for index in sorted(self.choices)]
        if drafts:
            attributes[semconv.OUTPUT_MESSAGES] = _json([draft.message() for draft in drafts])
            finish = [draft.finish_reason for draft in drafts if draft.finish_reason]
            if finish:
                attributes[semconv.FINISH_REASONS] = finish
        if self.response_id:
            attributes[semconv.RESPONSE_ID] = self.response_id
        if self.model:
            attributes[semconv.RESPONSE_MODEL] = self.model
        prompt_ids = self.prompt_token_ids or _int_list(self.body.get("prompt"))
        if prompt_ids:
            attributes[semconv.PROMPT_TOKEN_IDS] = prompt_ids
        for index in sorted(self.choices):
            attributes.update(_choice_token_attributes(index, self.choices[index]))
        generated = sum(len(draft.token_ids) for draft in drafts)
        usage = self.usage or {}
        input_tokens = usage.get("prompt_tokens", len(prompt_ids) if prompt_ids else None)
        output_tokens = usage.get("completion_tokens", generated or None)
        if isinstance(input_tokens, int):
            attributes[semconv.USAGE_INPUT_TOKENS] = input_tokens
        if isinstance(output_tokens, int):
            attributes[semconv.USAGE_OUTPUT_TOKENS] = output_tokens
        status = SpanStatus(status_code="OK")
        if self.error is not None:
            attributes[semconv.ERROR_TYPE] = self.error[0]
            status = SpanStatus(status_code="ERROR", description=self.error[1])
        return Span(
            rollout_id=self.rollout_id,
            attempt_id=self.attempt_id,
            sequence_id=self.sequence_id,
            trace_id=self.trace_id,
            span_id=self.span_id,
            parent_id=self.parent_id,
            name=f"{operation} {requested_model}",
            kind="CLIENT",
            status=status,
            attributes=attributes,
            start_time=self.start_time,
            end_time=time.time(),
            resource=SERVICE,
        )

    def _input_messages(self) -> list[Any] | None:
        """The messages the model saw: chat messages as sent; a text prompt as one user message."""
        if self.endpoint == "chat":
            messages = self.body.get("messages")
            return messages if isinstance(messages, list) else None
        prompt = self.body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else None


def choice_attribute(name: str, index: int) -> str:
    """Where choice ``index`` of a reply keeps a per-choice attribute: choice 0 under ``name`` itself
    (what the adapters read), choice ``i`` under ``name.i`` (``agl.llm.response_token_ids.1``), so a
    reply of ``n`` samples keeps the token ids of each, not only of the first."""
    return name if index == 0 else f"{name}.{index}"


def _choice_token_attributes(index: int, draft: _Choice) -> dict[str, Any]:
    """A choice's response token ids, and their logprobs when there is one per id."""
    if not draft.token_ids:
        return {}
    attributes: dict[str, Any] = {choice_attribute(semconv.RESPONSE_TOKEN_IDS, index): draft.token_ids}
    if draft.logprobs and len(draft.logprobs) == len(draft.token_ids):
        attributes[choice_attribute(semconv.RESPONSE_LOGPROBS, index)] = draft.logprobs
    return attributes


def _index(choice: dict[str, Any], position: int) -> int:
    index = choice.get("index")
    return index if isinstance(index, int) else position


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, list) and value and all(type(v) is int for v in value):
        return value
    return None


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
