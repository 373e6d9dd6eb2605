"""OpenAI's Chat Completions protocol, shared by `openrft serve` (openrft.serve.app) and the
agent proxy that serves an agent's calls from the rollout engine (openrft.rollout.agents):
checking a request (n, temperature, top_p, max_tokens or max_completion_tokens, stop, seed,
stream, metadata, tools with tool_choice: openrft.rollout.openai_tools), and shaping the
reply, as one body or as stream events. Bad requests raise RequestError, answered with an
OpenAI-style error object.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse

from openrft.rollout.engine import raw_turn_text
from openrft.rollout.openai_tools import (
    ToolRequest,
    ToolRequestError,
    assistant_message,
    parse_tools,
    tool_call_deltas,
    tool_message_fields,
    tool_parser,
)
from openrft.rollout.tool_calls import ToolCallParser
from openrft.types import Completion, Message, SamplingParams

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_N = 16  # completions per request
MAX_STOP = 4  # stop strings per request (OpenAI's limit)
MAX_METADATA = 16  # metadata pairs per request (OpenAI's limit)
DEFAULT_MAX_TOKENS = 256  # when the request sets no cap


class RequestError(Exception):
    """A request the server cannot serve: 400 (or `status`) with an OpenAI error object."""

    def __init__(
        self, message: str, param: str | None = None, code: str | None = None, status: int = 400
    ):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat completion request."""

    messages: tuple[Message, ...]
    params: SamplingParams
    max_tokens_given: bool  # False: the default cap, shrunk to fit the context if need be
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage
    seeded: bool = False  # the client set a seed: the request runs in a batch of its own
    metadata: Mapping[str, str] = field(default_factory=dict)  # tags for the invocation log
    tools: ToolRequest | None = None  # `tools` and `tool_choice` (openrft.rollout.openai_tools)


def parse_request(body: Any) -> ChatRequest:
    """Checks a request body; raises RequestError naming the offending parameter."""
    if not isinstance(body, Mapping):
        raise RequestError("the request body must be a JSON object")
    try:
        tools = parse_tools(body)
    except ToolRequestError as error:
        raise RequestError(error.message, error.param) from error
    if body.get("logprobs"):
        raise RequestError("'logprobs' is not supported by this server", "logprobs")
    messages = _messages(body.get("messages"))
    # max_completion_tokens is OpenAI's current name; max_tokens the older one.
    cap = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    seed = _number(body, "seed", None, -(1 << 63), (1 << 64) - 1, integer=True)
    params = SamplingParams(
        n=_number(body, "n", 1, 1, MAX_N, integer=True),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        max_new_tokens=_number(body, cap, DEFAULT_MAX_TOKENS, 1, 1 << 20, integer=True),
        stop=_stop(body.get("stop")),
        # No seed: a fresh one per request, as OpenAI samples differently on every call.
        seed=secrets.randbits(63) if seed is None else seed % (1 << 63),
    )
    stream = body.get("stream") or False
    options = body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, Mapping):
        raise RequestError("'stream' must be true or false, 'stream_options' an object", "stream")
    given = body.get(cap) is not None
    return ChatRequest(
        messages,
        params,
        given,
        stream,
        bool(options.get("include_usage")),
        seeded=seed is not None,
        metadata=request_metadata(body),
        tools=tools,
    )


def request_metadata(body: Mapping[str, Any]) -> dict[str, str]:
    """`metadata` (OpenAI) or `requestMetadata` (Bedrock): at most 16 string pairs."""
    key = "requestMetadata" if body.get("requestMetadata") is not None else "metadata"
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping) or len(value) > MAX_METADATA:
        raise RequestError(f"'{key}' must be an object of at most {MAX_METADATA} pairs", key)
    for name, text in value.items():
        if not isinstance(text, str) or len(name) > 64 or len(text) > 512:
            raise RequestError(
                f"'{key}.{name}' must be a string of at most 512 characters (keys at most 64)",
                key,
            )
    return dict(value)


def _messages(value: Any) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise RequestError("'messages' must be a non-empty list", "messages")
    messages: list[Message] = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise RequestError(f"{where} must be an object with 'role' and 'content'", where)
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RequestError(f"{where}.role {role!r} is not one of: {', '.join(ROLES)}", where)
        try:
            extra = tool_message_fields(where, message)
        except ToolRequestError as error:
            raise RequestError(error.message, error.param) from error
        if content is None and "tool_calls" in extra:
            content = ""  # an assistant turn of calls alone
        if isinstance(content, list):  # content parts: only text ones
            texts = [p.get("text") for p in content if isinstance(p, Mapping)]
            if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
                raise RequestError(f"{where}.content: only text parts are supported", where)
            content = "".join(texts)
        if not isinstance(content, str):
            raise RequestError(f"{where}.content must be a string", where)
        # Chat templates rarely know OpenAI's newer "developer" role; it means "system".
        role = "system" if role == "developer" else role
        messages.append({"role": role, "content": content, **extra})  # type: ignore[typeddict-item]
    return tuple(messages)


def _number(
    body: Mapping[str, Any],
    key: str,
    default: float | None,
    low: float,
    high: float,
    integer: bool = False,
) -> Any:
    value = body.get(key)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise RequestError(f"'{key}' must be {kind} from {low:g} to {high:g}, got {value!r}", key)
    return value if integer else float(value)


def _stop(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("'stop' must be a non-empty string or a list of them", "stop")
    if len(stops) > MAX_STOP:
        raise RequestError(f"'stop' takes at most {MAX_STOP} strings", "stop")
    return tuple(stops)


def chat_tool_parser(tokenizer: Any) -> ToolCallParser:
    """The parser for the model's tool calls; a 400 when its template cannot show tools."""
    try:
        return tool_parser(getattr(tokenizer, "chat_template", None))
    except ToolRequestError as error:
        raise RequestError(error.message, error.param) from error


def reply_message(
    completion: Completion,
    request: ChatRequest,
    tokenizer: Any,
    end_token_ids: frozenset[int],
    parser: ToolCallParser | None,
) -> tuple[dict[str, Any], str]:
    """The choice's message and finish reason: with tools shown, calls the model made are
    returned as `tool_calls` (finish reason "tool_calls")."""
    if parser is None or not (request.tools and request.tools.shown):
        return {"role": "assistant", "content": completion.text}, completion.finish_reason
    raw = raw_turn_text(tokenizer, completion.token_ids, end_token_ids, request.params.stop)
    message, calls = assistant_message(parser(raw), completion.text)
    return message, "tool_calls" if calls else completion.finish_reason


def error_response(status: int, message: str, param: str | None, code: str | None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    error = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": error}, status_code=status)


def completion_body(
    model_id: str,
    prompt_tokens: int,
    completions: Sequence[Completion],
    replies: Sequence[tuple[dict[str, Any], str]],
) -> dict:
    completion_tokens = sum(len(c.token_ids) for c in completions)
    choices = [
        {"index": i, "message": message, "finish_reason": reason, "logprobs": None}
        for i, (message, reason) in enumerate(replies)
    ]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def stream_chunks(reply: dict[str, Any], include_usage: bool) -> Iterator[str]:
    """The finished reply as OpenAI stream events: per choice a role chunk, one content chunk
    and a finish chunk; then the usage chunk if asked for; then `data: [DONE]`. The text comes
    in one chunk because generation has already finished when streaming starts."""
    head = {key: reply[key] for key in ("id", "created", "model")}
    head["object"] = "chat.completion.chunk"

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        return f"data: {json.dumps({**head, 'choices': choices, **extra})}\n\n"

    for choice in reply["choices"]:
        index, text = choice["index"], choice["message"]["content"]
        deltas = [{"role": "assistant", "content": ""}]
        deltas += [{"content": text}] if text else []
        deltas += tool_call_deltas(choice["message"])
        for delta in deltas:
            yield event([{"index": index, "delta": delta, "finish_reason": None}])
        yield event([{"index": index, "delta": {}, "finish_reason": choice["finish_reason"]}])
    if include_usage:
        yield event([], usage=reply["usage"])
    yield "data: [DONE]\n\n"
