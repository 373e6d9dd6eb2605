"""Persistent worker processes that run trusted user code where a timeout can stop it.

A `WorkerPool` starts each worker as a fresh interpreter (`python -c ...`, never a fork of
this process: the trainer holds torch and CUDA threads), with this process's `sys.path` and
working directory. A worker imports its code once, through a setup function named by a
`"module:function"` target, then serves lists of requests over a socket, one reply per
request. A request that overruns its timeout, or a worker that dies (a segfault, `os._exit`,
the OOM killer), costs that request alone: the worker's process group gets SIGKILL, a new
worker starts at once, and the requests after it go to the new worker.

Workers die with this process: PDEATHSIG (Linux) kills them when it dies, even while user
code holds the GIL in C, and a watchdog thread in each worker exits when a pipe from this
process reaches end-of-file (every platform). `close()` and the garbage collector kill them
otherwise. Python cannot stop a thread; this is why graders run their user code here.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal

from openrft.rewards.grader import clip_message
from openrft.rollout.workers import describe_exit, spawn

SETUP_TIMEOUT_S = 300.0  # a worker's import of the user's code; a hang there is a setup error
REAP_TIMEOUT_S = 5.0  # a SIGKILLed process is normally gone in milliseconds
# The worker's first lines: sys.path as this process has it, then the worker loop. Its
# config (a JSON argument) is removed from sys.argv before any user code runs.
_BOOT = (
    "import json, sys; config = json.loads(sys.argv.pop(1)); sys.path[:] = config['path']; "
    "from openrft.rewards.worker_pool import serve; serve(config)"
)

Status = Literal["ok", "error", "timeout", "crashed", "cancelled"]
Handler = Callable[[Any], Any]


class WorkerSetupError(Exception):
    """A worker could not import or set up its code; the message says why."""


@dataclass(frozen=True)
class Outcome:
    """What became of one request: "ok" (value is the reply), "error" (the handler raised or
    its reply could not be sent; value is the message), "timeout", "crashed" (value says how
    the worker died) or "cancelled" (`interrupt()` came first). elapsed_s is this request's
    share of the wall clock."""

    status: Status
    value: Any = None
    elapsed_s: float = 0.0


class _Worker:
    """One worker process: its Popen, the socket to it, and the pipe whose EOF it watches."""

    def __init__(self, process: subprocess.Popen[bytes], conn: Connection, alive_fd: int):
        self.process, self.conn, self.alive_fd = process, conn, alive_fd
        self.info: Any = None
        self.ready = False  # its setup reply ("ready", info) has been read

    def await_ready(self, timeout_s: float) -> None:
        """Reads the setup reply; raises WorkerSetupError if setup failed or hung."""
        if self.ready:
            return
        try:
            if not self.conn.poll(timeout_s):
                raise WorkerSetupError(f"worker setup took longer than {timeout_s:g} s")
            kind, value = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise WorkerSetupError(f"worker died during setup: {self.exit_reason()}") from exc
        if kind != "ready":
            raise WorkerSetupError(str(value))
        self.info, self.ready = value, True

    def signal_kill(self) -> None:
        """SIGKILL to the worker's process group (its own subprocesses too). Safe from any
        thread: the thread waiting on the worker then sees end-of-file and cleans up."""
        if self.process.poll() is None:  # not reaped yet, so its pid cannot have been reused
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def kill(self) -> None:
        """signal_kill, then reaps it and closes its socket: only by the thread using it (or
        when none is), as closing a socket another thread waits on is unsafe."""
        self.signal_kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(REAP_TIMEOUT_S)
        self.conn.close()
        with contextlib.suppress(OSError):
            os.close(self.alive_fd)
        self.alive_fd = -1

    def exit_reason(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(REAP_TIMEOUT_S)
        return describe_exit(self.process.returncode)


class WorkerPool:
    """Up to `size` workers for one kind of code; thread-safe. `target` names the setup
    function, `"module:function"`, called in each worker as `function(*args)` and returning
    `(handler, info)`: `handler(request)` answers one request, `info` goes to `start()`."""

    def __init__(self, target: str, args: Sequence[str] = (), size: int = 1, name: str = "worker"):
        if size < 1:
            raise ValueError(f"a worker pool needs at least one worker, got {size}")
        self.target, self.args, self.size, self.name = target, list(args), size, name
        self.cwd = os.getcwd()  # restarts import the code from where the pool was made
        self.path = list(sys.path)
        self.generation = 0  # bumped by interrupt(); calls made under an older one stop
        self._lock = threading.Condition()
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._workers: set[_Worker] = set()  # idle, busy and starting; what close() kills
        self._closed = False
        self._finalizer = weakref.finalize(self, _kill_all, self._workers, self._busy, os.getpid())

    def start(self) -> Any:
        """Starts the workers and waits for the first; returns its setup info. Raises
        WorkerSetupError when the code cannot be set up in a worker."""
        with self._lock:
            while len(self._workers) < self.size:
                self._idle.append(self._spawn())
            first = self._idle[0]
        try:
            first.await_ready(SETUP_TIMEOUT_S)
        except WorkerSetupError:
            self.close()
            raise
        return first.info

    def map(
        self, requests: Sequence[Any], timeout_s: float, generation: int | None = None
    ) -> list[Outcome]:
        """One Outcome per request, in order; each request gets `timeout_s` of wall clock.
        The requests travel in one message and are answered one by one, so a long list costs
        one round trip. A timeout or crash kills the worker, and the rest go to its successor."""
        outcomes: list[Outcome] = []
        while len(outcomes) < len(requests):
            worker = self._acquire(generation)
            if worker is None:
                outcomes += [Outcome("cancelled")] * (len(requests) - len(outcomes))
                break
            healthy = False
            try:
                healthy = self._serve(worker, requests[len(outcomes) :], timeout_s, outcomes)
            finally:
                self._release(worker, healthy)
        return outcomes

    def interrupt(self) -> None:
        """Stops the calls in progress: their workers are killed and replaced, and calls made
        with an older `generation` start no further request."""
        with self._lock:
            self.generation += 1
            for worker in list(self._busy):
                worker.signal_kill()

    def close(self) -> None:
        """Kills every worker; later calls fail. Safe to call twice."""
        with self._lock:
            self._closed = True
            self._idle.clear()
        self._finalizer()

    def pids(self) -> list[int]:
        with self._lock:
            return [worker.process.pid for worker in self._workers]

    def _serve(
        self, worker: _Worker, requests: Sequence[Any], timeout_s: float, outcomes: list[Outcome]
    ) -> bool:
        """Runs requests on one worker, appending outcomes; False once the worker is lost."""
        started = time.perf_counter()
        try:
            worker.await_ready(SETUP_TIMEOUT_S)
            worker.conn.send(list(requests))
        except (WorkerSetupError, OSError) as exc:  # a restarted worker that cannot set up
            message = f"the worker could not start: {exc}"
            outcomes += [Outcome("crashed", message, time.perf_counter() - started)] * len(requests)
            return False
        limit = None if math.isinf(timeout_s) else timeout_s
        for _ in requests:
            try:
                if not worker.conn.poll(limit):
                    outcomes.append(Outcome("timeout", None, time.perf_counter() - started))
                    return False
                kind, value = worker.conn.recv()
            except (EOFError, OSError):
                worker.kill()
                reason = worker.exit_reason()
                outcomes.append(Outcome("crashed", reason, time.perf_counter() - started))
                return False
            now = time.perf_counter()
            outcomes.append(Outcome(kind, value, now - started))
            started = now
        return True

    def _acquire(self, generation: int | None) -> _Worker | None:
        with self._lock:
            while True:
                if self._closed:
                    raise RuntimeError(f"{self.name}: the worker pool is closed")
                if generation is not None and generation != self.generation:
                    return None
                if not self._idle and len(self._workers) < self.size:
                    self._idle.append(self._spawn())
                if self._idle:
                    ready = [w for w in self._idle if w.ready]  # a booting worker may be slow
                    worker = (ready or self._idle)[0]
                    self._idle.remove(worker)
                    self._busy.add(worker)
                    return worker
                self._lock.wait()

    def _release(self, worker: _Worker, healthy: bool) -> None:
        with self._lock:
            self._busy.discard(worker)
            if healthy and worker.process.poll() is None and not self._closed:
                self._idle.append(worker)
            else:
                worker.kill()
                self._workers.discard(worker)
                if not self._closed:  # the successor boots while the caller carries on
                    self._idle.append(self._spawn())
            self._lock.notify()

    def _spawn(self) -> _Worker:
        """Starts one worker (without waiting for its setup); call with the lock held."""
        ours, theirs = socket.socketpair()
        alive_read, alive_write = os.pipe()
        config = {
            "path": self.path,
            "conn": theirs.fileno(),
            "alive": alive_read,
            "parent": os.getpid(),
            "target": self.target,
            "args": self.args,
        }
        try:
            process = spawn(
                [sys.executable, "-c", _BOOT, json.dumps(config)],
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(), alive_read),
                start_new_session=True,  # its own process group: a kill reaches its children
            )
        except BaseException:
            ours.close()
            os.close(alive_write)
            raise
        finally:
            theirs.close()
            os.close(alive_read)
        worker = _Worker(process, Connection(ours.detach()), alive_write)
        self._workers.add(worker)
        return worker


def _kill_all(workers: set[_Worker], busy: set[_Worker], owner: int) -> None:
    """Kills every worker; the threads using busy ones close those when they see them die.
    Not from a fork of the owner, exiting: the workers are the owner's, not its copy's."""
    if os.getpid() != owner:
        return
    for worker in list(workers):
        if worker in busy:
            worker.signal_kill()
        else:
            worker.kill()
    workers.clear()


# --- the worker side: `python -c _BOOT CONFIG` ------------------------------------------------


def serve(config: dict[str, Any]) -> None:
    """The worker's main loop: set up, reply "ready", then answer request lists until EOF."""
    _die_with_parent(config["parent"], config["alive"])
    conn = Connection(config["conn"])
    try:
        module_name, _, function = config["target"].partition(":")
        setup = getattr(importlib.import_module(module_name), function)
        handler, info = setup(*config["args"])
    except BaseException as exc:  # noqa: BLE001 - any failure here is reported, then we exit
        conn.send(("setup_error", clip_message(str(exc) or type(exc).__name__)))
        return
    conn.send(("ready", info))
    while True:
        try:
            requests = conn.recv()
        except EOFError:  # the pool closed its end
            return
        for request in requests:
            _answer(conn, handler, request)


def _answer(conn: Connection, handler: Handler, request: Any) -> None:
    try:
        reply: tuple[str, Any] = ("ok", handler(request))
        conn.send(reply)
    except BaseException as exc:  # noqa: BLE001 - a handler bug or an unpicklable reply
        conn.send(("error", clip_message(f"{type(exc).__name__}: {exc}")))


def _die_with_parent(parent: int, alive_fd: int) -> None:
    """PDEATHSIG where Linux offers it, and a thread that exits when the pipe closes."""
    if sys.platform.startswith("linux"):
        import ctypes  # only here: a few milliseconds of import, once per worker

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)

    def watch() -> None:
        with contextlib.suppress(OSError):
            os.read(alive_fd, 1)  # blocks until the parent's end closes
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGKILL)  # this worker and anything it started
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
