"""Job servers as real processes (`python -m openrft.cli server`), for the tests that SIGKILL
them: `ServerProcess` starts one over a data directory and waits until it answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from openrft.jobs.workers import kill_worker_group, pid_alive

from .helpers import api_client, wait_for


class ServerProcess:
    def __init__(self, data_dir: Path, log: Path):
        command = [sys.executable, "-m", "openrft.cli", "server", "--port", "0",
                   "--data-dir", str(data_dir), "--concurrency", "1"]  # fmt: skip
        self.data_dir = data_dir
        with log.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        self.url = wait_for(self._ready, 60, "the server to start")
        self.client = api_client(self.url, (data_dir / "token").read_text().strip())

    def _ready(self) -> str | None:
        assert self.process.poll() is None, "the server exited"
        try:
            record = json.loads((self.data_dir / "server.json").read_text())
        except (OSError, ValueError):
            return None
        if record["pid"] != self.process.pid:
            return None  # a killed server's file
        try:
            httpx.get(f"{record['url']}/health", timeout=1).raise_for_status()
        except httpx.HTTPError:
            return None
        return record["url"]

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def server_jobs(data_dir: Path) -> list[dict]:
    from openrft.jobs.store import Store

    if not (data_dir / "openrft.db").exists():
        return []
    return [{"pid": job.pid} for job in Store(data_dir / "openrft.db").list_jobs()]


def kill_workers(data_dir: Path) -> None:
    """SIGKILL every worker a test's servers left alive (and their process groups)."""
    for job in server_jobs(data_dir):
        if job.get("pid") and pid_alive(job["pid"]):
            kill_worker_group(job["pid"])
