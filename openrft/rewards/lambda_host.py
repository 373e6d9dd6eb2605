"""Hosts a reward handler file as an HTTP endpoint that speaks Bedrock's reward-Lambda contract,
so code written for Bedrock runs unchanged against the `lambda` grader (see docs/lambda.md).

Owns loading the handler (`lambda_handler(event, context)`, OpenAI-style `grade(sample, item)`
or openrft-style `reward(response, item)`), the contract wrapping of the latter two, the
Lambda-like error responses, the FastAPI app (`POST /`, `POST /invoke`, `GET /health`) and
running it with uvicorn, blocking (`serve`) or in a background thread (`background`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from openrft.errors import GraderError
from openrft.net import listen_socket, url_of
from openrft.rewards.grader import to_grade
from openrft.rewards.python_function import _load_file, describe_exception, load_function
from openrft.rewards.templating import openai_sample
from openrft.types import Message, Sample

HandlerStyle = Literal["lambda", "grade", "reward"]
# Looked up in this order when the reference names only a file.
HANDLER_NAMES: tuple[tuple[str, HandlerStyle], ...] = (
    ("lambda_handler", "lambda"),
    ("grade", "grade"),
    ("reward", "reward"),
)
MAX_LAMBDA_TIMEOUT_S = 900.0  # what get_remaining_time_in_millis counts down from by default


@dataclass(frozen=True)
class Handler:
    """A loaded handler and the calling convention it follows."""

    fn: Callable[..., object]
    style: HandlerStyle
    reference: str  # "path/file.py:function"


@dataclass
class LambdaContext:
    """The parts of AWS Lambda's context object that reward handlers use."""

    function_name: str
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timeout_s: float = MAX_LAMBDA_TIMEOUT_S
    function_version: str = "$LATEST"
    invoked_function_arn: str = ""
    memory_limit_in_mb: int = 10240  # Lambda's maximum; nothing enforces it here
    log_group_name: str = ""
    log_stream_name: str = ""
    identity: Any = None
    client_context: Any = None
    _start: float = field(default_factory=time.monotonic, repr=False)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._start + self.timeout_s - time.monotonic()) * 1000))


class BadRequest(ValueError):
    """The request body does not follow the contract (answered with HTTP 400)."""


def load_handler(file_reference: str) -> Handler:
    """`path/file.py` (finds lambda_handler, grade or reward) or `path/file.py:function`."""
    reference = file_reference.strip()
    if reference.endswith(".py") or ":" not in reference:
        module = _load_file(Path(reference), reference)
        for name, style in HANDLER_NAMES:
            fn = getattr(module, name, None)
            if callable(fn):
                return Handler(fn, style, f"{reference}:{name}")
        names = ", ".join(f"{name}()" for name, _ in HANDLER_NAMES)
        raise GraderError(f"{reference} defines none of {names}; or name one as {reference}:fn")
    fn = load_function(reference)
    return Handler(fn, _style_of(fn), reference)


def _style_of(fn: Callable[..., object]) -> HandlerStyle:
    """A named function's convention, from its parameter names (then its own name)."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # some builtins and C callables have no signature
        params = []
    if params[:1] == ["event"] or params[1:2] == ["context"]:
        return "lambda"
    if params[:1] == ["sample"]:
        return "grade"
    return dict(HANDLER_NAMES).get(getattr(fn, "__name__", ""), "reward")


def make_app(file_reference: str, timeout_s: float = MAX_LAMBDA_TIMEOUT_S) -> FastAPI:
    """The endpoint app; raises GraderError at once when the handler cannot be loaded."""
    handler = load_handler(file_reference)
    app = FastAPI(
        title=f"openrft reward Lambda host: {handler.reference}",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.handler = handler

    def health() -> dict[str, str]:
        return {"status": "ok", "handler": handler.reference, "style": handler.style}

    async def invoke(request: Request) -> Response:
        try:
            event = json.loads(await request.body())
        except ValueError as exc:
            return _error_response(400, "Runtime.UnmarshalError", f"body is not JSON: {exc}")
        # Handlers are blocking user code: run them off the event loop, like Lambda's runtime.
        return await run_in_threadpool(invoke_handler, handler, event, timeout_s)

    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/", invoke, methods=["POST"])
    app.add_api_route("/invoke", invoke, methods=["POST"])
    return app


def invoke_handler(
    handler: Handler, event: Any, timeout_s: float = MAX_LAMBDA_TIMEOUT_S
) -> Response:
    """One invocation; a raising lambda_handler gives HTTP 500 with Lambda's error object."""
    try:
        if handler.style == "lambda":
            context = LambdaContext(_function_name(handler), timeout_s=timeout_s)
            result = _resolve(handler.fn(event, context))
        else:
            result = grade_event(handler, event)
    except BadRequest as exc:
        return _error_response(400, "InvalidRequest", str(exc))
    except (Exception, SystemExit) as exc:  # the handler's bug is the caller's answer
        traceback.print_exc()
        return _error_response(500, type(exc).__name__, str(exc), exc)
    try:
        # Python's default allow_nan: a NaN score reaches the grader, which names it.
        body = json.dumps(result)
    except (TypeError, ValueError) as exc:
        return _error_response(500, "Runtime.MarshalError", f"Unable to marshal response: {exc}")
    return Response(body, media_type="application/json")


def grade_event(handler: Handler, event: Any) -> list[dict[str, Any]]:
    """Runs a grade()/reward() function over a contract request; one result per item.

    A per-item failure (the function raises or returns a non-number) does not fail the
    batch: the item's result carries `"error": {"kind", "message"}` and a null score, which
    the `lambda` grader reports as that sample's typed error.
    """
    if not isinstance(event, list):
        raise BadRequest(f"expected a JSON list of samples, got {type(event).__name__}")
    results = []
    for index, raw in enumerate(event):
        sample = sample_from_item(raw, f"item {index}")
        results.append(_grade_one(handler, sample, raw["id"]))
    return results


def _grade_one(handler: Handler, sample: Sample, item_id: Any) -> dict[str, Any]:
    name = handler.reference.rpartition(":")[2]
    start = time.perf_counter()
    try:
        if handler.style == "grade":
            value = _resolve(handler.fn(openai_sample(sample), sample.item()))
        else:
            value = _resolve(handler.fn(sample.response, sample.item()))
    except (Exception, SystemExit) as exc:  # sys.exit() in a thread would drop the request
        error = {"kind": "runtime_error", "message": describe_exception(exc)}
        return {"id": item_id, "aggregate_reward_score": None, "metrics_list": [], "error": error}
    grade = to_grade(value, name, time.perf_counter() - start)
    if grade.error is not None:
        error = {"kind": grade.error.kind, "message": grade.error.message}
        return {"id": item_id, "aggregate_reward_score": None, "metrics_list": [], "error": error}
    return {
        "id": item_id,
        "aggregate_reward_score": grade.score,
        "metrics_list": _metrics_list(value, grade.components),
    }


def _metrics_list(value: object, components: Mapping[str, float]) -> list[dict[str, Any]]:
    """A dict return's entries: all "Reward" when they sum to the score; with a "score" key
    the other entries are logged-only "Metric"s (the score itself is the aggregate)."""
    if not isinstance(value, Mapping):
        return []
    if "score" not in components:
        return [{"name": k, "value": v, "type": "Reward"} for k, v in components.items()]
    return [
        {"name": k, "value": v, "type": "Metric"} for k, v in components.items() if k != "score"
    ]


def sample_from_item(raw: Any, where: str = "item") -> Sample:
    """A contract request entry as a Sample; accepts reference_answer in metadata or on top."""
    if not isinstance(raw, dict) or "id" not in raw:
        raise BadRequest(f"{where}: expected an object with an 'id'")
    messages = raw.get("messages")
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
    ):
        raise BadRequest(f"{where}: 'messages' must be a list of {{role, content}} objects")
    if not messages or messages[-1].get("role") != "assistant":
        raise BadRequest(f"{where}: the last message must be the assistant's answer")
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise BadRequest(f"{where}: 'metadata' must be an object")
    reference = (
        raw["reference_answer"] if "reference_answer" in raw else metadata.get("reference_answer")
    )
    turns: tuple[Message, ...] = tuple(
        {"role": str(m.get("role", "")), "content": m["content"]} for m in messages
    )
    return Sample(
        id=str(raw["id"]),
        messages=turns,
        reference_answer=reference,
        metadata={k: v for k, v in metadata.items() if k != "reference_answer"},
        example_id=str(raw["id"]),
    )


def _resolve(result: object) -> object:
    if inspect.isawaitable(result):  # an async handler: this is a worker thread, no loop runs
        return asyncio.run(_wait(result))
    return result


async def _wait(awaitable: Any) -> object:
    return await awaitable


def _function_name(handler: Handler) -> str:
    return Path(handler.reference.rpartition(":")[0]).stem or "reward"


def _error_response(
    status: int, error_type: str, message: str, exc: BaseException | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"errorMessage": message, "errorType": error_type}
    if exc is not None:
        body["stackTrace"] = traceback.format_tb(exc.__traceback__)
    return JSONResponse(body, status_code=status)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 picks a free one); GraderError when the port is taken."""
    try:
        return listen_socket(host, port)
    except OSError as exc:
        raise GraderError(f"cannot listen on {host}:{port}: {exc}") from exc


def serve(
    file_reference: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    timeout_s: float = MAX_LAMBDA_TIMEOUT_S,
) -> None:
    """Serves the handler until interrupted (Ctrl-C); prints the URL to point a grader at."""
    app = make_app(file_reference, timeout_s)
    sock = bind(host, port)
    handler: Handler = app.state.handler
    print(
        f"Serving {handler.reference} ({handler.style} handler) at {url_of(sock)}\n"
        f"  POST / or /invoke: a JSON list of samples; GET /health. Ctrl-C stops.",
        flush=True,
    )
    config = uvicorn.Config(app, log_level="info", lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
