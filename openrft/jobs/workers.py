"""Worker processes: one `openrft train ... --no-progress` subprocess per running job.

A worker starts in its own session (so its own process group): a Ctrl-C in the server's
terminal never reaches it, and the server alone decides when to signal it (SIGTERM: finish
the step, checkpoint, exit 75). Its stdout and stderr go to RUN_DIR/worker.log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from openrft.jobs.runfiles import MetricsTail, log_tail
from openrft.train.status import read_status

EXIT_COMPLETED = 0
EXIT_STOPPED = 75  # openrft.cli.EXIT_STOPPED: stopped on SIGTERM after a checkpoint
LOG_NAME = "worker.log"


@dataclass
class Worker:
    """A running worker the runner watches: started by this server (`process` set) or adopted
    from a previous server (`process` None: no exit code, only status.json)."""

    job_id: str
    pid: int
    run_dir: Path
    process: subprocess.Popen[bytes] | None
    metrics: MetricsTail = field(init=False)
    stage: str | None = None
    peak_rss: int = 0  # bytes: the most the worker and its children used at one poll

    def __post_init__(self) -> None:
        self.metrics = MetricsTail(self.run_dir / "metrics.jsonl")

    def sample_memory(self) -> None:
        """Keep the peak resident memory of the worker's process tree: what names the cause
        when the OOM killer ends it (its own metrics stop at its last finished step)."""
        try:
            root = psutil.Process(self.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for process in tree:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        self.peak_rss = max(self.peak_rss, total)

    def poll(self) -> int | None:
        """The exit code once the worker has exited; -1 for an adopted worker that is gone."""
        if self.process is not None:
            return self.process.poll()
        return None if pid_alive(self.pid) else -1


def worker_command(run_dir: Path, resume: bool, python: str = sys.executable) -> list[str]:
    base = [python, "-m", "openrft.cli", "train"]
    if resume:
        return [*base, "--resume", str(run_dir), "--no-progress"]
    return [*base, str(run_dir / "config.toml"), "--output", str(run_dir), "--no-progress"]


def spawn_worker(job_id: str, run_dir: Path, command: list[str]) -> Worker:
    """Start a worker in its own session, appending its output to RUN_DIR/worker.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # A status.json left by an earlier session of the run would describe the old worker.
    (run_dir / "status.json").unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    with (run_dir / LOG_NAME).open("ab") as log:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        log.write(f"=== {stamp} worker started: {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return Worker(job_id, process.pid, run_dir, process)


def pid_alive(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def is_worker_of(pid: int, run_dir: Path) -> bool:
    """Whether `pid` is alive and is an `openrft ... train` process for this run directory
    (a recycled pid running something else is not)."""
    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    text = " ".join(cmdline)
    return pid_alive(pid) and "train" in cmdline and "openrft" in text and str(run_dir) in text


def signal_worker(pid: int, signum: int = signal.SIGTERM) -> bool:
    """Signal the worker process itself (not its group: a grader's own subprocesses are the
    worker's to stop). False when it is gone."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def kill_worker_group(pid: int) -> None:
    """SIGKILL a worker and everything in its process group (used only for cleanup)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# Signals that end a worker from outside without it failing: the OOM killer and a lost node
# (SIGKILL), a crash in native code (SIGSEGV, SIGBUS, SIGABRT). The job server resumes such a
# job from its last checkpoint, up to jobs.max_restarts times.
RESTARTABLE_SIGNALS = frozenset(
    {signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGHUP}
)


def killed_by(returncode: int | None) -> signal.Signals | None:
    """The signal that ended a worker, when it is one the job server resumes after."""
    if returncode is None or returncode >= 0 or returncode == -1:
        return None
    signum = signal.Signals(-returncode)
    return signum if signum in RESTARTABLE_SIGNALS else None


def memory_note(peak_rss: int) -> str:
    """The worker's peak memory against the machine's, and the knobs that lower it."""
    total = psutil.virtual_memory().total
    gb = 1024**3
    note = f"its peak memory was {peak_rss / gb:.1f} GB of the machine's {total / gb:.1f} GB"
    if peak_rss >= 0.8 * total:
        note += (
            " (probably the OOM killer: lower train.micro_batch_size, rollout.batch_size or "
            "rollout.max_new_tokens; `openrft preflight` estimates the peak)"
        )
    return note


def failure_message(returncode: int | None, run_dir: Path) -> str:
    """What made a worker fail: status.json's message (the error the run raised, naming its
    cause), else the exit code or signal and the last lines of worker.log."""
    status = read_status(run_dir) or {}
    if status.get("stage") == "failed" and status.get("message"):
        return str(status["message"])
    if returncode is None or returncode == -1:
        how = "the worker is gone"
    elif returncode < 0:
        how = f"the worker was killed by {signal.Signals(-returncode).name}"
    else:
        how = f"the worker exited with code {returncode}"
    full = disk_full_note(run_dir)
    if full:
        how = f"{how}; {full}"
    tail = log_tail(run_dir / LOG_NAME)
    return f"{how}; last lines of worker.log:\n{tail}" if tail else how


FULL_DISK_BYTES = 16 * 1024**2  # less than this free: the disk is why a worker could not go on


def disk_full_note(run_dir: Path) -> str:
    """'the disk of RUN_DIR is full (...)' when it is nearly full, else ''."""
    try:
        free = shutil.disk_usage(run_dir).free
    except OSError:
        return ""
    if free >= FULL_DISK_BYTES:
        return ""
    return (
        f"the disk of {run_dir} is full ({free / 1024**2:.1f} MB free): free space, then "
        "resume the job (it continues from its last checkpoint)"
    )
