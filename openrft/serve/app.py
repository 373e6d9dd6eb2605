"""An OpenAI-compatible chat server over a model openrft loads: a base model (alias, directory or
GGUF), optionally with a PEFT adapter such as a training checkpoint.

Endpoints: GET /v1/models, POST /v1/chat/completions (n, temperature, top_p, max_tokens or
max_completion_tokens, stop, seed, stream, metadata, and tools with tool_choice: see
openrft.serve.tools). Generation runs in a worker thread, one batch at a time, so the event
loop keeps answering; concurrent requests that sample alike are batched together
(openrft.serve.batching). With `log_path`, every request is logged as a JSON line
(openrft.serve.invocations). Run it with `serve(...)`, or mount `create_app(...)` in any ASGI
server. Bad requests get 400 with an OpenAI-style error object.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from peft import PeftModel
from starlette.exceptions import HTTPException
from torch import nn
from transformers import PreTrainedTokenizerBase

from openrft.data.render import encode_prompt
from openrft.errors import ModelError
from openrft.models.load import load_model
from openrft.rollout.engine import raw_turn_text
from openrft.rollout.hf_engine import HFEngine
from openrft.rollout.tool_calls import ToolCallParser
from openrft.serve.batching import Batcher, BatchResult
from openrft.serve.invocations import InvocationLog
from openrft.serve.tools import (
    ToolRequest,
    ToolRequestError,
    assistant_message,
    parse_tools,
    tool_call_deltas,
    tool_message_fields,
    tool_parser,
)
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
    tools: ToolRequest | None = None  # `tools` and `tool_choice` (openrft.serve.tools)


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
        metadata=_metadata(body),
        tools=tools,
    )


def _metadata(body: Mapping[str, Any]) -> dict[str, str]:
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


class ChatModel:
    """A loaded model with its tokenizer and rollout engine; `generate` is not thread-safe."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        model_id: str,
        batch_size: int = MAX_N,
    ):
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.engine = HFEngine(model, tokenizer, batch_size)
        self.chat_template = "model" if getattr(tokenizer, "chat_template", None) else "plain"
        config = getattr(model, "config", None)
        self.context = getattr(config, "max_position_embeddings", None) or 1 << 30

    def prepare(self, request: ChatRequest) -> tuple[list[int], SamplingParams]:
        """The prompt's token ids and the sampling parameters, the cap fitted to the context."""
        tools = request.tools.shown if request.tools else ()
        if tools:
            self.parser()  # a model that cannot take tools: 400 before generating
        prompt = encode_prompt(request.messages, self.tokenizer, self.chat_template, tools)
        room = self.context - len(prompt)
        params = request.params
        if params.max_new_tokens > room:
            if request.max_tokens_given or room < 1:
                raise RequestError(
                    f"the prompt has {len(prompt)} tokens and max_tokens is "
                    f"{params.max_new_tokens}: more than the model's context of {self.context}",
                    "messages",
                    "context_length_exceeded",
                )
            params = replace(params, max_new_tokens=room)
        return prompt, params

    def parser(self) -> ToolCallParser:
        try:
            return tool_parser(getattr(self.tokenizer, "chat_template", None))
        except ToolRequestError as error:
            raise RequestError(error.message, error.param) from error

    def reply(self, completion: Completion, request: ChatRequest) -> tuple[dict[str, Any], str]:
        """The choice's message and finish reason: with tools shown, calls the model made
        are returned as `tool_calls` (finish reason "tool_calls")."""
        if not (request.tools and request.tools.shown):
            return {"role": "assistant", "content": completion.text}, completion.finish_reason
        raw = raw_turn_text(
            self.tokenizer, completion.token_ids, self.engine.end_token_ids, request.params.stop
        )
        message, calls = assistant_message(self.parser()(raw), completion.text)
        return message, "tool_calls" if calls else completion.finish_reason

    def generate(self, prompt: list[int], params: SamplingParams) -> list[Completion]:
        return self.engine.generate([prompt], params)[0]

    def generate_batch(
        self, prompts: list[list[int]], params: SamplingParams
    ) -> list[list[Completion]]:
        return self.engine.generate(prompts, params)


def load_chat_model(
    model_name: str, adapter: str | None = None, dtype: str = "float32", device: str = "auto"
) -> ChatModel:
    """Loads `model_name` (and the PEFT adapter directory `adapter`, merged into the weights)
    onto `device` ("auto": the GPU when there is one)."""
    model, tokenizer = load_model(model_name, dtype)
    if adapter is not None:
        try:
            # Merged: generation then runs at base-model speed, without LoRA side branches.
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelError(f"could not load the adapter {adapter}: {exc}") from exc
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model_id = model_name if adapter is None else f"{model_name}+{adapter}"
    return ChatModel(model.to(device), tokenizer, model_id)


def create_app(
    model_name: str,
    adapter: str | None = None,
    dtype: str = "float32",
    device: str = "auto",
    log_path: str | None = None,
    max_batch: int = MAX_N,
) -> FastAPI:
    """The server for `model_name` (+ `adapter`); the model loads now, not on first request.
    `log_path`: append every request to this JSONL invocation log. `max_batch`: prompts that
    may be decoded together."""
    chat = load_chat_model(model_name, adapter, dtype, device)
    return build_app(chat, InvocationLog(log_path) if log_path else None, max_batch)


def build_app(chat: ChatModel, log: InvocationLog | None = None, max_batch: int = MAX_N) -> FastAPI:
    """The FastAPI app over an already loaded model."""
    app = FastAPI(title="openrft serve", docs_url=None, redoc_url=None)
    # One batch at a time: the model and engine are not shared-safe.
    batcher = Batcher(chat.generate_batch, max_batch)
    app.state.batcher = batcher
    created = int(time.time())

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), None, None)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        entry = {"id": chat.model_id, "object": "model", "created": created, "owned_by": "openrft"}
        return {"object": "list", "data": [entry]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "batches_run": batcher.batches_run}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        started = time.monotonic()
        body: Any = None
        try:
            try:
                body = json.loads(await request.body())
            except ValueError as exc:
                raise RequestError(f"the request body is not JSON: {exc}") from exc
            parsed = parse_request(body)
            prompt, params = chat.prepare(parsed)
            try:
                result = await batcher.submit(prompt, params, parsed.seeded)
            except Exception as exc:  # a generation failure is the server's, not the client's
                raise RequestError(f"generation failed: {exc!r}", status=500) from exc
        except RequestError as exc:
            if log is not None:
                error = {"status": exc.status, "message": exc.message}
                timing = {"total_s": time.monotonic() - started}
                meta = _logged_metadata(body)
                record_id = f"chatcmpl-{uuid.uuid4().hex}"
                log.write(record_id, chat.model_id, body, meta, None, error, timing, None)
            raise
        replies = [chat.reply(c, parsed) for c in result.completions]
        reply = _completion_body(chat.model_id, len(prompt), result.completions, replies)
        if log is not None:
            _log_reply(log, chat.model_id, body, parsed, reply, result, started)
        if not parsed.stream:
            return JSONResponse(reply)
        chunks = _chunks(reply, parsed.include_usage)
        return StreamingResponse(chunks, media_type="text/event-stream")

    return app


def _log_reply(
    log: InvocationLog,
    model_id: str,
    body: Any,
    parsed: ChatRequest,
    reply: dict[str, Any],
    result: BatchResult,
    started: float,
) -> None:
    timing = {
        "queue_s": result.queue_s,
        "generate_s": result.generate_s,
        "total_s": time.monotonic() - started,
    }
    batch = {"id": result.batch_id, "size": result.batch_size}
    log.write(reply["id"], model_id, body, dict(parsed.metadata), reply, None, timing, batch)


def _logged_metadata(body: Any) -> dict[str, str]:
    """The metadata of a request that failed: what of it is valid, for filtering the logs."""
    try:
        return _metadata(body) if isinstance(body, Mapping) else {}
    except RequestError:
        return {}


def _error(status: int, message: str, param: str | None, code: str | None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    error = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": error}, status_code=status)


def _completion_body(
    model_id: str,
    prompt_tokens: int,
    completions: list[Completion],
    replies: list[tuple[dict[str, Any], str]],
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


def _chunks(reply: dict[str, Any], include_usage: bool) -> Iterator[str]:
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


def serve(
    model: str,
    adapter: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8001,
    dtype: str = "float32",
    device: str = "auto",
    log_path: str | None = None,
    max_batch: int = MAX_N,
) -> None:
    """Loads the model and serves it until interrupted (Ctrl-C)."""
    app = create_app(model, adapter, dtype, device, log_path, max_batch)
    print(f"openrft: serving {model} at http://{host}:{port}/v1", flush=True)
    if log_path:
        print(f"openrft: logging invocations to {log_path}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
