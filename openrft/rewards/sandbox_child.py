"""The sandbox's child process: run by path (`python -I -B sandbox_child.py CONFIG`), it locks
itself in (namespaces, read-only mounts, rlimits, dropped capabilities) in stage 1, then execs
a fresh interpreter for stage 2, which installs the audit hook and runs the user code. It
imports only the standard library. The parent side is `openrft.rewards.sandbox`."""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import resource
import signal
import sys
import time
import traceback
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

MESSAGE_LIMIT = 500  # characters of an error message kept (as grader.clip_message)
RESULT_LIMIT = 1 << 20  # bytes of one JSON result; more is an invalid_output
_CPU_EXIT = 128 + signal.SIGXCPU  # the child's exit status when its CPU limit is hit
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _result_json(value: object) -> object:
    """numpy-like numbers and arrays as JSON numbers and lists; anything else is an error."""
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if callable(getattr(value, "tolist", None)):
        return value.tolist()  # type: ignore[attr-defined]
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# --- the child: `python -I -B sandbox.py CONFIG` (stage 1), then `... CONFIG REPORT` --------

_SPAWN_EVENTS = frozenset({"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                           "os.forkpty", "subprocess.Popen", "os.startfile"})  # fmt: skip
_PATH_EVENTS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1),
                "os.link": (0, 1), "os.symlink": (0, 1), "os.chmod": (0,), "os.chown": (0,),
                "os.truncate": (0,), "os.utime": (0,), "os.setxattr": (0,),
                "os.removexattr": (0,), "os.chdir": (0,), "shutil.rmtree": (0,),
                "sqlite3.connect": (0,)}  # fmt: skip
# readline writes history files from C, past the `open` event.
_BLOCKED_IMPORTS = frozenset({"ctypes", "_ctypes", "_cffi_backend", "_posixsubprocess", "readline"})
_BLOCKED_EVENTS = frozenset({"resource.setrlimit", "resource.prlimit", "gc.get_objects",
                             "gc.get_referrers", "gc.get_referents"})  # fmt: skip


def _child_main(argv: list[str]) -> None:
    config = json.loads(Path(argv[1]).read_text())
    if len(argv) == 2:
        # Stage 1 locks the process in (this needs ctypes), then execs a fresh interpreter, so
        # ctypes is never loaded where user code runs: no ctypes class for it to dig out.
        report = json.dumps(_isolate(config))
        os.execv(sys.executable, [sys.executable, "-I", "-B", __file__, argv[1], report])
    _disarm_fork_exec()
    # As pid 1 of a namespace the process ignores a default-action SIGXCPU; exit instead.
    signal.signal(signal.SIGXCPU, lambda *_: os._exit(_CPU_EXIT))
    sys.addaudithook(_audit_hook(config["workdir"], bool(config["limits"]["network"])))
    out = int(config["result_fd"])
    _emit(out, {"isolation": json.loads(argv[2])})
    _serve(config, out)
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):  # user code may have replaced or closed it
            stream.flush()  # type: ignore[union-attr]
    os._exit(0)  # skips atexit hooks and non-daemon threads the user code left behind


def _isolate(config: Mapping[str, Any]) -> dict[str, str]:
    import ctypes  # stage 1 only

    libc, limits = ctypes.CDLL(None, use_errno=True), config["limits"]
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    report = {"processes": _join_cgroup(config["cgroup"], limits["max_processes"])}
    linux = sys.platform.startswith("linux")  # elsewhere: rlimits and the audit hook only
    spaces = _unshare(libc, limits["network"]) if limits["namespaces"] and linux else set()
    if "pid" in spaces:
        _become_pid_one(libc)
    report["network"] = (
        "allowed (limits.network)" if limits["network"]
        else "blocked: network namespace (only a down loopback) + audit hook on socket.*"
        if "net" in spaces else "blocked: audit hook on socket.* only"
    )  # fmt: skip
    report["filesystem"] = (
        _lock_filesystem(libc, config["workdir"], "pid" in spaces, limits["file_size_mb"])
        if "mount" in spaces
        else "audit hook only: writes outside the work directory raise PermissionError"
    )
    report["namespaces"] = ", ".join(sorted(spaces)) or "none"
    report["rlimits"] = _set_rlimits(limits, max(1, len(config["calls"])))
    report["capabilities"] = _drop_capabilities(libc) if linux else "kept (not Linux)"
    return report


def _join_cgroup(path: str | None, max_processes: int) -> str:
    try:
        if path is None:
            raise OSError("no cgroup")
        Path(path, "cgroup.procs").write_text(str(os.getpid()))
    except OSError:
        return "no cgroup (not writable here): fork is blocked by the audit hook only"
    return f"cgroup pids.max={max_processes} + audit hook on fork/exec/spawn"


def _unshare(libc: Any, network: bool) -> set[str]:
    """New mount, pid and (unless network is allowed) network namespaces; {} when refused."""
    flags, names = 0x00020000 | 0x20000000, {"mount", "pid"}  # CLONE_NEWNS | CLONE_NEWPID
    if not network:
        flags, names = flags | 0x40000000, names | {"net"}  # CLONE_NEWNET
    if libc.unshare(flags) == 0:
        return names
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(flags | 0x10000000) != 0:  # CLONE_NEWUSER: unprivileged users may have it
        return set()
    with contextlib.suppress(OSError):  # map our own ids, or new files would be unowned
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    return names | {"user"}


def _become_pid_one(libc: Any) -> None:
    """Forks into the new pid namespace; the outer process waits and mirrors the inner's end."""
    if (pid := os.fork()) == 0:
        # pid 1 of the namespace: sees no host process; its death kills all inside. It dies
        # with the outer process even after leaving the process group (os.setsid).
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        return
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        if (sig := os.WTERMSIG(status)) not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def _lock_filesystem(libc: Any, workdir: str, new_proc: bool, size_mb: float) -> str:
    """Makes every mount read-only except the work directory, a fresh size-limited tmpfs."""
    import ctypes

    def call(result: int, what: str) -> None:
        if result != 0:
            raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")

    def read_only(path: bytes, on: bool, recursive: bool) -> None:  # mount_setattr(2)
        attr = (ctypes.c_uint64 * 4)(int(on), int(not on), 0, 0)  # attr_set, attr_clr: RDONLY
        flags = ctypes.c_uint(0x8000 if recursive else 0)  # AT_RECURSIVE
        args = (ctypes.c_int(-100), ctypes.c_char_p(path), flags, attr, ctypes.c_size_t(32))
        call(libc.syscall(ctypes.c_long(442), *args), "mount_setattr")

    wd = os.fsencode(workdir)
    try:  # private first: nothing done below may propagate to the host's mounts
        call(libc.mount(None, b"/", None, 0x4000 | 1 << 18, None), "make / private")
        if new_proc:  # a /proc of the new pid namespace: host processes are not listed
            libc.mount(b"proc", b"/proc", b"proc", 2 | 4 | 8, None)
        # A tmpfs, not a bind mount: RLIMIT_FSIZE caps one file, the tmpfs size caps them all.
        options = f"size={math.ceil(size_mb * 1024)}k,mode=0700".encode()
        call(libc.mount(b"tmpfs", wd, b"tmpfs", 2 | 4, options), "mount the work directory")
        read_only(b"/", True, recursive=True)
        read_only(wd, False, recursive=False)
        os.chdir(workdir)  # the tmpfs now covers the directory we started in
    except OSError as exc:
        return f"audit hook only (read-only mounts failed: {exc})"
    return f"read-only mount namespace; the work directory is a {size_mb:g} MB tmpfs + audit hook"


def _set_rlimits(limits: Mapping[str, Any], calls: int) -> str:
    cpu = math.ceil(limits["cpu_s"] * calls) + 1  # +1 s for the interpreter's start-up
    memory, size = int(limits["memory_mb"] * 2**20), int(limits["file_size_mb"] * 2**20)
    wanted = {"RLIMIT_CPU": (cpu, cpu + 1), "RLIMIT_AS": (memory, memory),  # SIGXCPU, SIGKILL
              "RLIMIT_FSIZE": (size, size)}  # fmt: skip
    failed = []
    for name, value in wanted.items():
        try:
            resource.setrlimit(getattr(resource, name), value)
        except (ValueError, OSError):  # e.g. RLIMIT_AS on macOS
            failed.append(name)
    return f"not set: {', '.join(failed)}" if failed else ", ".join(wanted)


def _drop_capabilities(libc: Any) -> str:
    """Drops every capability: uid 0 stays, but cannot remount, ptrace or raise limits."""
    import ctypes

    cap = 0
    while libc.prctl(24, cap, 0, 0, 0) == 0:  # PR_CAPBSET_DROP until the first unknown cap
        cap += 1
    libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    dropped = libc.capset(header, (ctypes.c_uint32 * 6)()) == 0
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: exec cannot regain privileges
    return "all dropped + no_new_privs" if dropped else "not dropped (capset failed)"


def _disarm_fork_exec() -> None:
    """_posixsubprocess.fork_exec raises no audit event; load it now and replace it."""
    import _posixsubprocess  # cached from now on: `import subprocess` gets the disarmed one

    def fork_exec(*_: object) -> None:
        raise PermissionError("sandbox: starting processes is not allowed")

    _posixsubprocess.fork_exec = fork_exec  # type: ignore[attr-defined]


def _audit_hook(workdir: str, network: bool) -> Callable[[str, tuple[Any, ...]], None]:
    """Blocks what the OS layer may not: see docs/sandbox.md. Not a boundary by itself."""
    root = os.path.realpath(workdir)

    def inside(path: Any) -> bool:
        if isinstance(path, int):
            return True  # an already open descriptor (stdout), not a new path
        name = os.fsdecode(os.fspath(path))
        real = os.path.realpath(name)
        return name == os.devnull or real == root or real.startswith(root + os.sep)

    def deny(what: str) -> None:
        raise PermissionError(f"sandbox: {what} is not allowed")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args
            if flags & _WRITE_FLAGS and not inside(path):
                deny(f"writing {path!r} (only the work directory is writable)")
            if mode is None and not inside(path) and os.path.isdir(path):
                deny(f"opening the directory {path!r}")  # a dir_fd would dodge the path check
        elif event in _PATH_EVENTS:
            for index in _PATH_EVENTS[event]:
                if not inside(args[index]):
                    deny(f"{event} on {args[index]!r} outside the work directory")
        elif event == "import" and args[0] in _BLOCKED_IMPORTS:
            raise ImportError(f"sandbox: importing {args[0]} is not allowed")
        elif event.startswith("ctypes.") or event in _SPAWN_EVENTS or event in _BLOCKED_EVENTS:
            deny(event)
        elif event.startswith("socket.") and not network:
            deny("network access")
        elif event in ("os.kill", "os.killpg") and args[0] not in (0, os.getpid(), os.getpgrp()):
            deny(f"{event} of another process")

    return hook


def _serve(config: Mapping[str, Any], out: int) -> None:
    filename = config["filename"]
    module = types.ModuleType("sandboxed_code")
    module.__file__ = filename
    sys.modules[module.__name__] = module  # dataclasses and pickle look classes up here
    try:
        exec(compile(config["code"], filename, "exec"), module.__dict__)
        if not callable(entry := module.__dict__.get(config["entry"])):
            raise NameError(f"the code defines no function {config['entry']}()")
    except BaseException as exc:  # a load failure of any kind fails every call
        _emit(out, {"load_error": _describe(exc, filename), "kind": "runtime_error"})
        return
    _emit(out, {"loaded": True})
    for args in config["calls"]:
        start = time.perf_counter()
        try:
            record: dict[str, Any] = {"ok": True, "value": entry(*args)}
        except MemoryError:
            message = f"MemoryError (the memory limit is {config['limits']['memory_mb']:g} MB)"
            record = {"ok": False, "kind": "runtime_error", "reason": "memory", "message": message}
        except BaseException as exc:  # SystemExit too: a call that exits has no result
            reason = "exit" if isinstance(exc, SystemExit) else "exception"
            record = {"ok": False, "kind": "runtime_error", "reason": reason}
            record["message"] = _describe(exc, filename)
        record["wall_s"] = time.perf_counter() - start
        try:
            _emit(out, record)
        except (TypeError, ValueError, RecursionError) as exc:
            message = f"the return value is not JSON: {exc}"[:MESSAGE_LIMIT]
            _emit(out, {"ok": False, "kind": "invalid_output", "reason": "output",
                        "message": message, "wall_s": record["wall_s"]})  # fmt: skip
    _emit(out, {"done": True})


def _describe(exc: BaseException, filename: str) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit: {exc.code!r} (the code called sys.exit before returning)"
    frames = traceback.extract_tb(exc.__traceback__)
    frames = [f for f in frames if f.filename == filename] or frames  # the user's line
    where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # a user exception whose __str__ raises
        text = type(exc).__name__
    return f"{text[:MESSAGE_LIMIT]}{where}"


def _emit(fd: int, record: Mapping[str, Any]) -> None:
    data = json.dumps(record, allow_nan=True, default=_result_json).encode() + b"\n"
    if len(data) > RESULT_LIMIT:
        raise ValueError(f"{len(data)} bytes; the limit is {RESULT_LIMIT}")
    while data:
        data = data[os.write(fd, data) :]


if __name__ == "__main__":
    _child_main(sys.argv)
