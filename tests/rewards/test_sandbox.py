"""The sandbox: real child processes, real escape attempts, real sockets and files.

Each attack runs in a real sandbox; the test checks the call's outcome, that later calls still
run, and that nothing escaped (no file written, no connection accepted, no process or
directory left behind). Attacks run against both layers: the default (namespaces, read-only
mounts, no capabilities, audit hook) and the audit hook alone (`namespaces=False`, what a host
without unshare gets).
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from openrft.rewards.sandbox import (
    TAIL_LIMIT,
    SandboxLimits,
    SandboxResult,
    check_entry,
    run_calls,
    run_python,
)

FAST = SandboxLimits(cpu_s=2.0, wall_s=2.0)
LAYERS = [pytest.param(True, id="namespaces"), pytest.param(False, id="hook-only")]
REPO = Path(__file__).resolve().parents[2]

# One module of attacks: main(name, arg) runs the attack called `name`.
ATTACKS = textwrap.dedent(
    """
    import os, socket, subprocess, sys

    def main(name, arg=None):
        if name == "ok":
            return arg
        if name == "loop":
            while True:
                pass
        if name == "spin":  # pure CPU, no sleeping
            x = 0
            while True:
                x += 1
        if name == "memory":
            return len("a" * 10**10)
        if name == "memory_growth":
            chunks = []
            while True:
                chunks.append(" " * 10**7)
        if name == "fork_bomb":
            while True:
                os.fork()
        if name == "subprocess":
            return subprocess.run(["ls"]).returncode
        if name == "system":
            return os.system("ls")
        if name == "posix_spawn":
            return os.posix_spawn("/bin/ls", ["ls"], {})
        if name == "multiprocessing":
            import multiprocessing
            process = multiprocessing.Process(target=print)
            process.start()
        if name == "write":
            with open(arg, "w") as handle:
                handle.write("escaped")
        if name == "sqlite":
            import sqlite3
            sqlite3.connect(arg).execute("create table t (x)")
        if name == "mkfifo":
            os.mkfifo(arg)
        if name == "write_inside":
            with open("inside.txt", "w") as handle:
                handle.write(arg)
            return open("inside.txt").read()
        if name == "connect":
            socket.create_connection(("127.0.0.1", arg), timeout=1).close()
            return "connected"
        if name == "ctypes":
            import ctypes
        if name == "dig_ctypes":  # ctypes classes left in memory would allow raw C calls
            seen, todo = set(), [object]
            while todo:
                for sub in type.__subclasses__(todo.pop()):
                    if sub not in seen:
                        seen.add(sub)
                        todo.append(sub)
            return sorted(c.__name__ for c in seen if c.__module__ in ("ctypes", "_ctypes"))
        if name == "os_exit":
            os._exit(3)
        if name == "sys_exit":
            sys.exit(0)
        if name == "print":
            print("x" * 10**6)
            return arg
        if name == "set":
            return {1, 2}
        if name == "nan":
            return float("nan")
        if name == "huge":
            return "x" * (2 * 2**20)
        if name == "sleep":
            import time
            time.sleep(arg)
            return arg
        if name == "env":
            return dict(os.environ)
        if name == "processes":
            pids = sorted(p for p in os.listdir("/proc") if p.isdigit())
            return [os.getpid(), os.getppid(), pids]
        if name == "leave_group":  # os.setsid has no audit event
            os.setsid()
            while True:
                pass
        if name == "cgroup":
            path = open("/proc/self/cgroup").read().split("pids:")[1].split()[0]
            return [path, open(f"/sys/fs/cgroup/pids{path}/pids.max").read().strip()]
        if name == "kill":
            os.kill(arg, 0)
        if name == "pidfd":
            return os.pidfd_open(arg)
        if name == "forge":  # write junk to the parent's result descriptor
            # It keeps the parent's number (pass_fds), which is high in a busy test process.
            for fd in range(3, 4096):
                try:
                    os.write(fd, b"not json\\n")
                except OSError:
                    pass
            return "forged"
        raise ValueError(name)
    """
)


def attack(*calls: tuple[object, ...], limits: SandboxLimits = FAST) -> list[SandboxResult]:
    return run_calls(ATTACKS, "main", calls, limits)


def layer(namespaces: bool, **changes: object) -> SandboxLimits:
    return SandboxLimits(**{"cpu_s": 2.0, "wall_s": 2.0, "namespaces": namespaces, **changes})


def assert_blocked(result: SandboxResult, *words: str) -> None:
    assert not result.ok and result.error_kind == "runtime_error", result
    assert all(word in result.message for word in words), result.message


@pytest.fixture
def server() -> Iterator[socket.socket]:
    """A real listening socket on the host's loopback."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.3)
    yield listener
    listener.close()


def accepted(listener: socket.socket) -> bool:
    try:
        listener.accept()[0].close()
    except TimeoutError:
        return False
    return True


def test_returns_the_json_value_and_stdout_does_not_corrupt_it() -> None:
    code = (
        "def main(payload):\n    print('{\"not\": \"the result\"}')\n    return payload['x'] * 2\n"
    )
    result = run_python(code, {"x": 21}, FAST)
    assert result.ok and result.value == 42 and result.error_kind is None
    assert result.stdout == '{"not": "the result"}\n'


def test_the_isolation_report_names_what_applied() -> None:
    report = run_python("def main(p):\n    return p\n", 1, FAST).isolation
    keys = {"processes", "network", "filesystem", "namespaces", "rlimits", "capabilities"}
    assert set(report) == keys and report["network"].startswith("blocked")
    assert report["rlimits"] == "RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE"
    if "mount" in report["namespaces"]:  # where unshare works (root, or user namespaces)
        assert report["filesystem"].startswith("read-only mount namespace; the work directory")
        assert "net" in report["namespaces"] and "pid" in report["namespaces"]


def test_the_sandbox_runs_in_its_own_pids_cgroup_where_one_can_be_made() -> None:
    [result] = attack(("cgroup",), limits=SandboxLimits(max_processes=7))
    if not result.isolation["processes"].startswith("cgroup"):
        pytest.skip("cgroups are not writable here: the audit hook alone blocks fork")
    assert "openrft-sandbox-" in result.value[0] and result.value[1] == "7"


def test_an_infinite_loop_times_out_and_the_next_call_runs_in_a_fresh_process() -> None:
    start = time.monotonic()
    results = attack(("ok", 1), ("loop",), ("ok", 2), limits=SandboxLimits(wall_s=1.0))
    assert time.monotonic() - start < 5
    assert results[0].value == 1 and results[2].value == 2
    assert results[1].error_kind == "timeout" and results[1].reason == "wall_limit"


def test_a_cpu_spin_hits_the_cpu_limit() -> None:
    [result] = attack(("spin",), limits=SandboxLimits(cpu_s=1.0, wall_s=20.0))
    assert result.error_kind == "timeout" and result.reason == "cpu_limit", result


def test_each_call_gets_its_own_wall_clock() -> None:
    calls = [("sleep", 0.6)] * 3  # 1.8 s in all, 0.6 s each
    assert [r.value for r in attack(*calls, limits=SandboxLimits(wall_s=1.0))] == [0.6] * 3


@pytest.mark.parametrize("name", ["memory", "memory_growth"])
def test_a_memory_bomb_is_a_memory_error_and_the_process_survives(name: str) -> None:
    results = attack((name,), ("ok", "after"), limits=SandboxLimits(memory_mb=512, wall_s=10))
    assert results[0].error_kind == "runtime_error" and results[0].reason == "memory"
    assert "512 MB" in results[0].message
    assert results[1].value == "after"


def test_a_file_over_the_size_limit_fails() -> None:
    code = "def main(n):\n    open('big', 'w').write('x' * n)\n    return n\n"
    limits = SandboxLimits(file_size_mb=1, wall_s=5)
    assert run_python(code, 1000, limits).value == 1000
    assert_blocked(run_python(code, 3 * 2**20, limits), "File too large")


def test_many_files_cannot_fill_the_disk() -> None:
    code = "def main(n):\n    for i in range(n):\n        open(f'f{i}', 'w').write('x' * 2**19)\n"
    result = run_python(code, 8, SandboxLimits(file_size_mb=2, wall_s=5))  # 4 MB in 512 KB files
    if "tmpfs" not in result.isolation["filesystem"]:
        pytest.skip("no mount namespace here: only the per-file limit applies")
    assert_blocked(result, "No space left on device")


SPAWNS = {"fork_bomb": "os.fork", "subprocess": "subprocess.Popen", "system": "os.system",
          "posix_spawn": "os.posix_spawn", "multiprocessing": "os.fork"}  # fmt: skip


@pytest.mark.parametrize("namespaces", LAYERS)
def test_starting_processes_is_blocked(namespaces: bool) -> None:
    calls = [call for name in SPAWNS for call in ((name,), ("ok", name))]  # each with a neighbour
    results = attack(*calls, limits=layer(namespaces))
    pairs = zip(SPAWNS.items(), results[::2], results[1::2], strict=True)
    for (name, event), blocked, neighbour in pairs:
        assert_blocked(blocked, event, "not allowed")
        assert neighbour.value == name


@pytest.mark.parametrize("namespaces", LAYERS)
def test_writing_outside_the_work_directory_fails(namespaces: bool) -> None:
    name = f"openrft-escape-{uuid.uuid4().hex[:8]}"
    paths = [Path("/tmp") / name, REPO / "tests" / name, Path("/etc") / name]
    calls = [(how, str(path)) for path in paths for how in ("write", "sqlite")]
    results = attack(*calls, ("write_inside", "mine"), limits=layer(namespaces))
    for call, result in zip(calls, results, strict=False):
        assert not result.ok and result.error_kind == "runtime_error", (call, result)
    assert not any(path.exists() for path in paths)
    assert results[-1].value == "mine"  # the work directory itself is writable


def test_the_read_only_mounts_stop_writes_the_audit_hook_cannot_see() -> None:
    # mkfifo raises no audit event: only the kernel layer stops it.
    path = Path("/tmp") / f"openrft-escape-{uuid.uuid4().hex[:8]}"
    [result] = attack(("mkfifo", str(path)))
    if "mount" not in result.isolation.get("namespaces", ""):
        pytest.skip("no mount namespace on this host: the audit hook is the only layer")
    assert_blocked(result, "Read-only file system")
    assert not path.exists()


@pytest.mark.parametrize("namespaces", LAYERS)
def test_connecting_to_a_host_socket_fails(namespaces: bool, server: socket.socket) -> None:
    port = server.getsockname()[1]
    results = attack(("connect", port), ("ok", "after"), limits=layer(namespaces))
    assert_blocked(results[0], "network access")
    assert not accepted(server)
    assert results[1].value == "after"


def test_the_same_connection_works_when_the_network_is_allowed(server: socket.socket) -> None:
    # The control for the test above: the server is reachable, so blocking is not vacuous.
    port = server.getsockname()[1]
    [result] = attack(("connect", port), limits=SandboxLimits(wall_s=5, network=True))
    assert result.value == "connected" and accepted(server)


def test_ctypes_cannot_be_imported_or_dug_out_of_memory() -> None:
    imported, dug = attack(("ctypes",), ("dig_ctypes",))
    assert not imported.ok and "importing ctypes is not allowed" in imported.message
    assert dug.value == []  # stage 2 never loaded ctypes: no class to build a C call from


def test_exiting_fails_only_the_call_in_flight() -> None:
    results = attack(("ok", 1), ("os_exit",), ("ok", 2), ("sys_exit",), ("ok", 3))
    assert [r.value for r in results[::2]] == [1, 2, 3]
    assert results[1].reason == "exit" and "status 3" in results[1].message
    assert results[3].reason == "exit" and "SystemExit" in results[3].message


def test_printing_a_megabyte_keeps_only_a_tail() -> None:
    [result] = attack(("print", 7))
    assert result.value == 7 and len(result.stdout) == TAIL_LIMIT


def test_results_that_are_not_json_are_invalid_output() -> None:
    not_json, nan, huge = attack(("set",), ("nan",), ("huge",))
    assert not_json.error_kind == "invalid_output" and "set" in not_json.message
    assert nan.ok and math.isnan(nan.value)  # a NaN is data; the graders reject it
    assert huge.error_kind == "invalid_output" and "limit" in huge.message


def test_junk_on_the_result_descriptor_cannot_crash_the_parent() -> None:
    forged, after = attack(("forge",), ("ok", "after"))
    assert forged.error_kind == "invalid_output" and after.value == "after"


def test_a_load_failure_fails_every_call() -> None:
    results = run_calls("import no_such_module_xyz\n", "main", [(1,), (2,)], FAST)
    assert all(r.reason == "load" and "no_such_module_xyz" in r.message for r in results)
    missing = check_entry("x = 1\n", "grade", FAST)
    assert not missing.ok and "grade()" in missing.message
    assert check_entry("def grade(s, i):\n    return 1\n", "grade", FAST).ok


def test_the_trainer_environment_is_not_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENRFT_TEST_SECRET", "hunter2")
    [result] = attack(("env",))
    assert "OPENRFT_TEST_SECRET" not in result.value and "hunter2" not in str(result.value)


def test_host_processes_cannot_be_signalled() -> None:
    killed, pidfd, processes = attack(("kill", os.getpid()), ("pidfd", os.getpid()), ("processes",))
    assert_blocked(killed, "os.kill of another process")
    if "pid" in processes.isolation.get("namespaces", ""):
        # pidfd_open raises no audit event; the pid namespace makes host pids unreachable.
        assert pidfd.error_kind == "runtime_error" and "ProcessLookupError" in pidfd.message
        assert processes.value == [1, 0, ["1"]]


def running_sandboxes(marker: str) -> list[int]:
    """Processes whose command line holds `marker` (sandboxes get a path under it)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_text():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_nothing_is_left_behind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    calls = [("write_inside", "x"), ("loop",), ("leave_group",)]
    attack(*calls, limits=SandboxLimits(wall_s=1.0))
    deadline = time.monotonic() + 2
    while running_sandboxes(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running_sandboxes(str(tmp_path)) == []
    assert list(tmp_path.iterdir()) == []
    for base in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        assert not list(base.glob(f"openrft-sandbox-{os.getpid()}-*"))


@pytest.mark.parametrize(
    "change", [{"wall_s": 0}, {"cpu_s": -1.0}, {"memory_mb": math.inf}, {"max_processes": True}]
)
def test_limits_must_be_positive_numbers(change: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be a positive number"):
        SandboxLimits(**change)  # type: ignore[arg-type]
