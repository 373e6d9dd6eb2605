"""Tools an episode's model can call: Python functions in a user's file, or HTTP endpoints.

`env.tools = "tools.py"` names a file whose public module-level functions are tools (sync or
async); each function's OpenAI schema comes from its type hints and docstring unless the
dataset row brings its own `tools`. `env.tool_endpoints = {name = "https://..."}` makes a
tool an HTTP endpoint (OpenAI agent RFT's `server_url`): openrft POSTs
`{"name", "arguments"}` and retries 5xx answers.

Function tools run in worker processes (openrft/rollout/tool_worker.py, one call at a time
each, at most `env.max_concurrent`): a call that outlives `env.tool_timeout_s` is stopped by
killing its worker (a fresh one takes its place), a tool that crashes the interpreter costs
one worker, and nothing a tool does reaches the trainer's process. Every failure becomes a
`ToolResult` with an error kind and the message the model reads, never an exception.
"""

from __future__ import annotations

import inspect
import json
import queue
import subprocess
import sys
import threading
import time
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema

from openrft.errors import ConfigError
from openrft.net import EndpointFailure, request_with_retries
from openrft.rollout.tool_calls import MalformedCall, ToolCall
from openrft.rollout.workers import WorkerProcess
from openrft.user_code import UserFileError, import_file

WORKER_SCRIPT = Path(__file__).with_name("tool_worker.py")  # run by path: stdlib imports only
WORKER_START_S = 120.0  # a worker's import of the tools file
HTTP_ATTEMPTS = 3  # tries of an endpoint that answers 5xx (OpenAI agent RFT retries 3 times)
HTTP_BACKOFF_S = 0.5  # wait before the second try, doubled before each later one
ToolErrorKind = typing.Literal[
    "parse_error",  # the call could not be read (broken JSON, no name)
    "unknown_tool",  # no tool of that name
    "bad_arguments",  # the arguments do not fit the tool's schema or signature
    "tool_error",  # the tool raised
    "timeout",  # the tool did not answer within env.tool_timeout_s (it was stopped)
    "server_error",  # an endpoint answered 5xx after every retry, or could not be reached
    "crashed",  # the worker running the tool died
]
TOOL_ERROR_KINDS: tuple[str, ...] = ToolErrorKind.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ToolResult:
    content: str  # what the tool message says (the error, for a failed call)
    error: ToolErrorKind | None = None
    latency_s: float = 0.0


def error_result(kind: ToolErrorKind, message: str, latency_s: float = 0.0) -> ToolResult:
    return ToolResult(f"Error ({kind}): {message}", kind, latency_s)


# -- schemas ---------------------------------------------------------------------------------

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object"}


def _type_schema(hint: Any) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(hint))}
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple):
        args = typing.get_args(hint)
        return {"type": "array", **({"items": _type_schema(args[0])} if args else {})}
    if origin in (dict, Mapping) or hint is dict:
        return {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        options = [_type_schema(a) for a in typing.get_args(hint) if a is not type(None)]
        return options[0] if len(options) == 1 else {"anyOf": options}
    return {}  # any JSON value


def _docstring_parts(doc: str) -> tuple[str, dict[str, str]]:
    """The description (text before an Args:/Parameters: section) and each argument's
    description from Google-style `name: text` or `name (type): text` lines."""
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    description, arguments, current, in_args = [], {}, None, False
    for line in lines:
        stripped = line.strip()
        if stripped.lower() in ("args:", "arguments:", "parameters:"):
            in_args = True
            continue
        if in_args and stripped.lower() in ("returns:", "raises:", "examples:", "example:"):
            break
        if not in_args:
            description.append(stripped)
        elif ":" in stripped and not line.startswith(" " * 8):
            name, text = stripped.split(":", 1)
            current = name.split("(")[0].strip()
            arguments[current] = text.strip()
        elif current and stripped:
            arguments[current] += " " + stripped
    return " ".join(" ".join(description).split()), arguments


def function_schema(function: Callable[..., Any]) -> dict[str, Any]:
    """An OpenAI tool schema from a function's name, type hints and docstring."""
    hints = typing.get_type_hints(function)
    description, described = _docstring_parts(function.__doc__ or "")
    properties: dict[str, Any] = {}
    required = []
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        schema = _type_schema(hints.get(name, Any))
        if name in described:
            schema["description"] = described[name]
        properties[name] = schema
        if parameter.default is parameter.empty:
            required.append(name)
    return {
        "type": "function",
        "function": {
            "name": function.__name__,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


def import_user_file(path: str | Path, field: str) -> types.ModuleType:
    """A user's Python file as a module (openrft.user_code); a ConfigError naming `field`
    when it is missing or fails."""
    try:
        return import_file(path, "_openrft_user")
    except UserFileError as exc:
        cause = f": {exc.cause!r}" if exc.cause is not None else ""
        raise ConfigError(field, f"{exc.problem}{cause}") from exc.cause


def load_tool_functions(path: str | Path) -> dict[str, Callable[..., Any]]:
    """The public functions a tools file defines (not those it imports), by name."""
    module = import_user_file(path, "env.tools")
    functions = {
        name: value
        for name, value in vars(module).items()
        if inspect.isfunction(value)
        and not name.startswith("_")
        and value.__module__ == module.__name__
    }
    if not functions:
        raise ConfigError("env.tools", f"{path} defines no public functions to use as tools")
    return functions


# -- calling ---------------------------------------------------------------------------------


def _start_worker(tools_file: Path) -> WorkerProcess:
    """A worker for the tools file; its first line says whether the file loaded."""
    command = [sys.executable, "-I", "-B", str(WORKER_SCRIPT), str(tools_file)]
    return WorkerProcess(command, stderr=subprocess.DEVNULL)


class ToolBox:
    """The tools of a job: schemas for the prompt, and `call` (thread-safe, blocking)."""

    def __init__(
        self,
        tools_file: str | Path | None = None,
        endpoints: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
        max_workers: int = 8,
        headers: Mapping[str, str] | None = None,
    ):
        self.tools_file = Path(tools_file) if tools_file else None
        functions = load_tool_functions(self.tools_file) if self.tools_file else {}
        self.schemas: dict[str, dict[str, Any]] = {
            name: function_schema(fn) for name, fn in functions.items()
        }
        self.endpoints = dict(endpoints or {})
        for name in self.endpoints:
            self.schemas.setdefault(name, _endpoint_schema(name))
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self._idle: queue.Queue[WorkerProcess] = queue.Queue()
        self._slots = threading.BoundedSemaphore(max_workers)
        self._workers: list[WorkerProcess] = []
        self._lock = threading.Lock()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.schemas)

    def call(self, call: ToolCall | MalformedCall, schemas: Mapping[str, dict] | None = None):
        """Run one call; `schemas` (the row's own, by name) override the file's for checking
        arguments. Returns a ToolResult; never raises for what the model or the tool did."""
        started = time.monotonic()
        if isinstance(call, MalformedCall):
            return error_result("parse_error", call.problem)
        known = {**self.schemas, **(schemas or {})}
        if call.name not in known or (
            call.name not in self.endpoints and call.name not in self.schemas
        ):
            available = ", ".join(sorted(known)) or "none"
            return error_result(
                "unknown_tool", f"no tool named {call.name!r}; available: {available}"
            )
        parameters = known[call.name].get("function", {}).get("parameters")
        if parameters:
            try:
                jsonschema.validate(call.arguments, parameters)
            except jsonschema.ValidationError as error:
                return error_result("bad_arguments", error.message)
        if call.name in self.endpoints:
            result = self._call_endpoint(self.endpoints[call.name], call)
        else:
            result = self._call_function(call)
        return ToolResult(result.content, result.error, time.monotonic() - started)

    def _call_function(self, call: ToolCall) -> ToolResult:
        assert self.tools_file is not None
        with self._slots:
            worker = self._take_worker()
            ready = worker.await_ready(WORKER_START_S)
            if not ready.get("ok"):
                worker.kill()
                with self._lock:
                    self._workers.remove(worker)
                return error_result("crashed", ready.get("message", "the worker did not start"))
            payload = {"name": call.name, "arguments": call.arguments}
            answer = worker.request(payload, self.timeout_s)
            if worker.alive():
                self._idle.put(worker)
            else:
                with self._lock:
                    self._workers.remove(worker)
        if answer.get("kind") == "crashed":
            return error_result("crashed", f"the tool's process died: {answer['message']}")
        if answer.get("ok"):
            return ToolResult(answer["content"])
        return error_result(answer.get("kind", "tool_error"), answer.get("message", ""))

    def _take_worker(self) -> WorkerProcess:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            assert self.tools_file is not None
            worker = _start_worker(self.tools_file)
            with self._lock:
                self._workers.append(worker)
            return worker

    def _call_endpoint(self, url: str, call: ToolCall) -> ToolResult:
        payload = {"name": call.name, "arguments": call.arguments}
        try:
            response = request_with_retries(
                "POST",
                url,
                json=payload,
                headers=self.headers,
                timeout_s=self.timeout_s,
                attempts=HTTP_ATTEMPTS,
                backoff_s=HTTP_BACKOFF_S,
            )
        except EndpointFailure as failure:
            kind = {"timeout": "timeout", "client_error": "tool_error"}.get(failure.kind)
            return error_result(kind or "server_error", str(failure))
        return ToolResult(_endpoint_content(response))

    def close(self) -> None:
        with self._lock:
            for worker in self._workers:
                worker.kill()
            self._workers.clear()


def _endpoint_schema(name: str) -> dict[str, Any]:
    """An endpoint tool without a schema in the file or the row: any JSON object."""
    return {
        "type": "function",
        "function": {"name": name, "description": "", "parameters": {"type": "object"}},
    }


def _endpoint_content(response: httpx.Response) -> str:
    """An endpoint's answer as the tool message: its "content"/"output"/"result" field, or
    the JSON body, or the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    if isinstance(body, dict):
        for key in ("content", "output", "result"):
            if key in body:
                value = body[key]
                return value if isinstance(value, str) else json.dumps(value)
    return json.dumps(body)
