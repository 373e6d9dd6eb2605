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

Token-level clients (verifiers' training client, openrft.rollout.verifiers_env) render
prompts themselves and call `POST /inference/v1/generate` with token ids, as they would a
vLLM server: the reply is the sampled token ids and each one's log-prob. One key serves a
whole batch of such episodes; the `X-Session-ID` header (verifiers' trace id) tells them
apart, and limits count per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    session: str = ""  # a token-level client's X-Session-ID (its episode within the key)


@dataclass
class EpisodeCalls:
    """What the proxy knows of one running episode."""

    calls: list[AgentCall] = field(default_factory=list)
    limit: FinishReason | None = None  # the first limit a call ran into
    session_limits: dict[str, FinishReason] = field(default_factory=dict)  # the same, per session
    agents: int = 1  # agents running under this key now (many for a token-level batch)
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
        # The engine runs on one thread of its own, never on whichever thread of the default
        # pool is free: one batch at a time, and its memory kept in one allocator arena.
        self._engine_thread: ThreadPoolExecutor | None = None
        self._server: contextlib.AbstractContextManager[str] | None = None
        self.url = ""

    # The job's side: open an episode's key, close it, start and stop the server.

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start the HTTP server (once); its base URL, ending in /v1/."""
        if self._server is None:
            self._server = background(self._app(), host, port)
            self.url = self._server.__enter__() + "v1/"
        return self.url

    def open(self, item: dict[str, Any] | None = None, agents: int = 1, key: str = "") -> str:
        """A new episode's key (its client's API key), for `agents` agents running at once
        (a token-level batch: see finished()). With `item`, a rollout an external agent
        takes with POST /v1/rollouts; it counts as running once taken. `key` reuses a
        closed episode's key (for a client that keeps its API key between batches)."""
        key = key or new_key()
        with self.lock:
            if key in self.episodes:
                raise ValueError("that key is in use")
            self.episodes[key] = EpisodeCalls(item=item, agents=agents if item is None else 1)
            if item is None:
                self.running += agents
            else:
                self._offered.append(key)
        return key

    def finished(self, key: str) -> None:
        """One of the key's agents has finished: batches no longer wait for it."""
        with self.lock:
            episode = self.episodes[key]
            if episode.agents > 0:
                episode.agents -= 1
                self.running -= 1

    def close(self, key: str) -> EpisodeCalls:
        """The episode's calls; its key stops working."""
        with self.lock:
            episode = self.episodes.pop(key)
            if key in self._offered:
                self._offered.remove(key)  # never taken
            elif episode.item is None:
                self.running -= episode.agents
            elif not episode.reported.is_set():
                self.running -= 1
            return episode

    def stop(self) -> None:
        if self._server is not None:
            self._server.__exit__(None, None, None)
            self._server = None
        if self._engine_thread is not None:
            self._engine_thread.shutdown(wait=False)
            self._engine_thread = None

    # The server's side.

    def _app(self) -> FastAPI:
        app = FastAPI(title="openrft agent proxy", docs_url=None, redoc_url=None)

        async def models() -> dict[str, Any]:
            # max_model_len: vLLM's field, read by token-level clients (the episode budget).
            entry = {
                "id": self.model_id,
                "object": "model",
                "owned_by": "openrft",
                "max_model_len": self.max_tokens,
            }
            return {"object": "list", "data": [entry]}

        async def generate(request: Request) -> Response:
            return await self._serve_tokens(request)

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
            if not isinstance(body, dict) or not ({"reward", "turn_rewards"} & set(body)):
                raise RequestError(
                    "the body must be a JSON object with a 'reward' (and/or 'turn_rewards')",
                    "reward",
                )
            with self.lock:
                episode = self.episodes.get(rollout_id)
                if episode is None or episode.item is None:
                    raise RequestError(f"no rollout {rollout_id!r} (timed out?)", status=404)
                if episode.reported.is_set():
                    raise RequestError(f"rollout {rollout_id!r} was reported already", status=409)
                episode.outcome = body.get("reward")
                if "turn_rewards" in body:  # split off again by agents.split_turn_rewards
                    reward = episode.outcome
                    base = reward if isinstance(reward, dict) else {"score": reward}
                    base = {k: v for k, v in base.items() if v is not None}
                    episode.outcome = {**base, "turn_rewards": body["turn_rewards"]}
                episode.reported.set()
                self.running -= 1
            return Response(status_code=204)

        app.add_api_route("/v1/models", models, methods=["GET"])
        app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
        app.add_api_route("/inference/v1/generate", generate, methods=["POST"])
        app.add_api_route("/v1/rollouts", take, methods=["POST"])
        app.add_api_route("/v1/rollouts/{rollout_id}/reward", report, methods=["POST"])
        return app

    async def _episode_of(self, request: Request) -> tuple[Any, EpisodeCalls]:
        """The request's JSON body and its episode: the API key openrft gave the client, or
        a rollout id an external agent names in a header or the request's metadata."""
        try:
            body = await request.json()
        except ValueError as error:
            raise RequestError(f"the request body is not JSON: {error}") from error
        key = request.headers.get("x-rollout-id") or _metadata_rollout(body)
        key = key or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        episode = self.episodes.get(key)
        if episode is None:
            raise RequestError(
                "unknown API key or rollout id: use the client (or the rollout id) openrft "
                "gave the agent",
                status=401,
            )
        return body, episode

    async def _serve_tokens(self, request: Request) -> Response:
        """POST /inference/v1/generate: token ids in, sampled token ids and log-probs out
        (vLLM's shape, as verifiers' training client reads it)."""
        body, episode = await self._episode_of(request)
        session = request.headers.get("x-session-id", "")
        prompt = body.get("token_ids") if isinstance(body, dict) else None
        vocabulary = len(self.tokenizer)
        if (
            not isinstance(prompt, list)
            or not prompt
            or not all(isinstance(t, int) and 0 <= t < vocabulary for t in prompt)
        ):
            raise RequestError(
                f"'token_ids' must be a non-empty list of token ids below {vocabulary}",
                "token_ids",
            )
        asked = body.get("sampling_params") or {}
        if not isinstance(asked, dict):
            raise RequestError("'sampling_params' must be an object", "sampling_params")
        made = sum(call.session == session for call in episode.calls)
        params = self._limited(episode, session, made, len(prompt), asked.get("max_tokens"))
        started = time.monotonic()
        completion = await self._submit(prompt, replace(params, logprobs=True))
        waited = time.monotonic() - started
        reply = {"role": "assistant", "content": completion.text}
        with self.lock:
            episode.calls.append(AgentCall((), tuple(prompt), completion, reply, session))
            episode.model_s += waited
        logprobs = completion.logprobs or ()
        return JSONResponse(
            {
                "request_id": f"gen-{uuid.uuid4().hex}",
                "prompt_token_ids": prompt,
                "choices": [
                    {
                        "index": 0,
                        "token_ids": list(completion.token_ids),
                        "finish_reason": completion.finish_reason,
                        "logprobs": {
                            "content": [
                                {"token": f"token_id:{token}", "logprob": logprob}
                                for token, logprob in zip(
                                    completion.token_ids, logprobs, strict=True
                                )
                            ]
                        },
                    }
                ],
            }
        )

    async def _serve(self, request: Request) -> Response:
        body, episode = await self._episode_of(request)
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
            self._limited(episode, "", len(episode.calls), 0, None)  # raises
        tools = chat.tools.shown if chat.tools else ()
        if tools:
            self._tool_parser()  # a model that cannot take tools: 400 before generating
        prompt = encode_prompt(chat.messages, self.tokenizer, self.chat_template, tools)
        params = self._limited(
            episode,
            "",
            len(episode.calls),
            len(prompt),
            chat.params.max_new_tokens if chat.max_tokens_given else None,
        )
        stop = tuple(dict.fromkeys((*self.params.stop, *chat.params.stop)))
        return prompt, replace(params, stop=stop)

    def _limited(
        self, episode: EpisodeCalls, session: str, made: int, prompt_tokens: int, asked: Any
    ) -> SamplingParams:
        """The job's sampling for one more call of an episode (or a session of it) that has
        made `made` calls: its cap within the token budget and the request's max_tokens. A
        call past env.max_turns, or a prompt that fills the budget, is refused (400) and
        the limit marked."""
        if made >= self.max_turns:
            self._mark(episode, session, "max_turns")
            raise RequestError(
                f"this episode has made its {self.max_turns} calls (env.max_turns)",
                code="max_turns_exceeded",
            )
        room = self.max_tokens - prompt_tokens
        if room < 1:
            self._mark(episode, session, "length")
            raise RequestError(
                f"the prompt has {prompt_tokens} tokens: the episode's budget is "
                f"{self.max_tokens} (env.max_episode_tokens)",
                "messages",
                "context_length_exceeded",
            )
        cap = min(self.params.max_new_tokens, room)
        if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0:
            cap = min(cap, asked)
        return replace(self.params, n=1, max_new_tokens=cap)

    @staticmethod
    def _mark(episode: EpisodeCalls, session: str, limit: FinishReason) -> None:
        if session:
            episode.session_limits.setdefault(session, limit)
        else:
            episode.limit = episode.limit or limit

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
        wants_logprobs = any(p.params.logprobs for p in batch)
        params = replace(batch[0].params, seed=self._seed, logprobs=wants_logprobs)
        try:
            if self._engine_thread is None:
                self._engine_thread = ThreadPoolExecutor(1, thread_name_prefix="openrft-engine")
            results = await asyncio.get_running_loop().run_in_executor(
                self._engine_thread, self.generate, [p.prompt for p in batch], params
            )
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


def new_key() -> str:
    """An unguessable key for the proxy's clients."""
    return "openrft-" + secrets.token_hex(12)


def _metadata_rollout(body: Any) -> str:
    """An external agent may name its rollout in the request's metadata instead."""
    metadata = body.get("metadata") if isinstance(body, dict) else None
    rollout = metadata.get("rollout_id") if isinstance(metadata, dict) else None
    return rollout if isinstance(rollout, str) else ""


def _batch_key(params: SamplingParams) -> tuple[int, tuple[str, ...]]:
    return params.max_new_tokens, params.stop
