"""Runs untrusted Python in a separate, locked-down process (the `python` and `code` graders).

Owns both halves of the sandbox. The parent half spawns `python -I -B <this file>`, enforces the
wall clock (SIGKILL to the process group and its cgroup) and turns what came back into
`SandboxResult`s. The child half (this file run as a script) locks itself in, in two stages:
stage 1 makes namespaces, read-only mounts, rlimits and drops capabilities (with ctypes), then
execs stage 2, a fresh interpreter without ctypes, which installs an audit hook and runs the
user code. The child imports only the standard library, so a sandbox starts in ~0.15 s.
docs/sandbox.md says what is enforced, by which mechanism, and what is not.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from openrft.rewards.sandbox_child import _CPU_EXIT, MESSAGE_LIMIT, _result_json

CHILD_SCRIPT = Path(__file__).with_name("sandbox_child.py")  # run by path: stdlib imports only

TAIL_LIMIT = 2000  # characters of stdout/stderr kept per process
_POLL_S = 0.05  # how often the parent looks for progress while it waits


@dataclass(frozen=True)
class SandboxLimits:
    """Per-call limits. A batch of n calls in one process gets n x cpu_s of CPU in total."""

    cpu_s: float = 10.0  # CPU seconds per call (RLIMIT_CPU, SIGXCPU)
    wall_s: float = 30.0  # wall-clock seconds per call, enforced by the parent (SIGKILL)
    memory_mb: float = 1024  # address space of the process (RLIMIT_AS)
    file_size_mb: float = 64  # largest file (RLIMIT_FSIZE); with a mount namespace, also the
    #                           size of the work directory (a tmpfs), so of all files together
    max_processes: int = 32  # tasks (threads count) in the sandbox's pids cgroup, where one exists
    network: bool = False  # False: no network (network namespace + audit hook on socket.*)
    namespaces: bool = True  # False: skip namespaces and read-only mounts (audit hook only)

    def __post_init__(self) -> None:
        for name in ("cpu_s", "wall_s", "memory_mb", "file_size_mb", "max_processes"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value < math.inf
            ):
                raise ValueError(f"SandboxLimits.{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one call: a JSON value, or why there is none."""

    ok: bool
    value: Any = None  # the call's return value, decoded from JSON (None when not ok)
    error_kind: str | None = None  # a GradeErrorKind: timeout, runtime_error or invalid_output
    reason: str = ""  # exception, exit, memory, wall_limit, cpu_limit, crash, killed, output,
    #                   load (the code failed to load) or start (no sandbox could be started)
    message: str = ""  # clipped to MESSAGE_LIMIT characters
    stdout: str = ""  # tails of the process's output (TAIL_LIMIT characters)
    stderr: str = ""
    wall_s: float = 0.0  # wall-clock seconds of this call
    isolation: Mapping[str, str] = field(default_factory=dict)  # which mechanisms applied


def run_python(code: str, payload: Any, limits: SandboxLimits | None = None) -> SandboxResult:
    """Runs `code` as a module in a fresh sandbox and returns its `main(payload)` (as JSON)."""
    return run_calls(code, "main", [(payload,)], limits)[0]


def check_entry(
    code: str, entry: str, limits: SandboxLimits | None = None, *, filename: str = "<sandbox>"
) -> SandboxResult:
    """Loads `code` in a sandbox without calling anything: ok when it defines callable `entry`."""
    run = _run_process(code, entry, [], limits or SandboxLimits(), filename)
    return run.failure or SandboxResult(ok=True, isolation=run.isolation)


def run_calls(
    code: str,
    entry: str,
    calls: Sequence[Sequence[Any]],
    limits: SandboxLimits | None = None,
    *,
    filename: str = "<sandbox>",
) -> list[SandboxResult]:
    """Loads `code` once, then returns `entry(*args)` for each args in `calls`, in order.

    An exception fails only its own call. When the process dies (wall or CPU limit, crash,
    os._exit), the calls already answered keep their results, the call in flight gets the
    error, and the remaining calls run in a fresh process. When `code` itself fails to load,
    every call gets that error. Tracebacks name `filename` ("(at <sandbox>:3)").
    """
    limits = limits or SandboxLimits()
    results: list[SandboxResult] = []
    while len(results) < len(calls):  # every round answers at least one call
        todo = calls[len(results) :]
        run = _run_process(code, entry, todo, limits, filename)
        results += run.outcomes[: len(todo)]
        if len(results) < len(calls):
            failure = run.failure or _failed("invalid_output", "output", "no result for a call")
            results += [failure] * (1 if run.loaded else len(calls) - len(results))
    return results


@dataclass
class _Run:
    outcomes: list[SandboxResult] = field(default_factory=list)  # answered calls, in order
    failure: SandboxResult | None = None  # why the process stopped early
    loaded: bool = False  # the code loaded: a failure belongs to the call in flight only
    isolation: dict[str, str] = field(default_factory=dict)


def _run_process(
    code: str, entry: str, calls: Sequence[Sequence[Any]], limits: SandboxLimits, filename: str
) -> _Run:
    root = Path(tempfile.mkdtemp(prefix="openrft-sandbox-"))
    cgroup, proc = _make_cgroup(limits.max_processes), None
    try:
        (work := root / "work").mkdir()
        files = [open(root / name, "wb") for name in ("stdout", "stderr", "result")]  # noqa: SIM115
        with files[0] as out, files[1] as err, files[2] as result:
            config = {"code": code, "entry": entry, "calls": [list(c) for c in calls],
                      "filename": filename, "workdir": str(work), "limits": asdict(limits),
                      "cgroup": cgroup and str(cgroup), "result_fd": result.fileno()}  # fmt: skip
            (root / "input.json").write_text(json.dumps(config, default=_payload_json))
            start = time.monotonic()
            try:
                proc = _spawn(root, work, out, err, result.fileno())
            except OSError as exc:
                message = f"cannot start the sandbox: {exc}"
                return _Run(failure=_failed("runtime_error", "start", message))
            timed_out = _wait(proc, root / "result", limits, len(calls))
        return _collect(root, proc.returncode, timed_out, limits, time.monotonic() - start)
    finally:
        if proc is not None and proc.poll() is None:  # the parent was interrupted (Ctrl-C)
            _kill_group(proc)
        _remove_cgroup(cgroup)
        shutil.rmtree(root, ignore_errors=True)


def _spawn(root: Path, work: Path, out: Any, err: Any, result_fd: int) -> subprocess.Popen[bytes]:
    # A minimal environment: the trainer's variables (tokens, keys) must not leak into the child.
    env = {"PATH": os.defpath, "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work)}
    env |= {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    # start_new_session: the child leads its own process group, so one killpg ends it all.
    # No preexec_fn (unsafe in a threaded trainer): the child locks itself in.
    return subprocess.Popen(
        [sys.executable, "-I", "-B", str(CHILD_SCRIPT), str(root / "input.json")],
        stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=work, env=env,
        pass_fds=(result_fd,), start_new_session=True,
    )  # fmt: skip


def _wait(proc: subprocess.Popen[bytes], result: Path, limits: SandboxLimits, calls: int) -> bool:
    """Waits for the child; kills it when no call finished for wall_s. True when it was killed."""
    now = time.monotonic()
    deadline, seen = now + limits.wall_s, 0
    backstop = now + limits.wall_s * (calls + 2)  # code that writes lines to stay alive
    while True:
        try:
            proc.wait(timeout=_POLL_S)
            return False
        except subprocess.TimeoutExpired:
            pass
        now, size = time.monotonic(), result.stat().st_size
        if size != seen:  # a result line: the next call starts its own wall clock
            seen, deadline = size, now + limits.wall_s
        if now >= min(deadline, backstop):
            _kill_group(proc)
            return True


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the pid namespace takes the rest with it
    proc.wait()


def _collect(root: Path, code: int, timed_out: bool, limits: SandboxLimits, wall: float) -> _Run:
    run, extra = _Run(), {"stdout": _tail(root / "stdout"), "stderr": _tail(root / "stderr")}
    for line in (root / "result").read_bytes().splitlines():
        try:  # user code shares the process and could write anything to the result descriptor
            if _apply(run, json.loads(line), extra):
                return run
        except (ValueError, KeyError, TypeError, AttributeError):
            run.failure = _failed("invalid_output", "output", "corrupt result line", extra)
            return run
    in_flight = max(0.0, wall - sum(o.wall_s for o in run.outcomes))
    run.failure = _death(code, timed_out, limits, in_flight, extra)
    return run


def _apply(run: _Run, record: dict[str, Any], extra: dict[str, Any]) -> bool:
    """Adds one result line to `run`; True when the stream is complete."""
    if "isolation" in record:
        run.isolation = extra["isolation"] = dict(record["isolation"])
    elif "load_error" in record:
        run.failure = _failed(str(record["kind"]), "load", str(record["load_error"]), extra)
        return True
    elif "ok" in record:
        wall = float(record["wall_s"])
        run.outcomes.append(
            SandboxResult(True, record["value"], wall_s=wall, **extra) if record["ok"]
            else _failed(record["kind"], record["reason"], str(record["message"]), extra, wall)
        )  # fmt: skip
    run.loaded = run.loaded or "loaded" in record
    return bool(record.get("done"))


def _death(
    code: int, timed_out: bool, limits: SandboxLimits, wall: float, extra: Mapping[str, Any]
) -> SandboxResult:
    """Why a process stopped before answering every call."""
    stderr = f"; stderr: {extra['stderr'][-300:]}" if extra["stderr"].strip() else ""
    if timed_out:
        message = f"no result within the wall-clock limit of {limits.wall_s:g} s; killed"
        return _failed("timeout", "wall_limit", message, extra, limits.wall_s)
    if code in (-signal.SIGXCPU, _CPU_EXIT):
        message = f"exceeded the CPU time limit ({limits.cpu_s:g} s per call); killed"
        return _failed("timeout", "cpu_limit", message, extra, wall)
    if code == -signal.SIGKILL:
        message = "killed by SIGKILL (the CPU hard limit or the kernel's out-of-memory killer)"
        return _failed("runtime_error", "killed", message, extra, wall)
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return _failed("runtime_error", "crash", f"crashed with {name}{stderr}", extra, wall)
    message = f"the process exited with status {code} before returning (sys.exit/os._exit?)"
    return _failed("runtime_error", "exit", message + stderr, extra, wall)


def _failed(
    kind: str, reason: str, message: str, extra: Mapping[str, Any] | None = None, wall: float = 0.0
) -> SandboxResult:
    text = message if len(message) <= MESSAGE_LIMIT else f"{message[:MESSAGE_LIMIT]}... (clipped)"
    return SandboxResult(False, None, kind, reason, text, wall_s=wall, **(extra or {}))


def _tail(path: Path) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - 4 * TAIL_LIMIT))
        return handle.read().decode("utf-8", "replace")[-TAIL_LIMIT:]


def _payload_json(value: object) -> object:
    """Payload fields that are not JSON (a dataset's odd types) go in as their str()."""
    try:
        return _result_json(value)
    except TypeError:
        return str(value)


# --- cgroup: a pids limit, only where this process may create cgroups ----------------------


@functools.cache
def _cgroup_parent() -> Path | None:
    """This process's own pids cgroup (v1, or v2 with pids enabled) if children can be made."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            v1 = "pids" in controllers.split(",")
            base = Path("/sys/fs/cgroup/pids" if v1 else "/sys/fs/cgroup") / path.lstrip("/")
            control = base / "cgroup.subtree_control"
            if v1 or (not controllers and "pids" in _read(control).split()):
                probe = base / f"openrft-probe-{os.getpid()}"
                with contextlib.suppress(OSError):
                    probe.mkdir()
                    usable = (probe / "pids.max").is_file()
                    probe.rmdir()
                    if usable:
                        return base
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _make_cgroup(max_processes: int) -> Path | None:
    if (parent := _cgroup_parent()) is None:
        return None
    path = parent / f"openrft-sandbox-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        path.mkdir()
        (path / "pids.max").write_text(str(max_processes))
    except OSError:
        _remove_cgroup(path)
        return None
    return path


def _remove_cgroup(path: Path | None) -> None:
    """Kills whatever is left in the cgroup (escaped children included), then removes it."""
    if path is None:
        return
    for _ in range(100):
        if not (pids := _read(path / "cgroup.procs").split()):
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.01)
    with contextlib.suppress(OSError):
        path.rmdir()
