"""Worker processes that answer one JSON line per request: the parent half that tool workers
(openrft/rollout/tool_worker.py) and environment workers (openrft/rollout/env_worker.py)
share.

A worker is a fresh interpreter in a process group of its own. Its first line says whether it
loaded the user's code; then each request line gets one answer line. A request that outlives
its time limit, or a worker that dies, costs that worker: SIGKILL goes to its whole process
group (whatever it started too) and the caller's thread gets an answer at once, no thread is
left waiting on it. Workers die with this process: they are started from one long-lived
thread, and the child half (`die_with_parent` in tool_worker.py) asks Linux for SIGKILL when
it goes (PDEATHSIG, which fires even while user code holds the GIL in C) and exits when it
sees itself orphaned.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import signal
import subprocess
import threading
import time
from typing import Any

REAP_TIMEOUT_S = 5.0  # a SIGKILLed process is normally gone in milliseconds
SPAWNER = "openrft-worker-spawner"  # the thread that starts workers (kept: not a leak)


class WorkerProcess:
    """One child process speaking JSON lines on its stdin and stdout. Used by one thread at
    a time, except `signal_kill`, which any thread may call."""

    def __init__(self, command: list[str], stderr: Any = None, cwd: str | None = None):
        self.process = spawn(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=cwd,
            start_new_session=True,  # its own process group: a kill reaches its children
        )
        self.ready: dict[str, Any] | None = None  # its first line, once read
        self._buffer = bytearray()

    def await_ready(self, timeout_s: float) -> dict[str, Any]:
        """The worker's first line: `{"ok": true, ...}` once it loaded the user's code, else
        `{"ok": false, "kind": "load_error", "message": ...}` (the worker is then killed)."""
        if self.ready is None:
            try:
                answer = self._read_line(timeout_s)
                message = f"the worker did not start within {timeout_s:g} s"
            except EOFError:
                answer, message = None, f"while starting, {self.exit_reason()}"
            if answer is None:
                self.kill()
                answer = {"ok": False, "kind": "load_error", "message": message}
            self.ready = answer
        return self.ready

    def request(self, payload: dict[str, Any], timeout_s: float | None) -> dict[str, Any]:
        """The worker's answer to `payload`, or `{"ok": false, "kind": "timeout" | "crashed",
        "message": ...}`; a worker that overran `timeout_s` has been killed."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(payload).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:
            self.kill()
            return {"ok": False, "kind": "crashed", "message": self.exit_reason()}
        try:
            answer = self._read_line(timeout_s)
        except EOFError:
            self.kill()
            return {"ok": False, "kind": "crashed", "message": self.exit_reason()}
        if answer is not None:
            return answer
        self.kill()
        return {"ok": False, "kind": "timeout", "message": f"no answer in {timeout_s:g} s"}

    def _read_line(self, timeout_s: float | None) -> dict[str, Any] | None:
        """The next line as JSON, or None when `timeout_s` passed first; EOFError when the
        worker is gone (its pipe closed: it may not be reaped yet)."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                readable, _, _ = select.select([fd], [], [], left)
                if not readable:
                    return None
                chunk = os.read(fd, 1 << 16)
            except (OSError, ValueError) as error:  # closed under us
                raise EOFError from error
            if not chunk:
                raise EOFError
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return json.loads(line)

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal_kill(self) -> None:
        """SIGKILL to the worker's process group; safe from any thread. The thread waiting on
        the worker then reads end-of-file and cleans up."""
        if self.process.poll() is None:  # not reaped yet, so its pid cannot have been reused
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def kill(self) -> None:
        """signal_kill, then reap it and close its pipes (by the thread using it only)."""
        self.signal_kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(REAP_TIMEOUT_S)
        for pipe in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()

    def exit_reason(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(REAP_TIMEOUT_S)
        return describe_exit(self.process.returncode)


def describe_exit(returncode: int | None) -> str:
    """How a worker ended, in words: "killed by SIGSEGV", "exited with status 3"."""
    if returncode is None:
        return "the worker stopped answering"
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else ""
        hint = " (out of memory?)" if returncode == -signal.SIGKILL else ""
        return f"the worker process was killed by {name or -returncode}{hint}"
    return f"the worker process exited with status {returncode}"


# PDEATHSIG fires when the *thread* that started a child ends, not the process, and workers are
# started from short-lived threads (a runner's); so they are started from one daemon thread.
_spawner: tuple[int, queue.Queue[Any]] | None = None
_spawner_lock = threading.Lock()


def spawn(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(command, **kwargs)`, run on the main thread or the spawner thread
    (the tool, environment and grader worker pools all start their workers here)."""
    if threading.current_thread() is threading.main_thread():
        return subprocess.Popen(command, **kwargs)
    global _spawner
    with _spawner_lock:
        if _spawner is None or _spawner[0] != os.getpid():  # none yet, or lost in a fork
            requests: queue.Queue[Any] = queue.Queue()
            threading.Thread(
                target=_spawn_forever, args=(requests,), name=SPAWNER, daemon=True
            ).start()
            _spawner = (os.getpid(), requests)
        requests = _spawner[1]
    reply: queue.Queue[Any] = queue.Queue(1)
    requests.put((command, kwargs, reply))
    result = reply.get()
    if isinstance(result, BaseException):
        raise result
    return result


def _spawn_forever(requests: queue.Queue[Any]) -> None:
    while True:
        command, kwargs, reply = requests.get()
        try:
            reply.put(subprocess.Popen(command, **kwargs))
        except BaseException as exc:  # handed to the caller, who raises it
            reply.put(exc)
