"""The patches, listed once in `PATCHER` (applied by `activate`, removed by `deactivate`), and
what each patched call records on the canonical LLM span.

Every wrapper keeps the user's call intact: recording errors are logged and swallowed, the
user's own exceptions pass through unchanged (and are recorded on the span), and a wrapper left
in place after `deactivate` (because another library wrapped it over ours) only passes through.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from agl.core.tracing import semconv
from agl.core.tracing.chat import CHAT_PARAMETERS, REASONING_KEYS, ChoiceDraft, request_parameters
from agl.core.tracing.jsontext import json_text
from agl.core.tracing.llm import LlmCall, start_llm_call
from agl.core.tracing.patching import Patch, Patcher

logger = logging.getLogger("agl.instrument.openai")

PROVIDER = "openai"
AZURE_PROVIDER = "azure.ai.openai"  # gen_ai.provider.name of Azure OpenAI in the GenAI conventions
OPENAI_API_HOST = "api.openai.com"
UNKNOWN_MODEL = "unknown"
# The vLLM request field that makes its OpenAI server return token ids (see `_ChatApi.request_token_ids`).
RETURN_TOKEN_IDS = "return_token_ids"


@dataclass
class _Config:
    active: bool = False
    tracer: trace.Tracer | None = None
    capture_token_ids: bool = False


_config = _Config()


# --- what a call records ---------------------------------------------------------------------


def _is_sentinel(value: Any) -> bool:
    """openai's "not sent" markers (``NOT_GIVEN``, ``omit``), by name: they moved between versions."""
    return type(value).__name__ in ("NotGiven", "Omit")


def _is_given(value: Any) -> bool:
    """A parameter the caller set (neither a sentinel nor None)."""
    return value is not None and not _is_sentinel(value)


def _plain(value: Any) -> Any:
    """``value`` as the client sends it: sentinels dropped (nulls kept: they go on the wire), pydantic
    models dumped as openai dumps them."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items() if not _is_sentinel(item)}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json", exclude_unset=True, exclude=getattr(value, "__api_exclude__", None))
    return value


def _materialized(kwargs: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """A copy of ``kwargs`` with one-shot iterables (generators) turned into lists, so that
    recording them does not consume what the client must send."""
    prepared = dict(kwargs)
    for key in keys:
        if _is_given(prepared.get(key)):
            prepared[key] = _listed(prepared[key])
    return prepared


def _listed(value: Any) -> Any:
    """``value`` with every iterable that the client sends as a list made one, at any depth (a
    message's content parts may come as a generator too); what holds none is kept as it is."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable) or hasattr(value, "model_dump"):
        return value
    if isinstance(value, Mapping):
        listed = {key: _listed(item) for key, item in value.items()}
        return listed if any(listed[key] is not item for key, item in value.items()) else value
    items = [_listed(item) for item in value]
    same = isinstance(value, list | tuple) and all(new is old for new, old in zip(items, value, strict=True))
    return value if same else items


def _parameters(kwargs: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """Sampling parameters under their ``gen_ai.request.*`` names (the first of synonyms wins);
    ``top_k`` also from ``extra_body``, where vLLM clients put it."""
    found = request_parameters(kwargs, names, given=_is_given)
    extra = kwargs.get("extra_body")
    if isinstance(extra, Mapping) and isinstance(extra.get("top_k"), int):
        found.setdefault("top_k", extra["top_k"])
    return found


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(type(v) is int for v in value):  # exact type: no bools, one fast pass
        return value
    return None


def _usage_detail(usage: Any, details: str, count: str) -> int | None:
    """A count inside a usage's details (``prompt_tokens_details.cached_tokens``…), if the server gave it."""
    value = getattr(getattr(usage, details, None), count, None)
    return value if type(value) is int else None


def _chat_logprobs(logprobs: Any) -> list[float]:
    """The sampled tokens' logprobs of a chat choice (``logprobs.content[*].logprob``)."""
    content = getattr(logprobs, "content", None) or ()
    return [float(entry.logprob) for entry in content]


def _tool_call(call: Any) -> dict[str, Any]:
    """A function tool call as a chat message carries it (without ``parse()``'s ``parsed_arguments``)."""
    function = getattr(call, "function", None)
    if function is None:  # another kind of tool call (custom tools): as the server sent it
        return _plain(call)  # type: ignore[no-any-return]
    return {"id": call.id, "type": "function", "function": {"name": function.name, "arguments": function.arguments}}


def _assistant_message(message: Any) -> dict[str, Any]:
    """A chat completion's message in the chat shape: role, content, tool calls, reasoning."""
    result: dict[str, Any] = {"role": getattr(message, "role", None) or "assistant", "content": message.content}
    tool_calls = [_tool_call(call) for call in getattr(message, "tool_calls", None) or ()]
    if tool_calls:
        result["tool_calls"] = tool_calls
    refusal = getattr(message, "refusal", None)
    if isinstance(refusal, str) and refusal:  # the model's refusal comes instead of content
        result["refusal"] = refusal
    for key in REASONING_KEYS:
        value = getattr(message, key, None)
        if isinstance(value, str) and value:
            result[key] = value
    return result


class _ChatApi:
    """``chat.completions.create`` and ``.parse`` (``.stream()`` goes through ``create``)."""

    # top_k is no argument of the SDK's create: it comes in extra_body (see `_parameters`)
    parameters = {argument: name for argument, name in CHAT_PARAMETERS.items() if argument != "top_k"}

    def prepare(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return _materialized(kwargs, ("messages", "tools"))

    def request_token_ids(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Ask a vLLM server for the exact token ids (and the sampled tokens' logprobs), keeping
        whatever the caller chose."""
        extra = kwargs.get("extra_body")
        if _is_given(extra) and not isinstance(extra, Mapping):
            return kwargs
        requested = {**kwargs, "extra_body": {RETURN_TOKEN_IDS: True, **(extra or {})}}
        if not _is_given(kwargs.get("logprobs")):
            requested["logprobs"] = True
        return requested

    def record_request(self, call: LlmCall, kwargs: Mapping[str, Any]) -> None:
        tools = kwargs.get("tools")
        call.record_request(
            _plain(kwargs.get("messages")) if _is_given(kwargs.get("messages")) else None,
            tools=_plain(tools) if _is_given(tools) else None,
            parameters=_parameters(kwargs, self.parameters),
        )

    def record_result(self, call: LlmCall, completion: Any) -> None:
        choices = list(completion.choices or ())
        usage = getattr(completion, "usage", None)
        call.record_response(
            [_assistant_message(choice.message) for choice in choices],
            model=getattr(completion, "model", None),
            response_id=getattr(completion, "id", None),
            finish_reasons=[choice.finish_reason for choice in choices if choice.finish_reason],
            input_tokens=getattr(usage, "prompt_tokens", None),
            output_tokens=getattr(usage, "completion_tokens", None),
            cache_read_input_tokens=_usage_detail(usage, "prompt_tokens_details", "cached_tokens"),
            reasoning_output_tokens=_usage_detail(usage, "completion_tokens_details", "reasoning_tokens"),
        )
        first = choices[0] if choices else None
        call.record_token_ids(
            _int_list(getattr(completion, "prompt_token_ids", None)),
            _int_list(getattr(first, "token_ids", None)),
            _chat_logprobs(getattr(first, "logprobs", None)),
        )

    def accumulator(self) -> _ChatStream:
        return _ChatStream()


@dataclass
class _ChoiceDraft(ChoiceDraft):
    """One choice of a chat stream, put together from its deltas (SDK objects)."""

    logprobs: list[float] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)

    def add(self, choice: Any) -> None:
        delta = getattr(choice, "delta", None)
        if delta is not None:
            if delta.content:
                self.content.append(delta.content)
            refusal = getattr(delta, "refusal", None)
            if isinstance(refusal, str) and refusal:
                self.refusal.append(refusal)
            for key in REASONING_KEYS:
                self.add_reasoning(key, getattr(delta, key, None))
            for call in delta.tool_calls or ():
                function = call.function
                self.add_tool_call(
                    getattr(call, "index", None),
                    call.id,
                    call.type,
                    function.name if function is not None else None,
                    function.arguments if function is not None else None,
                )
        self.finish_reason = choice.finish_reason or self.finish_reason
        self.token_ids += _int_list(getattr(choice, "token_ids", None)) or []
        self.logprobs += _chat_logprobs(getattr(choice, "logprobs", None))

    def message(self) -> dict[str, Any]:
        """The chat shape, with the refusal as a whole message carries it."""
        result = super().message()
        if self.refusal:
            result["refusal"] = "".join(self.refusal)
        return result


@dataclass
class _ChatStream:
    """A chat completion put together from its chunks: content, tool-call deltas, token ids
    (the prompt's on the first chunk, the reply's a delta at a time) and logprobs."""

    response_id: str | None = None
    model: str | None = None
    usage: Any = None
    prompt_token_ids: list[int] | None = None
    choices: dict[int, _ChoiceDraft] = field(default_factory=dict)

    def add(self, chunk: Any) -> None:
        self.response_id = self.response_id or getattr(chunk, "id", None)
        self.model = self.model or getattr(chunk, "model", None)
        self.usage = getattr(chunk, "usage", None) or self.usage
        self.prompt_token_ids = _int_list(getattr(chunk, "prompt_token_ids", None)) or self.prompt_token_ids
        for choice in getattr(chunk, "choices", None) or ():
            self.choices.setdefault(choice.index, _ChoiceDraft()).add(choice)

    def record(self, call: LlmCall) -> None:
        drafts = [self.choices[index] for index in sorted(self.choices)]
        call.record_response(
            [draft.message() for draft in drafts] or None,
            model=self.model,
            response_id=self.response_id,
            finish_reasons=[draft.finish_reason for draft in drafts if draft.finish_reason],
            input_tokens=getattr(self.usage, "prompt_tokens", None),
            output_tokens=getattr(self.usage, "completion_tokens", None),
            cache_read_input_tokens=_usage_detail(self.usage, "prompt_tokens_details", "cached_tokens"),
            reasoning_output_tokens=_usage_detail(self.usage, "completion_tokens_details", "reasoning_tokens"),
        )
        first = drafts[0] if drafts else _ChoiceDraft()
        call.record_token_ids(self.prompt_token_ids, first.token_ids, first.logprobs)


class _ResponsesApi:
    """``responses.create`` and ``.parse`` (``.stream()`` goes through ``create``). Input, tools and
    output are recorded in the chat shape the rest of agl uses (see `_chat_input`), the input after a
    system message holding ``instructions``, the output as one assistant message."""

    parameters = {"temperature": "temperature", "top_p": "top_p", "max_output_tokens": "max_tokens"}

    def prepare(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return _materialized(kwargs, ("input", "tools"))

    def request_token_ids(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return kwargs  # vLLM returns token ids on chat completions, not on responses

    def record_request(self, call: LlmCall, kwargs: Mapping[str, Any]) -> None:
        instructions, given = kwargs.get("instructions"), kwargs.get("input")
        messages: list[Any] = [{"role": "system", "content": instructions}] if _is_given(instructions) else []
        if isinstance(given, str):
            messages.append({"role": "user", "content": given})
        elif _is_given(given):
            messages += _chat_input(_plain(given))
        tools = kwargs.get("tools")
        call.record_request(
            messages or None,
            tools=[_chat_tool(tool) for tool in _plain(tools)] if _is_given(tools) else None,
            parameters=_parameters(kwargs, self.parameters),
        )
        conversation = _conversation_id(kwargs.get("conversation"))
        if conversation is not None:  # the server prepends its items to the input recorded here
            call.record({semconv.CONVERSATION_ID: conversation})

    def record_result(self, call: LlmCall, response: Any) -> None:
        message = _output_message(getattr(response, "output", None) or ())
        status = getattr(response, "status", None)
        if status == "failed":
            error = getattr(response, "error", None)
            why = _failure("response.failed", getattr(error, "message", None))
            call.fail(why, _error_code(error, "response.failed"))
        incomplete = getattr(getattr(response, "incomplete_details", None), "reason", None)
        # a reply cut short says why even after a complete tool call, as a chat choice says "length"
        finish = incomplete or (
            "tool_calls" if "tool_calls" in message else "stop" if status == "completed" else status
        )
        usage = getattr(response, "usage", None)
        call.record_response(
            [message],
            model=getattr(response, "model", None),
            response_id=getattr(response, "id", None),
            finish_reasons=[finish] if finish else None,
            input_tokens=getattr(usage, "input_tokens", None),
            output_tokens=getattr(usage, "output_tokens", None),
            cache_read_input_tokens=_usage_detail(usage, "input_tokens_details", "cached_tokens"),
            reasoning_output_tokens=_usage_detail(usage, "output_tokens_details", "reasoning_tokens"),
        )

    def accumulator(self) -> _ResponsesStream:
        return _ResponsesStream()


def _chat_input(items: Iterable[Any]) -> list[Any]:
    """Responses input items (plain) as chat messages, in one pass, so that a Responses call records
    what the equivalent chat call does: messages keep their role; function calls become an assistant
    message's ``tool_calls`` (joining the assistant message just before them, as a chat reply holds
    text and calls); their outputs ``tool`` messages; reasoning the ``reasoning_content`` of the
    assistant message that follows it (dropped if none does). Items with no chat form (built-in
    tools' calls, ``item_reference``) are kept as given, in their place."""
    messages: list[Any] = []
    reasoning: list[str] = []  # reasoning items' text, waiting for the assistant message they precede
    for item in items:
        kind = item.get("type") if isinstance(item, Mapping) else None
        if kind == "reasoning":
            reasoning += _reasoning_texts(item)
            continue
        if kind in _TOOL_CALLS:
            message = _open_assistant_message(messages)
            message.setdefault("tool_calls", []).append(_tool_call_of(item))
        elif kind in _TOOL_OUTPUTS:
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": _tool_output(item)})
        elif kind in ("message", None) and isinstance(item, Mapping) and "role" in item:
            messages.append(_input_message(item["role"], item.get("content")))
        else:
            messages.append(item)
            continue
        if messages[-1].get("role") != "assistant":
            reasoning = []
        elif reasoning:
            _add_reasoning(messages[-1], reasoning)
            reasoning = []
    return messages


def _open_assistant_message(messages: list[Any]) -> dict[str, Any]:
    """The assistant message that function calls join: the last message if it is one, else a new one."""
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "assistant":
        return last
    message: dict[str, Any] = {"role": "assistant", "content": None}
    messages.append(message)
    return message


_TOOL_CALLS = ("function_call", "custom_tool_call")
_TOOL_OUTPUTS = ("function_call_output", "custom_tool_call_output")


def _tool_call_of(item: Any) -> dict[str, Any]:
    """A function or custom tool call item (an output item, or an input item as a dict) as a chat
    ``tool_calls`` entry: ``function`` (name, arguments) or ``custom`` (name, input), with the
    tool's ``namespace`` where it has one (two namespaces may hold tools of one name)."""
    custom = _field(item, "type") == "custom_tool_call"
    value = "input" if custom else "arguments"
    call = {"name": _field(item, "name"), value: _field(item, value)}
    if _field(item, "namespace"):
        call["namespace"] = _field(item, "namespace")
    kind = "custom" if custom else "function"
    return {"id": _field(item, "call_id"), "type": kind, kind: call}


def _field(item: Any, key: str) -> Any:
    """A field of a Responses item or part, given as the SDK's object (a reply's output) or as a
    dict (a request's input)."""
    return item.get(key) if isinstance(item, Mapping) else getattr(item, key, None)


def _add_reasoning(message: dict[str, Any], texts: list[str]) -> None:
    """Reasoning on an assistant message, joined as `_output_message` joins a reply's."""
    key = REASONING_KEYS[0]
    message[key] = "\n\n".join([message[key], *texts] if message.get(key) else texts)


def _input_message(role: Any, content: Any) -> dict[str, Any]:
    """A message item in the chat shape. An assistant message's text parts are joined and its
    refusal set apart, as `_output_message` records a reply; other roles keep their parts, each in
    its chat form."""
    if not isinstance(content, list):
        return {"role": role, "content": content}
    if role == "assistant" and all(_part_type(part) in _ASSISTANT_PARTS for part in content):
        texts = [part.get("text") or "" for part in content if part["type"] != "refusal"]
        refusals = [part.get("refusal") or "" for part in content if part["type"] == "refusal"]
        message: dict[str, Any] = {"role": role, "content": "".join(texts) if texts else None}
        if refusals:
            message["refusal"] = "".join(refusals)
        return message
    return {"role": role, "content": [_chat_part(part) for part in content]}


_ASSISTANT_PARTS = ("output_text", "input_text", "refusal")
_TEXT_PARTS = ("input_text", "output_text")


def _part_type(part: Any) -> Any:
    return part.get("type") if isinstance(part, Mapping) else None


def _chat_part(part: Any) -> Any:
    """A content part in its chat form: text as ``text``, an image by URL as ``image_url``, a file
    by id or data as ``file``; a part with no chat form (an image by file id, a file by URL) as given."""
    kind = _part_type(part)
    if kind in _TEXT_PARTS:
        return {"type": "text", "text": part.get("text")}
    if kind == "input_image" and part.get("image_url"):
        image = {"url": part["image_url"]}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file" and not part.get("file_url"):
        file = {key: part[key] for key in ("file_data", "file_id", "filename") if part.get(key) is not None}
        return {"type": "file", "file": file}
    return part


def _tool_output(item: Mapping[str, Any]) -> Any:
    """A function call's output as a tool message's text: a string as it is, a list of text parts
    joined, any other list (images, files) as JSON."""
    output = item.get("output")
    if not isinstance(output, list):
        return output
    if all(_part_type(part) in _TEXT_PARTS for part in output):
        return "".join(part.get("text") or "" for part in output)
    return json_text(output)


def _chat_tool(tool: Any) -> Any:
    """A Responses function or custom tool in the chat form (``{"type": "function", "function":
    {...}}``, ``{"type": "custom", "custom": {...}}``); built-in tools and namespaces, which have
    none, as given."""
    kind = tool.get("type") if isinstance(tool, Mapping) else None
    if kind not in ("function", "custom") or kind in tool:
        return tool
    return {"type": kind, kind: {key: value for key, value in tool.items() if key != "type"}}


def _conversation_id(conversation: Any) -> str | None:
    """The id of a Responses request's ``conversation``: given as the id or as ``{"id": ...}``."""
    if isinstance(conversation, Mapping):
        conversation = conversation.get("id")
    return conversation if isinstance(conversation, str) and conversation else None


def _output_message(items: Iterable[Any]) -> dict[str, Any]:
    """A response's output items as one assistant message in the chat shape: text, function calls
    as ``tool_calls``, refusal, reasoning."""
    texts: list[str] = []
    refusals: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for item in items:
        kind = getattr(item, "type", None)
        if kind == "message":
            texts += [part.text for part in item.content if getattr(part, "type", None) == "output_text"]
            refusals += [part.refusal for part in item.content if getattr(part, "type", None) == "refusal"]
        elif kind in _TOOL_CALLS:
            tool_calls.append(_tool_call_of(item))
        elif kind == "reasoning":
            reasoning += _reasoning_texts(item)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if refusals:
        message["refusal"] = "".join(refusals)
    if reasoning:
        message[REASONING_KEYS[0]] = "\n\n".join(reasoning)
    return message


def _reasoning_texts(item: Any) -> list[str]:
    """A reasoning item's text (an output item, or an input item as a dict): the reasoning itself
    where the server returns it (open models served by vLLM do), else its summaries (OpenAI's
    models give only those)."""
    parts = _field(item, "content") or _field(item, "summary") or ()
    texts = (_field(part, "text") for part in parts)
    return [text for text in texts if isinstance(text, str) and text]


_FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


def _failure(what: str, detail: Any) -> str:
    """A failed reply's status description: what said so, and its message if it has one."""
    return f"{what}: {detail}" if detail else what


def _error_code(error: Any, what: str) -> str:
    """A failed reply's ``error.type``: the API's error code (``server_error``…), else what said it failed."""
    code = getattr(error, "code", None)
    return code if isinstance(code, str) and code else what


@dataclass
class _ResponsesStream:
    """A streamed response: the final event carries the whole response; until it arrives (a
    stream closed early), the output items done so far and the text deltas of the one under way
    stand in for it. An ``error`` event, after which no final one comes, fails the call."""

    final: Any = None
    response_id: str | None = None
    model: str | None = None
    done: dict[int, Any] = field(default_factory=dict)  # output items by their output_index
    text: dict[Any, list[str]] = field(default_factory=dict)  # text deltas by their item's id
    error: tuple[str, str] | None = None  # why, and its error.type

    def add(self, event: Any) -> None:
        kind = getattr(event, "type", None)
        response = getattr(event, "response", None)
        if response is not None:
            self.response_id = getattr(response, "id", None) or self.response_id
            self.model = getattr(response, "model", None) or self.model
            if kind in _FINAL_EVENTS:
                self.final = response
        if kind == "response.output_text.delta":
            self.text.setdefault(getattr(event, "item_id", None), []).append(event.delta)
        elif kind == "response.output_item.done":
            self.done[event.output_index] = event.item
        elif kind == "error":
            self.error = (_failure("error", getattr(event, "message", None)), _error_code(event, "error"))

    def record(self, call: LlmCall) -> None:
        if self.final is not None:
            RESPONSES.record_result(call, self.final)
            return
        if self.error is not None:
            call.fail(*self.error)
        call.record_response(self._partial_messages(), model=self.model, response_id=self.response_id)

    def _partial_messages(self) -> list[dict[str, Any]] | None:
        """The reply as far as it came: the items done, then the text of any still under way."""
        items = [self.done[index] for index in sorted(self.done)]
        message = _output_message(items)
        finished = {getattr(item, "id", None) for item in items}
        pending = "".join(text for item_id, parts in self.text.items() if item_id not in finished for text in parts)
        if pending:
            message["content"] = (message["content"] or "") + pending
        return [message] if items or pending else None


CHAT = _ChatApi()
RESPONSES = _ResponsesApi()
_Api = _ChatApi | _ResponsesApi


# --- one call's life ------------------------------------------------------------------------

_warned = False


def _recording_failed(what: str) -> None:
    """Log and carry on: the user's call matters more than its record. A warning the first time, then debug."""
    global _warned
    logger.log(logging.DEBUG if _warned else logging.WARNING, "agl could not record %s", what, exc_info=True)
    _warned = True


def _provider(resource: Any) -> str:
    """The provider of the client a resource (``client.chat.completions``…) belongs to: Azure's
    clients are subclasses of openai's own, told apart by class."""
    from openai import AsyncAzureOpenAI, AzureOpenAI

    client = getattr(resource, "_client", None)
    return AZURE_PROVIDER if isinstance(client, AzureOpenAI | AsyncAzureOpenAI) else PROVIDER


_DEFAULT_PORTS = {"https": 443, "http": 80}
_server_of: tuple[Any, dict[str, Any]] | None = None  # the last base URL seen and its attributes


def _server(resource: Any) -> dict[str, Any]:
    """``server.address`` and ``server.port`` of the client's base URL, worked out once per URL
    (a program mostly has one client, and this runs on every call)."""
    global _server_of
    url = getattr(getattr(resource, "_client", None), "base_url", None)
    cached = _server_of
    if cached is None or cached[0] is not url:
        cached = _server_of = (url, _server_attributes(url))
    return cached[1]


def _server_attributes(url: Any) -> dict[str, Any]:
    host = getattr(url, "host", None)
    if not isinstance(host, str) or not host:
        return {}
    port = getattr(url, "port", None) or _DEFAULT_PORTS.get(getattr(url, "scheme", None))
    return {semconv.SERVER_ADDRESS: host, semconv.SERVER_PORT: port} if port else {semconv.SERVER_ADDRESS: host}


def _refuses_token_ids(resource: Any, provider: str) -> bool:
    """Whether the client talks to a service known to refuse vLLM's request fields with a 400
    (OpenAI's API, Azure's): an agent that also calls one of them (a judge, say) keeps working
    with token ids captured from its own vLLM server."""
    host = getattr(getattr(getattr(resource, "_client", None), "base_url", None), "host", None)
    return provider == AZURE_PROVIDER or host == OPENAI_API_HOST


def _start(api: _Api, resource: Any, kwargs: dict[str, Any]) -> tuple[LlmCall | None, dict[str, Any]]:
    """The call's span (joined or opened) and the arguments to send. Materializing a generator of
    messages is the only step allowed to raise: it raises what the client itself would."""
    prepared = api.prepare(kwargs)
    try:
        provider = _provider(resource)
        capture = _config.capture_token_ids and not _refuses_token_ids(resource, provider)
        to_send = api.request_token_ids(prepared) if capture else prepared
        model = prepared.get("model")
        call = start_llm_call(
            str(model) if _is_given(model) else UNKNOWN_MODEL,
            provider=provider,
            tracer=_config.tracer,
            server=_server(resource),
        )
    except Exception:
        _recording_failed("the start of an openai call")
        return None, prepared
    try:
        api.record_request(call, to_send)
    except Exception:
        _recording_failed("an openai request")
    try:
        to_send = _with_trace_headers(to_send, call)
    except Exception:  # a broken propagator: the call goes out without the header, its span still ends
        _recording_failed("the trace context of an openai call")
    return call, to_send


def _with_trace_headers(kwargs: dict[str, Any], call: LlmCall) -> dict[str, Any]:
    """The request with the call's trace context in its headers (``traceparent`` under the default
    propagators), so a server that traces, such as agl's LLM proxy, files its span under this call's.
    Headers the caller set win; arguments of an unexpected type are left alone."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=call.context())
    given = kwargs.get("extra_headers")
    if not carrier or (_is_given(given) and not isinstance(given, Mapping)):
        return kwargs
    return {**kwargs, "extra_headers": {**carrier, **given} if _is_given(given) else carrier}


def _attach(call: LlmCall) -> object | None:
    """Make the span current while the request runs (a layer below joins it; HTTP spans nest)."""
    return otel_context.attach(call.context()) if call.owner else None


def _detach(token: object | None) -> None:
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]


def _finish(call: LlmCall, record: Callable[[LlmCall], None] | None, error: BaseException | None = None) -> None:
    if record is not None:
        try:
            record(call)
        except Exception:
            _recording_failed("an openai response")
    try:
        call.end(error)
    except Exception:
        _recording_failed("the end of an openai call")


def _observe(api: _Api, call: LlmCall, result: Any) -> Any:
    """Record a whole response and end the span now; hand back a stream or raw response wrapped,
    so that the span ends when it is consumed."""
    try:
        from openai import AsyncStream, Stream

        if isinstance(result, Stream):
            return _ObservedStream(result, call, api.accumulator())
        if isinstance(result, AsyncStream):
            return _ObservedAsyncStream(result, call, api.accumulator())
        if hasattr(result, "http_response") and hasattr(result, "parse"):  # with_raw_response / with_streaming_response
            closable = callable(getattr(result, "close", None))
            return (_ObservedClosableResponse if closable else _ObservedRawResponse)(result, call, api)
    except Exception:
        _recording_failed("an openai stream")
        _finish(call, None)
        return result
    _finish(call, lambda span: api.record_result(span, result))
    return result


@dataclass
class _StreamRecord:
    """What a stream records, held by the stream and by its HTTP response: whichever is closed
    first ends the span."""

    call: LlmCall
    accumulator: _ChatStream | _ResponsesStream
    done: bool = False

    def add(self, chunk: Any) -> None:
        try:
            self.accumulator.add(chunk)
        except Exception:
            _recording_failed("an openai stream chunk")

    def finish(self, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        _finish(self.call, self.accumulator.record, error)


class _ClosingResponse(wrapt.ObjectProxy):  # type: ignore[misc]
    """A stream's HTTP response. openai's ``.stream()`` helpers close it, not the stream, when
    their context manager exits: closing it ends the span then, not when the stream is collected."""

    def __init__(self, response: Any, record: _StreamRecord) -> None:
        super().__init__(response)
        self._self_record = record

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_record.finish()

    async def aclose(self) -> None:
        try:
            await self.__wrapped__.aclose()
        finally:
            self._self_record.finish()


class _ObservedStreamBase(wrapt.ObjectProxy):  # type: ignore[misc]
    """A stream that feeds each chunk to the accumulator; the span ends when the stream is
    exhausted, fails, is closed (or its response is), or is dropped unfinished."""

    def __init__(self, stream: Any, call: LlmCall, accumulator: _ChatStream | _ResponsesStream) -> None:
        super().__init__(stream)
        self._self_record = _StreamRecord(call, accumulator)
        self._self_response = _ClosingResponse(stream.response, self._self_record)

    @property
    def response(self) -> Any:
        return self._self_response

    def _self_finish(self, error: BaseException | None = None) -> None:
        self._self_record.finish(error)

    def _self_add(self, chunk: Any) -> None:
        self._self_record.add(chunk)

    def __del__(self) -> None:
        record = getattr(self, "_self_record", None)
        if record is not None:
            record.finish()


class _ObservedStream(_ObservedStreamBase):
    def __iter__(self) -> _ObservedStream:
        return self

    def __next__(self) -> Any:
        try:
            chunk = next(self.__wrapped__)
        except StopIteration:
            self._self_finish()
            raise
        except BaseException as error:
            self._self_finish(error)
            raise
        self._self_add(chunk)
        return chunk

    def __enter__(self) -> _ObservedStream:
        return self

    def __exit__(self, *exc_info: object) -> Any:
        try:
            return self.__wrapped__.__exit__(*exc_info)
        finally:
            self._self_finish()

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_finish()


class _ObservedAsyncStream(_ObservedStreamBase):
    def __aiter__(self) -> _ObservedAsyncStream:
        return self

    async def __anext__(self) -> Any:
        try:
            chunk = await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            self._self_finish()
            raise
        except BaseException as error:
            self._self_finish(error)
            raise
        self._self_add(chunk)
        return chunk

    async def __aenter__(self) -> _ObservedAsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> Any:
        try:
            return await self.__wrapped__.__aexit__(*exc_info)
        finally:
            self._self_finish()

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_finish()

    async def aclose(self) -> None:
        await self.close()


class _ObservedRawResponse(wrapt.ObjectProxy):  # type: ignore[misc]
    """A raw HTTP response (``with_raw_response``, which LiteLLM uses, or ``with_streaming_response``):
    the call is recorded when the caller parses it; the first parse's result is kept, so parsing
    again returns the same observed stream."""

    def __init__(self, response: Any, call: LlmCall, api: _Api) -> None:
        super().__init__(response)
        self._self_call = call
        self._self_api = api
        self._self_parsed: list[Any] = []
        self._self_pending = True  # the call is still this response's to end

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        if self._self_parsed and not args and not kwargs:
            parsed = self._self_parsed[0]
            return _already(parsed) if inspect.iscoroutinefunction(self.__wrapped__.parse) else parsed
        parsed = self.__wrapped__.parse(*args, **kwargs)
        if not self._self_pending:
            return parsed
        if inspect.isawaitable(parsed):
            return self._self_observe_later(parsed)
        return self._self_observe(parsed)

    async def _self_observe_later(self, parsing: Any) -> Any:
        return self._self_observe(await parsing)

    def _self_observe(self, parsed: Any) -> Any:
        if not self._self_pending:  # closed while an async parse ran
            return parsed
        self._self_pending = False
        observed = _observe(self._self_api, self._self_call, parsed)
        self._self_parsed.append(observed)
        return observed

    def _self_end_unparsed(self) -> None:
        """End the span of a response never parsed: the request is all there is to record."""
        self._self_pending = False
        _finish(self._self_call, None)

    def __del__(self) -> None:
        if getattr(self, "_self_pending", False):
            self._self_end_unparsed()


class _ObservedClosableResponse(_ObservedRawResponse):
    """``with_streaming_response``'s response, which its context manager closes: closing it ends
    the span, with a stream parsed from it as far as it was read, or the request alone if it was
    never parsed (read as bytes or lines, say)."""

    def close(self) -> Any:
        closing = self.__wrapped__.close()
        if inspect.isawaitable(closing):
            return self._self_end_after(closing)
        self._self_end()
        return closing

    async def _self_end_after(self, closing: Any) -> Any:
        try:
            return await closing
        finally:
            self._self_end()

    def _self_end(self) -> None:
        if self._self_pending:
            self._self_end_unparsed()
        elif self._self_parsed and isinstance(self._self_parsed[0], _ObservedStreamBase):
            self._self_parsed[0]._self_finish()


async def _already(value: Any) -> Any:
    return value


def _sync_wrapper(api: _Api) -> Callable[..., Any]:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not _config.active:
            return wrapped(*args, **kwargs)
        call, kwargs = _start(api, instance, kwargs)
        if call is None:
            return wrapped(*args, **kwargs)
        token = _attach(call)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            _finish(call, None, error)
            raise
        finally:
            _detach(token)
        return _observe(api, call, result)

    return wrapper


def _async_wrapper(api: _Api) -> Callable[..., Any]:
    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not _config.active:
            return await wrapped(*args, **kwargs)
        call, kwargs = _start(api, instance, kwargs)
        if call is None:
            return await wrapped(*args, **kwargs)
        token = _attach(call)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as error:
            _finish(call, None, error)
            raise
        finally:
            _detach(token)
        return _observe(api, call, result)

    return wrapper


# --- the patches ----------------------------------------------------------------------------


_CHAT = "openai.resources.chat.completions"  # a module up to openai 1.5x, a package after: both export the classes
_BETA_CHAT = "openai.resources.beta.chat.completions"  # where ``parse`` lived before it left beta
_RESPONSES = "openai.resources.responses"

PATCHER = Patcher(
    (
        Patch(_CHAT, "Completions", "create", _sync_wrapper(CHAT)),
        Patch(_CHAT, "AsyncCompletions", "create", _async_wrapper(CHAT)),
        Patch(_CHAT, "Completions", "parse", _sync_wrapper(CHAT)),
        Patch(_CHAT, "AsyncCompletions", "parse", _async_wrapper(CHAT)),
        Patch(_BETA_CHAT, "Completions", "parse", _sync_wrapper(CHAT)),
        Patch(_BETA_CHAT, "AsyncCompletions", "parse", _async_wrapper(CHAT)),
        Patch(_RESPONSES, "Responses", "create", _sync_wrapper(RESPONSES)),
        Patch(_RESPONSES, "AsyncResponses", "create", _async_wrapper(RESPONSES)),
        Patch(_RESPONSES, "Responses", "parse", _sync_wrapper(RESPONSES)),
        Patch(_RESPONSES, "AsyncResponses", "parse", _async_wrapper(RESPONSES)),
    ),
    logger,
)


def activate(tracer: trace.Tracer, capture_token_ids: bool) -> None:
    """Patch openai's classes now or when they are imported: openai itself is not imported here."""
    _config.tracer, _config.capture_token_ids, _config.active = tracer, capture_token_ids, True
    PATCHER.activate()


def deactivate() -> None:
    _config.active = False
    PATCHER.deactivate()
