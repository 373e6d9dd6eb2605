"""Restart recovery with real server processes (`python -m openrft.cli server`): SIGKILL the
server while a job runs -> the next server adopts the still-running worker; SIGKILL the
server and the worker -> the next server queues the job again and it resumes from its last
checkpoint to completion, with no step missing or repeated; a job queued behind it stays
queued across both restarts and runs after it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from openrft.jobs.workers import kill_worker_group, pid_alive

from .helpers import api_client, job_config, metric_steps, wait_ended, wait_for, wait_job


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


@pytest.fixture
def servers(tmp_path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.kill()
    for job in server_jobs(tmp_path / "data"):
        if job.get("pid") and pid_alive(job["pid"]):
            kill_worker_group(job["pid"])


def server_jobs(data_dir: Path) -> list[dict]:
    from openrft.jobs.store import Store

    if not (data_dir / "openrft.db").exists():
        return []
    return [{"pid": job.pid} for job in Store(data_dir / "openrft.db").list_jobs()]


def test_restart_adopts_or_resumes(servers, tmp_path, tiny_model_dir):
    data_dir, log = tmp_path / "data", tmp_path / "servers.log"
    servers.append(ServerProcess(data_dir, log))
    config = job_config(tmp_path / "job", tiny_model_dir, max_steps=10, grader="slow")
    job_id = servers[-1].client.post("/api/jobs", json={"config": config}).json()["id"]
    job = wait_job(servers[-1].client, job_id, lambda j: j["progress"]["step"] >= 2, "step 2")
    worker = job["pid"]
    queued_config = job_config(tmp_path / "queued", tiny_model_dir, max_steps=1)
    queued_id = servers[-1].client.post("/api/jobs", json={"config": queued_config}).json()["id"]
    assert servers[-1].client.get(f"/api/jobs/{queued_id}").json()["status"] == "Queued"

    servers[-1].kill()  # the server crashes; its worker (own session) keeps training
    assert pid_alive(worker)
    servers.append(ServerProcess(data_dir, log))
    client = servers[-1].client
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "InProgress" and job["pid"] == worker
    assert client.get(f"/api/jobs/{queued_id}").json()["status"] == "Queued"  # still waiting
    wait_job(client, job_id, lambda j: j["progress"]["step"] >= 4, "the adopted worker's step 4")

    servers[-1].kill()  # now the server and its worker crash
    os.killpg(worker, signal.SIGKILL)
    wait_for(lambda: not pid_alive(worker), 30, "the worker to die")
    servers.append(ServerProcess(data_dir, log))
    client = servers[-1].client
    done = wait_ended(client, job_id)
    assert done["status"] == "Completed", done["failure_message"]
    assert done["pid"] is None and metric_steps(client, job_id) == list(range(11))
    events = [e["message"] for e in client.get(f"/api/jobs/{job_id}/events").json()["data"]]
    assert any(f"adopted the running worker (pid {worker})" in m for m in events)
    assert any("the worker is gone; queued to resume from its last checkpoint" in m for m in events)
    assert any("resuming from the last checkpoint" in m for m in events)
    queued = wait_ended(client, queued_id)  # the queued job ran after the restarts
    assert queued["status"] == "Completed" and metric_steps(client, queued_id) == [0, 1]

    servers[-1].process.send_signal(signal.SIGTERM)  # a clean stop removes server.json
    assert servers[-1].process.wait(30) in (0, -signal.SIGTERM)
    assert not (data_dir / "server.json").exists()
