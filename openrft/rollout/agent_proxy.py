"""The agent proxy: an OpenAI-compatible chat endpoint on loopback whose completions come from
the rollout engine, recorded token for token for training (openrft.rollout.agents).

Each episode has its own key, given to the agent's client as its API key (`Authorization:
Bearer <key>`), so the proxy knows whose call it serves whatever model name the agent asks
for. A call's messages (and `tools`) are rendered by the policy's chat template; the engine
samples the reply with the job's sampling parameters (the policy being trained is the one
that must sample: the request's temperature and top_p are not used; its `max_tokens` and
`stop` are, within `rollout.max_new_tokens`); the reply comes back in OpenAI's shape, with
`tool_calls` when the model called tools, as one body or as stream events. Every call keeps
its prompt token ids, sampled token ids and log-probs.

Batching: the engine decodes one batch at a time; a call waits until every running agent is
waiting on the model (they then decode together) or `window_s` has passed since it came (an
agent busy with its own tools does not hold the others up).

Limits answer like an API would (400 with an OpenAI error): more than `env.max_turns` calls
("max_turns"), a prompt that leaves no room in `env.max_episode_tokens` ("length"); the
episode is marked, and the agent decides what to do with the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from openrft.data.render import encode_prompt
from openrft.net import background
from openrft.rollout.openai_chat import (
    ChatRequest,
    RequestError,
    chat_tool_parser,
    completion_body,
    error_response,
    parse_request,
    reply_message,
    stream_chunks,
)
from openrft.rollout.tool_calls import ToolCallParser
from openrft.types import Completion, FinishReason, SamplingParams

Generate = Callable[[Sequence[Sequence[int]], SamplingParams], list[list[Completion]]]


@dataclass(frozen=True)
class AgentCall:
    """One chat completion an agent asked for, as the policy saw and sampled it."""

    messages: tuple[dict[str, Any], ...]  # the request's messages
    prompt_ids: tuple[int, ...]  # the messages (and tools) as the chat template rendered them
    completion: Completion  # the sampled tokens (and log-probs where the engine gives them)
    reply: dict[str, Any]  # the assistant message returned to the agent


@dataclass
class EpisodeCalls:
    """What the proxy knows of one running episode."""

    calls: list[AgentCall] = field(default_factory=list)
    limit: FinishReason | None = None  # the first limit a call ran into
    model_s: float = 0.0  # time the agent waited on the model
    # An external agent's rollout: the row it is handed, and the reward it reports.
    item: dict[str, Any] | None = None
    outcome: Any = None
    reported: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Pending:
    prompt: list[int]
    params: SamplingParams
    future: asyncio.Future


class AgentProxy:
    """Serves agents' chat calls from `generate` (the rollout engine's, one batch at a time)."""

    def __init__(
        self,
        generate: Generate,
        tokenizer: Any,
        chat_template: str,
        params: SamplingParams,
        max_turns: int,
        max_tokens: int,
        end_token_ids: frozenset[int],
        model_id: str = "policy",
        window_s: float = 0.02,
    ):
        self.generate = generate
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.params = params  # the job's sampling; max_new_tokens is the per-call cap
        self.max_turns, self.max_tokens = max_turns, max_tokens
        self.model_id = model_id
        self.window_s = window_s
        self.end_token_ids = end_token_ids  # where a turn's raw text ends (tool-call parsing)
        self.episodes: dict[str, EpisodeCalls] = {}
        self.running = 0  # agents running now (their calls may batch together)
        self.lock = threading.Lock()
        self._parser: ToolCallParser | None = None
        self._pending: list[_Pending] = []
        self._in_batch = 0
        self._timer: asyncio.TimerHandle | None = None
        self._seed = params.seed
        self._offered: list[str] = []  # external rollouts not taken yet, oldest first
        self._server: contextlib.AbstractContextManager[str] | None = None
        self.url = ""

    # The job's side: open an episode's key, close it, start and stop the server.

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start the HTTP server (once); its base URL, ending in /v1/."""
        if self._server is None:
            self._server = background(self._app(), host, port)
            self.url = self._server.__enter__() + "v1/"
        return self.url

    def open(self, item: dict[str, Any] | None = None) -> str:
        """A new episode's key (its client's API key). With `item`, a rollout an external
        agent takes with POST /v1/rollouts; it counts as running once taken."""
        key = "openrft-" + secrets.token_hex(12)
        with self.lock:
            self.episodes[key] = EpisodeCalls(item=item)
            if item is None:
                self.running += 1
            else:
                self._offered.append(key)
        return key

    def close(self, key: str) -> EpisodeCalls:
        """The episode's calls; its key stops working."""
        with self.lock:
            episode = self.episodes.pop(key)
            if key in self._offered:
                self._offered.remove(key)  # never taken
            elif episode.item is None or not episode.reported.is_set():
                self.running -= 1
            return episode

    def stop(self) -> None:
        if self._server is not None:
            self._server.__exit__(None, None, None)
            self._server = None

    # The server's side.

    def _app(self) -> FastAPI:
        app = FastAPI(title="openrft agent proxy", docs_url=None, redoc_url=None)

        async def models() -> dict[str, Any]:
            entry = {"id": self.model_id, "object": "model", "owned_by": "openrft"}
            return {"object": "list", "data": [entry]}

        async def chat_completions(request: Request) -> Response:
            return await self._serve(request)

        async def refused(request: Request, error: Exception) -> Response:
            assert isinstance(error, RequestError)
            return error_response(error.status, error.message, error.param, error.code)

        app.add_exception_handler(RequestError, refused)

        async def take() -> Response:
            with self.lock:
                if not self._offered:
                    return Response(status_code=204)  # nothing to do now: ask again later
                key = self._offered.pop(0)
                self.running += 1
                item = self.episodes[key].item
            return JSONResponse(
                {"rollout_id": key, "item": item, "base_url": self.url, "api_key": key}
            )

        async def report(rollout_id: str, request: Request) -> Response:
            try:
                body = await request.json()
            except ValueError:
                body = None
            if not isinstance(body, dict) or "reward" not in body:
                raise RequestError("the body must be a JSON object with a 'reward'", "reward")
            with self.lock:
                episode = self.episodes.get(rollout_id)
                if episode is None or episode.item is None:
                    raise RequestError(f"no rollout {rollout_id!r} (timed out?)", status=404)
                if episode.reported.is_set():
                    raise RequestError(f"rollout {rollout_id!r} was reported already", status=409)
                episode.outcome = body["reward"]
                episode.reported.set()
                self.running -= 1
            return Response(status_code=204)

        app.add_api_route("/v1/models", models, methods=["GET"])
        app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
        app.add_api_route("/v1/rollouts", take, methods=["POST"])
        app.add_api_route("/v1/rollouts/{rollout_id}/reward", report, methods=["POST"])
        return app

    async def _serve(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError as error:
            raise RequestError(f"the request body is not JSON: {error}") from error
        # The episode: the API key openrft gave the client, or a rollout id an external agent
        # names in a header or the request's metadata.
        key = request.headers.get("x-rollout-id") or _metadata_rollout(body)
        key = key or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        episode = self.episodes.get(key)
        if episode is None:
            raise RequestError(
                "unknown API key or rollout id: use the client (or the rollout id) openrft "
                "gave the agent",
                status=401,
            )
        chat = parse_request(body)
        if chat.params.n != 1:
            raise RequestError("an agent's call samples one reply ('n' must be 1)", "n")
        prompt, params = self._prepare(chat, episode)
        started = time.monotonic()
        completion = await self._submit(prompt, params)
        waited = time.monotonic() - started
        parser = self._tool_parser() if chat.tools and chat.tools.shown else None
        reply, reason = reply_message(completion, chat, self.tokenizer, self.end_token_ids, parser)
        with self.lock:
            episode.calls.append(AgentCall(tuple(chat.messages), tuple(prompt), completion, reply))
            episode.model_s += waited
        answer = completion_body(self.model_id, len(prompt), [completion], [(reply, reason)])
        if chat.stream:
            chunks = stream_chunks(answer, chat.include_usage)
            return StreamingResponse(chunks, media_type="text/event-stream")
        return JSONResponse(answer)

    def _prepare(self, chat: ChatRequest, episode: EpisodeCalls) -> tuple[list[int], Any]:
        """The prompt's ids and this call's sampling: the job's, capped by the request's
        max_tokens and the episode's token budget; limits marked on the episode."""
        if len(episode.calls) >= self.max_turns:
            episode.limit = episode.limit or "max_turns"
            raise RequestError(
                f"this episode has made its {self.max_turns} calls (env.max_turns)",
                code="max_turns_exceeded",
            )
        tools = chat.tools.shown if chat.tools else ()
        if tools:
            self._tool_parser()  # a model that cannot take tools: 400 before generating
        prompt = encode_prompt(chat.messages, self.tokenizer, self.chat_template, tools)
        room = self.max_tokens - len(prompt)
        if room < 1:
            episode.limit = episode.limit or "length"
            raise RequestError(
                f"the prompt has {len(prompt)} tokens: the episode's budget is "
                f"{self.max_tokens} (env.max_episode_tokens)",
                "messages",
                "context_length_exceeded",
            )
        cap = min(self.params.max_new_tokens, room)
        if chat.max_tokens_given:
            cap = min(cap, chat.params.max_new_tokens)
        stop = tuple(dict.fromkeys((*self.params.stop, *chat.params.stop)))
        return prompt, replace(self.params, n=1, max_new_tokens=cap, stop=stop)

    def _tool_parser(self) -> ToolCallParser:
        if self._parser is None:
            self._parser = chat_tool_parser(self.tokenizer)
        return self._parser

    # Batching, on the server's event loop.

    async def _submit(self, prompt: list[int], params: SamplingParams) -> Completion:
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(prompt, params, future))
        self._maybe_flush()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.window_s, self._on_timer)
        return await future

    def _on_timer(self) -> None:
        self._timer = None
        self._maybe_flush(force=True)
        if self._pending:  # a batch is running: look again when the window has passed
            self._timer = asyncio.get_running_loop().call_later(self.window_s, self._on_timer)

    def _maybe_flush(self, force: bool = False) -> None:
        if self._in_batch or not self._pending:
            return
        everyone_waits = len(self._pending) >= self.running
        if force or everyone_waits:
            asyncio.get_running_loop().create_task(self._run_batch())

    async def _run_batch(self) -> None:
        if self._in_batch or not self._pending:
            return
        # Calls that sample alike (cap and stop strings) share a batch; the oldest goes first.
        key = _batch_key(self._pending[0].params)
        batch = [p for p in self._pending if _batch_key(p.params) == key]
        self._pending = [p for p in self._pending if _batch_key(p.params) != key]
        self._in_batch = len(batch)
        self._seed += 1
        params = replace(batch[0].params, seed=self._seed)
        try:
            results = await asyncio.to_thread(self.generate, [p.prompt for p in batch], params)
        except Exception as error:  # every call of the batch gets the failure
            for pending in batch:
                pending.future.set_exception(
                    RequestError(f"generation failed: {error!r}", status=500)
                )
        else:
            for pending, completions in zip(batch, results, strict=True):
                pending.future.set_result(completions[0])
        finally:
            self._in_batch = 0
        self._maybe_flush(force=True)  # who waited through this batch goes now


def _metadata_rollout(body: Any) -> str:
    """An external agent may name its rollout in the request's metadata instead."""
    metadata = body.get("metadata") if isinstance(body, dict) else None
    rollout = metadata.get("rollout_id") if isinstance(metadata, dict) else None
    return rollout if isinstance(rollout, str) else ""


def _batch_key(params: SamplingParams) -> tuple[int, tuple[str, ...]]:
    return params.max_new_tokens, params.stop
