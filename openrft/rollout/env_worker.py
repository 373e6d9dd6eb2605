"""The child half of an environment worker (started by openrft.rollout.environment's
`EnvironmentWorkers` as `python -c BOOT CONFIG`, with the trainer's `sys.path` and working
directory).

Imports the user's environment file (or module) once, as the trainer would, and answers its
first line: `{"ok": true}`, or `{"ok": false, "kind": "load_error", "message": ...}`. Then it
hosts one episode's environment at a time, one JSON request per line on stdin:

    {"op": "make", "item": {...}}     make_env(item)  -> {"ok": true}
    {"op": "reset"}                   env.reset()     -> {"ok": true, "value": [...] | null}
    {"op": "step", "message": {...}}  env.step(msg)   -> {"ok": true, "value": {...}}
    {"op": "close"}                   env.close()     -> {"ok": true}

An exception is `{"ok": false, "kind": "env_error", "message": "step() raised ValueError('x')
(line 12 of my_env.py)"}`. Async methods run on this worker's own event loop, kept for the
worker's life (so an environment's loop-bound objects survive from reset to step). What the
environment prints goes to stderr. The protocol helpers are the tool worker's.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from typing import Any

from openrft.rollout.tool_worker import (
    MESSAGE_LIMIT,
    die_with_parent,
    error_location,
    protocol_stream,
    send,
    serve,
)
from openrft.user_code import UserFileError, import_file

# The worker's first lines: sys.path as the trainer has it, then main(). Its config (a JSON
# argument) is taken off sys.argv before any user code runs.
BOOT = (
    "import json, sys; config = json.loads(sys.argv.pop(1)); sys.path[:] = config['path']; "
    "from openrft.rollout.env_worker import main; main(config)"
)


def load_factory(reference: str) -> Any:
    """`file.py:function` or `module:function` -> the function, imported here."""
    path, _, name = reference.rpartition(":")
    if path.endswith(".py"):
        try:
            module = import_file(path, "_openrft_user")
        except UserFileError as error:
            cause = f": {error.cause!r}" if error.cause is not None else ""
            raise ImportError(f"{error.problem}{cause}") from error
    else:
        module = importlib.import_module(path)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ImportError(f"{path} has no function {name!r}")
    return factory


class Host:
    """The environment of the episode this worker serves now."""

    def __init__(self, factory: Any, where: str):
        self.factory, self.where = factory, where
        self.env: Any = None
        self.loop = asyncio.new_event_loop()

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        what = {"make": "make_env", "reset": "reset()", "step": "step()"}.get(op, f"{op}()")
        try:
            return {"ok": True, "value": self.run(op, request)}
        except Exception as error:  # the environment's own failure: the episode's, not ours
            message = f"{what} raised {error!r}{error_location(error)}"
            return {"ok": False, "kind": "env_error", "message": message[:MESSAGE_LIMIT]}

    def run(self, op: str | None, request: dict[str, Any]) -> Any:
        if op == "make":
            self.env = None
            env = self.factory(request["item"])
            if not callable(getattr(env, "step", None)):
                raise TypeError(f"{self.where} returned an object without step()")
            self.env = env
            return None
        if op == "close":
            env, self.env = self.env, None
            close = getattr(env, "close", None)
            return self.wait(close()) if callable(close) else None
        if self.env is None:
            raise RuntimeError(f"{op} before make_env")
        if op == "reset":
            reset = getattr(self.env, "reset", None)
            return self.wait(reset()) if callable(reset) else None
        if op == "step":
            return self.wait(self.env.step(request["message"]))
        raise ValueError(f"unknown request {op!r}")

    def wait(self, value: Any) -> Any:
        return (
            self.loop.run_until_complete(_awaited(value)) if inspect.isawaitable(value) else value
        )


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def main(config: dict[str, Any]) -> None:
    protocol = protocol_stream()
    die_with_parent(config["parent"])
    try:
        factory = load_factory(config["reference"])
    except Exception as error:
        send(protocol, {"ok": False, "kind": "load_error", "message": repr(error)})
        return
    send(protocol, {"ok": True})
    serve(protocol, Host(factory, config["where"]).handle)
