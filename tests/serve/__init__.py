"""Serve tests, and two helpers for any test that needs a real HTTP server on 127.0.0.1:

- `running_server(app)`: serves an ASGI app with uvicorn on a free port in a background thread;
- `ScriptedChat`: an OpenAI-compatible chat endpoint that answers as a test scripts it
  (replies, status codes, bodies, delays) and records what it was sent.

Other test packages import them as `from serve import running_server, ScriptedChat`.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serves `app` for the duration of the block; yields its base URL, "http://127.0.0.1:PORT"."""
    with socket.socket() as probe:  # a free port; the tiny race with another process is benign
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)


@dataclass
class Reply:
    """A scripted answer: a chat completion whose text is `text`, or a raw status and body."""

    text: str | None = "Score: 5"
    status: int = 200
    body: bytes | None = None  # sent as it is, instead of a completion
    delay_s: float = 0.0  # wait this long before answering
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # merged into choices[0]


@dataclass
class ScriptedChat:
    """`respond(body, request_number)` decides each answer (a Reply, or a str for its text);
    every request's body and headers are recorded, and the most requests ever in flight."""

    respond: Callable[[dict[str, Any], int], Reply | str] = lambda body, number: "Score: 5"
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def reset(self) -> None:
        """Forgets past requests, once those still running (a hung one) have finished."""
        deadline = time.monotonic() + 5
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        self.bodies.clear()
        self.headers.clear()
        self.max_in_flight = 0

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            self.bodies.append(body)
            self.headers.append(dict(request.headers))
            reply = self.respond(body, len(self.bodies) - 1)
            reply = Reply(reply) if isinstance(reply, str) else reply
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            await asyncio.sleep(reply.delay_s)
            self.in_flight -= 1
            if reply.body is not None or reply.status != 200:
                content = reply.body if reply.body is not None else b'{"error": "scripted"}'
                return Response(content, reply.status, reply.headers, "application/json")
            return JSONResponse(completion(reply.text, reply.extra))

        return app


def completion(text: str | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A chat completion body with one choice and a usage of 100 prompt + 10 completion tokens."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": "stop",
    }
    usage = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
    choices = [{**choice, **(extra or {})}]
    return {"id": "chatcmpl-1", "object": "chat.completion", "choices": choices, "usage": usage}
