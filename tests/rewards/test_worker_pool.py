"""Timeouts that stop the work: reward functions and math-verify run in worker processes that
are killed on a timeout, replaced after a crash, and never outlive the grader or its process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from process_counts import children, gone, threads, wait_until

from openrft.errors import GraderError
from openrft.rewards import PythonFunctionGrader, build_grader
from openrft.rewards.grader import BatchTimeout
from openrft.rewards.math_answer import _symbolic_pool, symbolic_match

from ._samples import make_sample

REWARD = """
import ctypes, os, re, signal

def reward(response, item):
    if response == "spin":
        while True:
            pass
    if response == "regex":  # catastrophic backtracking: C code that holds the GIL
        re.match(r"(a*)*b", "a" * 64)
    if response == "exit":
        os._exit(3)
    if response == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if response == "segv":
        ctypes.string_at(0)
    return float(len(response))
"""


def write_reward(folder: Path, source: str = REWARD) -> str:
    path = folder / "reward.py"
    path.write_text(textwrap.dedent(source))
    return f"{path}:reward"


def test_spinning_samples_time_out_and_nothing_outlives_them(tmp_path: Path) -> None:
    grader = PythonFunctionGrader(write_reward(tmp_path), timeout_s=0.5)
    try:
        baseline_threads, [first_worker] = threads(), grader._pool.pids()
        others = children() - {first_worker}  # other tests' workers, a judge server...
        responses = ["ab", "spin", "abc", "regex", "abcd"]
        start = time.perf_counter()
        grades = grader.grade([make_sample(r, index=i) for i, r in enumerate(responses)])
        took = time.perf_counter() - start
        assert [g.score for g in grades] == [2.0, None, 3.0, None, 4.0]
        assert [g.error.kind for g in grades if g.error] == ["timeout", "timeout"]
        assert "within 0.5 s on sample ex-1:1" in grades[1].error.message
        assert took < 4.0  # two timeouts of 0.5 s, plus two restarts
        # Nothing of the hung calls is left: the killed workers are gone, one fresh worker
        # remains (idle: no CPU), and this process has no new thread.
        assert gone(first_worker)
        assert wait_until(lambda: threads() <= baseline_threads)
        assert wait_until(lambda: children() - others == set(grader._pool.pids()))
        [worker] = grader._pool.pids()
        assert worker != first_worker
        cpu = psutil.Process(worker).cpu_times()
        time.sleep(0.5)
        later = psutil.Process(worker).cpu_times()
        assert later.user + later.system - cpu.user - cpu.system < 0.1
    finally:
        grader.close()
    assert wait_until(lambda: not children() - others)


@pytest.mark.parametrize(
    ("response", "fragment"),
    [
        ("exit", "the worker process exited with status 3"),
        ("kill", "killed by SIGKILL (out of memory?)"),
        ("segv", "killed by SIGSEGV"),
    ],
)
def test_a_worker_that_dies_mid_call_is_a_runtime_error(
    tmp_path: Path, response: str, fragment: str
) -> None:
    grader = PythonFunctionGrader(write_reward(tmp_path), timeout_s=5)
    try:
        grades = grader.grade([make_sample(response), make_sample("abc", index=1)])
        assert grades[0].error is not None and grades[0].error.kind == "runtime_error"
        assert fragment in grades[0].error.message
        assert "on sample ex-1:0" in grades[0].error.message
        assert "the worker was restarted" in grades[0].error.message
        assert grades[1].score == 3.0  # the rest of the batch went to the new worker
        assert grader.grade([make_sample("x")])[0].score == 1.0
    finally:
        grader.close()


def test_a_batch_timeout_kills_the_call_instead_of_abandoning_it(tmp_path: Path) -> None:
    grader = PythonFunctionGrader(write_reward(tmp_path), timeout_s=30)
    limited = BatchTimeout(grader, 0.5)
    try:
        baseline_threads, [worker] = threads(), grader._pool.pids()
        others = children() - {worker}
        samples = [make_sample(r, index=i) for i, r in enumerate(["ab", "spin", "abc"])]
        start = time.perf_counter()
        grades = limited.grade(samples)
        assert time.perf_counter() - start < 3.0
        assert [g.error.kind for g in grades] == ["timeout"] * 3
        assert "batch_timeout_s = 0.5 s" in grades[0].error.message
        assert gone(worker)  # killed, not left spinning for its 30 s
        assert wait_until(lambda: threads() <= baseline_threads)  # the grade thread ended
        assert wait_until(lambda: children() - others == set(grader._pool.pids()))
        assert [g.score for g in limited.grade(samples[::2])] == [2.0, 3.0]
    finally:
        limited.close()
    assert wait_until(lambda: not children() - others)


def test_a_batch_timeout_stops_a_thread_isolated_grader_starting_more_samples(
    tmp_path: Path,
) -> None:
    source = """
    import time
    CALLS = []

    def reward(response, item):
        CALLS.append(response)
        time.sleep(0.3)
        return 1.0
    """
    grader = PythonFunctionGrader(write_reward(tmp_path, source), isolation="thread")
    grades = BatchTimeout(grader, 0.4).grade([make_sample("x", index=i) for i in range(10)])
    assert [g.error.kind for g in grades] == ["timeout"] * 10
    time.sleep(0.5)
    assert len(grader.fn.__globals__["CALLS"]) == 2  # the one in flight was abandoned, no more


@pytest.mark.parametrize("response", ["spin", "regex"])
def test_no_worker_outlives_a_killed_parent(tmp_path: Path, response: str) -> None:
    """The parent grades a call that never ends, then gets SIGKILL: no time to clean up.
    "regex" holds the GIL in C, so only PDEATHSIG (not the watchdog thread) can end it."""
    script = f"""
    import sys, threading
    from openrft.rewards import PythonFunctionGrader
    from openrft.types import Sample
    grader = PythonFunctionGrader({write_reward(tmp_path)!r}, timeout_s=600)
    print(grader._pool.pids()[0], flush=True)
    turns = ({{"role": "user", "content": "q"}}, {{"role": "assistant", "content": {response!r}}})
    grader.grade([Sample(id="a", messages=turns, reference_answer=None, metadata={{}})])
    """
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True
    )
    try:
        worker = int(parent.stdout.readline())
        assert wait_until(lambda: psutil.Process(worker).cpu_percent(0.05) > 50)  # busy
    finally:
        parent.kill()
        parent.wait()
    assert wait_until(lambda: gone(worker)), f"worker {worker} outlived its parent"


def test_close_stops_the_worker(tmp_path: Path) -> None:
    grader = PythonFunctionGrader(write_reward(tmp_path))
    [worker] = grader._pool.pids()
    grader.close()
    grader.close()  # twice is fine
    assert gone(worker)
    with pytest.raises(RuntimeError, match="closed"):
        grader.grade([make_sample("x")])


def test_math_verify_timeout_leaves_nothing_running() -> None:
    assert symbolic_match("x + 1", "1 + x", 30) == (True, False)  # the pool is warm now
    baseline_threads, before = threads(), set(_symbolic_pool().pids())
    start = time.perf_counter()
    # 2^65536 as an exponent: sympy computes it in C, holding the GIL, for hours.
    assert symbolic_match("2^{2^{2^{2^{2^{2}}}}}", "3", 0.5) == (False, True)
    assert time.perf_counter() - start < 2.0
    assert all(gone(pid) for pid in before - set(_symbolic_pool().pids()))
    assert len(before - set(_symbolic_pool().pids())) == 1  # the one that ran it was killed
    assert wait_until(lambda: threads() <= baseline_threads)
    assert symbolic_match("\\frac{1}{2}", "0.5", 30) == (True, False)  # its successor works


# --- functions that exist only in this process: the thread opt-in --------------------------------


def test_a_function_a_worker_cannot_load_needs_thread_isolation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = type(sys)("rft_made_at_runtime")
    module.reward = lambda response, item: 0.5  # e.g. a lambda or closure built by a test
    monkeypatch.setitem(sys.modules, "rft_made_at_runtime", module)
    with pytest.raises(GraderError) as caught:
        PythonFunctionGrader("rft_made_at_runtime:reward")
    message = str(caught.value)
    assert "loads in this process but not in a worker process" in message
    assert "no module named 'rft_made_at_runtime'" in message
    assert 'isolation = "thread"' in message
    grader = PythonFunctionGrader("rft_made_at_runtime:reward", isolation="thread")
    assert grader.grade([make_sample("x")])[0].score == 0.5


def test_isolation_is_a_python_function_table_field(tmp_path: Path) -> None:
    reference = write_reward(tmp_path)
    spec = {"type": "python_function", "function": reference, "isolation": "thread"}
    grader = build_grader(spec)
    assert isinstance(grader, PythonFunctionGrader) and grader.isolation == "thread"
    assert grader.grade([make_sample("abc")])[0].score == 3.0
    default = build_grader({"type": "python_function", "function": reference})
    assert default.isolation == "process"
    default.close()
    with pytest.raises(GraderError, match="isolation: 'fork' is not one of: process, thread"):
        build_grader({**spec, "isolation": "fork"})
    with pytest.raises(GraderError, match="isolation must be one of process, thread"):
        PythonFunctionGrader(reference, isolation="fork")


def test_workers_start_where_the_grader_was_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative reference keeps working after a restart even if the cwd has changed."""
    write_reward(tmp_path)
    monkeypatch.chdir(tmp_path)
    grader = PythonFunctionGrader("reward.py:reward", timeout_s=0.5)
    try:
        monkeypatch.chdir(os.path.dirname(tmp_path))
        grades = grader.grade([make_sample("spin"), make_sample("ab", index=1)])
        assert [g.error.kind if g.error else g.score for g in grades] == ["timeout", 2.0]
    finally:
        grader.close()


def test_a_sigterm_ignoring_worker_is_still_killed(tmp_path: Path) -> None:
    source = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def reward(response, item):
        time.sleep(60)
    """
    grader = PythonFunctionGrader(write_reward(tmp_path, source), timeout_s=0.3)
    [worker] = grader._pool.pids()
    try:
        assert grader.grade([make_sample("x")])[0].error.kind == "timeout"
        assert gone(worker)
    finally:
        grader.close()


def test_a_fork_of_the_process_leaves_its_workers_alone(tmp_path: Path) -> None:
    """A forked copy (a data loader, say) that closes its copy of the grader on the way out
    must not kill the workers of the process it was forked from."""
    grader = PythonFunctionGrader(write_reward(tmp_path))
    try:
        [worker] = grader._pool.pids()
        child = os.fork()
        if child == 0:  # the copy: close everything, then leave without pytest's cleanup
            grader.close()
            os._exit(0)
        os.waitpid(child, 0)
        assert not gone(worker)
        assert grader.grade([make_sample("abc")])[0].score == 3.0
    finally:
        grader.close()
