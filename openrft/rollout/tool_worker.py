"""The child half of a tool worker: `python -I -B tool_worker.py TOOLS_FILE`.

Imports the user's tools file once, then answers one JSON request per line on stdin
(`{"name": ..., "arguments": {...}}`) with one JSON line on the protocol descriptor:
`{"ok": true, "content": "..."}` or `{"ok": false, "kind": ..., "message": ...}`. What the
tools print goes to stderr, so it cannot corrupt the protocol. Standard library only (a worker
starts in a few hundredths of a second); the parent (openrft.rollout.tools) kills a worker
whose call outlives its timeout and starts a fresh one.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import os
import sys
import traceback
from pathlib import Path

MESSAGE_LIMIT = 2000  # characters of an error message sent back


def load_module(path: str):
    file = Path(path).resolve()
    sys.path.insert(0, str(file.parent))  # the tools file may import its neighbours
    spec = importlib.util.spec_from_file_location(f"openrft_tools_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def as_text(value) -> str:
    """A tool's return value as the tool message's content: text as is, else JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


def call(module, request: dict) -> dict:
    function = getattr(module, request["name"], None)
    if not callable(function):
        return {"ok": False, "kind": "unknown_tool", "message": f"no tool {request['name']!r}"}
    arguments = request["arguments"]
    try:
        inspect.signature(function).bind(**arguments)
    except TypeError as error:
        return {"ok": False, "kind": "bad_arguments", "message": str(error)}
    try:
        result = function(**arguments)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
        return {"ok": True, "content": as_text(result)}
    except Exception as error:  # the tool's own failure: reported to the model, not fatal
        last = traceback.extract_tb(error.__traceback__)[-1]
        where = f" (line {last.lineno} of {Path(last.filename).name})"
        message = f"{type(error).__name__}: {error}{where}"
        return {"ok": False, "kind": "tool_error", "message": message[:MESSAGE_LIMIT]}


async def _awaited(awaitable):
    return await awaitable


def main() -> None:
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # a tool's print() must not reach the protocol
    try:
        module = load_module(sys.argv[1])
    except Exception as error:
        protocol.write(json.dumps({"ok": False, "kind": "load_error", "message": repr(error)}))
        protocol.write("\n")
        return
    protocol.write(json.dumps({"ok": True, "content": "ready"}) + "\n")
    for line in sys.stdin:
        if line.strip():
            protocol.write(json.dumps(call(module, json.loads(line))) + "\n")


if __name__ == "__main__":
    main()
