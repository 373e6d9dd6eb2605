"""Counting what a test leaves running: threads (the worker spawner aside, which is kept for
PDEATHSIG by design), child processes, and whether a pid is gone. For the tests that show a
timed-out grader, tool or environment leaves nothing behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psutil

from openrft.rollout.workers import SPAWNER  # one per process, kept for PDEATHSIG: not a leak


def threads() -> set[int]:
    return {t.ident or 0 for t in threading.enumerate() if t.name != SPAWNER}


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if p.is_running()}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(check: Callable[[], object], within_s: float = 2.0) -> bool:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
