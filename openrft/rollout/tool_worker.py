"""The child half of a tool worker: `python -I -B tool_worker.py TOOLS_FILE`.

Imports the user's tools file once, then answers one JSON request per line on stdin
(`{"name": ..., "arguments": {...}}`) with one JSON line on the protocol descriptor:
`{"ok": true, "content": "..."}` or `{"ok": false, "kind": ..., "message": ...}`. What the
tools print goes to stderr, so it cannot corrupt the protocol. Standard library only (a worker
starts in a few hundredths of a second); the parent (openrft.rollout.tools, through
openrft.rollout.workers) kills a worker whose call outlives its timeout and starts a fresh
one. The protocol helpers here (`protocol_stream`, `die_with_parent`, `serve`,
`error_location`) are the environment worker's too (openrft/rollout/env_worker.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

MESSAGE_LIMIT = 2000  # characters of an error message sent back
ORPHAN_CHECK_S = 0.5  # how often a worker looks for its parent (where PDEATHSIG is missing)


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
        message = f"{type(error).__name__}: {error}{error_location(error)}"
        return {"ok": False, "kind": "tool_error", "message": message[:MESSAGE_LIMIT]}


def error_location(error: BaseException) -> str:
    """Where an exception was raised, as " (line N of file.py)" (the innermost frame)."""
    frames = traceback.extract_tb(error.__traceback__)
    return f" (line {frames[-1].lineno} of {Path(frames[-1].filename).name})" if frames else ""


async def _awaited(awaitable):
    return await awaitable


def protocol_stream() -> TextIO:
    """The stream answers are written to: this process's stdout, which print() no longer
    reaches (user code's prints go to stderr, so they cannot corrupt the protocol)."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr
    return protocol


def die_with_parent(parent: int) -> None:
    """SIGKILL for this worker's process group when `parent` dies: PDEATHSIG on Linux (even
    while user code holds the GIL in C), and everywhere a thread that notices it orphaned."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_CHECK_S)
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGKILL)  # this worker and anything it started
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def send(protocol: TextIO, answer: dict) -> None:
    """One answer line; a value JSON cannot carry becomes an error answer."""
    try:
        line = json.dumps(answer)
    except (TypeError, ValueError) as error:
        message = f"the answer cannot be sent as JSON: {error}"
        line = json.dumps({"ok": False, "kind": "bad_answer", "message": message[:MESSAGE_LIMIT]})
    protocol.write(line + "\n")


def serve(protocol: TextIO, handle: Callable[[dict], dict]) -> None:
    """Answers each request line on stdin with `handle(request)` until stdin closes."""
    for line in sys.stdin:
        if line.strip():
            send(protocol, handle(json.loads(line)))


def main() -> None:
    protocol = protocol_stream()
    die_with_parent(os.getppid())
    try:
        module = load_module(sys.argv[1])
    except Exception as error:
        send(protocol, {"ok": False, "kind": "load_error", "message": repr(error)})
        return
    send(protocol, {"ok": True, "content": "ready"})
    serve(protocol, lambda request: call(module, request))


if __name__ == "__main__":
    main()
