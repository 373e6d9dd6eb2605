"""An OpenAI-compatible chat server over a model openrft loads: a base model (alias, directory or
GGUF), optionally with a PEFT adapter such as a training checkpoint.

Endpoints: GET /v1/models, POST /v1/chat/completions (n, temperature, top_p, max_tokens or
max_completion_tokens, stop, seed, stream, metadata, and tools with tool_choice: the protocol
is openrft.rollout.openai_chat and openrft.rollout.openai_tools), and Bedrock Runtime's
Converse, ConverseStream and InvokeModel under /model/{modelId}/ for boto3's `bedrock-runtime`
client (openrft.serve.bedrock_runtime); both go through openrft.serve.chat_service. Generation
runs in a worker thread, one batch at a time, so the event loop keeps answering; concurrent
requests that sample alike are batched together (openrft.serve.batching). A streamed reply
(`stream: true`, ConverseStream) sends its text as it is decoded (openrft.serve.streaming).
With `log_path`,
every request is logged as a JSON line (openrft.serve.invocations). Run it with `serve(...)`,
or mount `create_app(...)` in any ASGI server. Bad requests get 400 with an OpenAI-style error
object (Bedrock's error shape on the Bedrock routes). With an API key, every route but /health
needs it (openrft.serve.auth).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from peft import PeftModel
from starlette.exceptions import HTTPException
from torch import nn
from transformers import PreTrainedTokenizerBase

from openrft.data.render import encode_prompt
from openrft.errors import ModelError
from openrft.models.load import load_model
from openrft.rollout.hf_engine import HFEngine
from openrft.rollout.openai_chat import (
    MAX_N,
    ChatRequest,
    RequestError,
    chat_tool_parser,
    error_response,
    reply_message,
)
from openrft.rollout.tool_calls import ToolCallParser
from openrft.serve.auth import ApiKeyAuth, check_bind
from openrft.serve.batching import Batcher
from openrft.serve.bedrock_runtime import add_bedrock_routes
from openrft.serve.chat_service import ChatService
from openrft.serve.chat_stream import chunk_events
from openrft.serve.invocations import InvocationLog
from openrft.serve.streaming import Post, StreamWatch, generate_watched
from openrft.types import Completion, SamplingParams


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
        return chat_tool_parser(self.tokenizer)

    def reply(self, completion: Completion, request: ChatRequest) -> tuple[dict[str, Any], str]:
        """The choice's message and finish reason (tool calls as `tool_calls`)."""
        parser = self.parser() if request.tools and request.tools.shown else None
        return reply_message(completion, request, self.tokenizer, self.engine.end_token_ids, parser)

    def generate(self, prompt: list[int], params: SamplingParams) -> list[Completion]:
        return self.engine.generate([prompt], params)[0]

    def generate_batch(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        watches: Sequence[StreamWatch | None] | None = None,
    ) -> list[list[Completion]]:
        """Each prompt's completions; a prompt with a watch (a streamed request) hears its
        tokens as they are decoded (openrft.serve.streaming)."""
        if watches is None:
            return self.engine.generate(prompts, params)
        return generate_watched(self.engine, prompts, params, watches)

    def watch(self, request: ChatRequest, params: SamplingParams, post: Post) -> StreamWatch:
        """A streamed request's watch: text as it is decoded unless tools are shown (the text
        may then turn out to be tool calls, sent once generation is done)."""
        tools = bool(request.tools and request.tools.shown)
        end = self.engine.end_token_ids
        return StreamWatch(post, self.tokenizer, end, params, incremental=not tools)


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
    api_key: str | None = None,
) -> FastAPI:
    """The server for `model_name` (+ `adapter`); the model loads now, not on first request.
    `log_path`: append every request to this JSONL invocation log. `max_batch`: prompts that
    may be decoded together. `api_key`: required on every route but /health (None: open)."""
    chat = load_chat_model(model_name, adapter, dtype, device)
    auth = ApiKeyAuth(api_key) if api_key else None
    return build_app(chat, InvocationLog(log_path) if log_path else None, max_batch, auth)


def build_app(
    chat: ChatModel,
    log: InvocationLog | None = None,
    max_batch: int = MAX_N,
    auth: ApiKeyAuth | None = None,
) -> FastAPI:
    """The FastAPI app over an already loaded model; `auth` checks every request (None: open)."""
    # A dependency, not a middleware: SigV4 hashes the body, which the route then reads from
    # the same Request's cache.
    dependencies = [Depends(auth)] if auth else None
    app = FastAPI(title="openrft serve", docs_url=None, redoc_url=None, dependencies=dependencies)
    # One batch at a time: the model and engine are not shared-safe.
    batcher = Batcher(chat.generate_batch, max_batch)
    app.state.batcher = batcher
    app.state.model_id = chat.model_id
    service = ChatService(chat, batcher, log)
    created = int(time.time())

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), None, None)

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
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            error = RequestError(f"the request body is not JSON: {exc}")
            service.log_failure(None, error.status, error.message, started)
            raise error from exc
        if isinstance(body, dict) and body.get("stream") is True:
            stream = await service.stream(body, started=started)
            chunks = chunk_events(stream, chat.model_id)
            return StreamingResponse(chunks, media_type="text/event-stream")
        answer = await service.answer(body, started=started)
        return JSONResponse(answer.reply)

    add_bedrock_routes(app, service)
    return app


def serve(
    model: str,
    adapter: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8001,
    dtype: str = "float32",
    device: str = "auto",
    log_path: str | None = None,
    max_batch: int = MAX_N,
    api_key: str | None = None,
) -> None:
    """Loads the model and serves it until interrupted (Ctrl-C); `api_key`: see create_app."""
    check_bind(host, api_key)  # before the model loads: fail fast
    app = create_app(model, adapter, dtype, device, log_path, max_batch, api_key)
    print(f"openrft: serving {model} at http://{host}:{port}/v1", flush=True)
    print(
        f"openrft: Bedrock Runtime at endpoint_url=http://{host}:{port}, "
        f"modelId={app.state.model_id!r}",
        flush=True,
    )
    if api_key:
        print("openrft: API key required (Bearer KEY; SigV4: access key id openrft)", flush=True)
    else:
        print("openrft: unauthenticated: any local user can call it (--api-key)", flush=True)
    if log_path:
        print(f"openrft: logging invocations to {log_path}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
