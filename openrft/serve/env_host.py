"""`openrft env serve file.py:make_env`: a native environment (docs/agentic.md) hosted behind
the remote-environment contract (openrft/rollout/remote_env.py, docs/remote-environments.md),
so the same environment runs in a job's process or on another machine unchanged.

Each episode is one object from `make_env(item)`; its calls run one at a time (a lock per
episode), sync code on the thread pool, async code on the server's loop. A step names its
turn: a repeated turn (the client retrying after a lost answer) gets the kept answer instead
of a second step. Episodes unused for `idle_timeout_s` are closed and dropped, so a trainer
that dies mid-step leaks nothing. The environment's own failures answer 422 with the error
(the client fails that episode); a full host answers 503 (the client backs off and retries).
"""

from __future__ import annotations

import asyncio
import inspect
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from openrft.rollout.environment import EnvironmentFailure, check_step, load_environment_factory
from openrft.train.episodes import builtin_reference


@dataclass
class _Hosted:
    env: Any
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    next_turn: int = 0
    last_answer: dict[str, Any] | None = None  # the answer to turn next_turn - 1
    used: float = field(default_factory=time.monotonic)


def factory_reference(reference: str) -> str:
    """`builtin:NAME`, `file.py` or `module:function` -> what load_environment_factory takes
    (the function defaults to make_env)."""
    if reference.endswith(".py"):
        return reference + ":make_env"
    return builtin_reference(reference, "envs", "environment", "make_env")


async def _call(function: Callable[..., Any], *args: Any) -> Any:
    """Run user code: sync on the thread pool, awaiting what it returns if awaitable."""
    result = await run_in_threadpool(function, *args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _failed(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def make_app(reference: str, max_episodes: int = 256, idle_timeout_s: float = 3600.0) -> FastAPI:
    """The host app; raises ConfigError at once when the factory cannot be loaded."""
    factory = load_environment_factory(factory_reference(reference))
    app = FastAPI(title=f"openrft environment host: {reference}", docs_url=None, redoc_url=None)
    episodes: dict[str, _Hosted] = {}

    async def drop_idle() -> None:
        now = time.monotonic()
        for episode_id, hosted in list(episodes.items()):
            if now - hosted.used > idle_timeout_s and not hosted.lock.locked():
                del episodes[episode_id]
                await _close(hosted)

    async def health() -> dict[str, Any]:
        await drop_idle()
        return {
            "status": "ok",
            "environment": reference,
            "episodes": len(episodes),
            "max_episodes": max_episodes,
        }

    async def create(request: Request) -> Response:
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("item"), dict):
            return _failed(400, "the body must be a JSON object with an 'item' object (the row)")
        await drop_idle()
        if len(episodes) >= max_episodes:
            return JSONResponse(
                {"error": f"{max_episodes} episodes are open; retry later"},
                status_code=503,
                headers={"Retry-After": "1"},
            )
        try:
            env = await _call(factory, body["item"])
            if not callable(getattr(env, "step", None)):
                raise EnvironmentFailure(f"{reference} returned an object without step()")
            reset = getattr(env, "reset", None)
            messages = await _call(reset) if callable(reset) else None
        except Exception as error:
            return _failed(422, f"make_env/reset failed: {_describe(error)}")
        if messages is not None and not (
            isinstance(messages, list | tuple) and all(isinstance(m, dict) for m in messages)
        ):
            return _failed(422, "reset() must return a list of message dicts (or None)")
        episode_id = uuid.uuid4().hex
        episodes[episode_id] = _Hosted(env)
        return JSONResponse(
            {"episode_id": episode_id, "messages": None if messages is None else list(messages)}
        )

    async def step(episode_id: str, request: Request) -> Response:
        hosted = episodes.get(episode_id)
        if hosted is None:
            return _failed(404, f"no episode {episode_id!r} (closed, or idle too long)")
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
            return _failed(400, "the body must be a JSON object with a 'message' object")
        turn = body.get("turn")
        async with hosted.lock:
            hosted.used = time.monotonic()
            if turn is not None and turn == hosted.next_turn - 1 and hosted.last_answer:
                return JSONResponse(hosted.last_answer)  # a retried step: the same answer
            if turn is not None and turn != hosted.next_turn:
                return _failed(409, f"expected turn {hosted.next_turn}, got {turn}")
            try:
                result = check_step(await _call(hosted.env.step, body["message"]), "step()")
            except Exception as error:
                return _failed(422, _describe(error))
            answer = {
                "messages": list(result.messages),
                "reward": result.reward,
                "done": result.done,
                "metrics": dict(result.metrics),
            }
            hosted.next_turn += 1
            hosted.last_answer = answer
            hosted.used = time.monotonic()
        return JSONResponse(answer)

    async def close(episode_id: str) -> Response:
        hosted = episodes.pop(episode_id, None)
        if hosted is None:
            return _failed(404, f"no episode {episode_id!r}")
        async with hosted.lock:
            await _close(hosted)
        return Response(status_code=204)

    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/episodes", create, methods=["POST"])
    app.add_api_route("/episodes/{episode_id}/step", step, methods=["POST"])
    app.add_api_route("/episodes/{episode_id}", close, methods=["DELETE"])
    app.state.episodes = episodes
    app.state.factory = factory
    return app


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


async def _close(hosted: _Hosted) -> None:
    close = getattr(hosted.env, "close", None)
    if callable(close):
        try:
            await _call(close)
        except Exception:  # the episode is over either way
            traceback.print_exc()


def _describe(error: BaseException) -> str:
    if isinstance(error, EnvironmentFailure):
        return str(error)
    return f"{type(error).__name__}: {error}"


def serve(
    reference: str,
    host: str = "127.0.0.1",
    port: int = 8100,
    max_episodes: int = 256,
    idle_timeout_s: float = 3600.0,
) -> None:
    """Serve until interrupted; prints the URL to put in `env.environment`."""
    import uvicorn

    from openrft.net import listen_socket, url_of

    app = make_app(reference, max_episodes, idle_timeout_s)
    sock = listen_socket(host, port)
    print(
        f"Serving environment {reference} at {url_of(sock)} (up to {max_episodes} episodes)\n"
        f'  set env.environment = "{url_of(sock).rstrip("/")}" in the job. Ctrl-C stops.',
        flush=True,
    )
    uvicorn.Server(uvicorn.Config(app, log_level="info", lifespan="off")).run(sockets=[sock])
