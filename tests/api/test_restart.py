"""Restart recovery with real server processes (`python -m openrft.cli server`): SIGKILL the
server while a job runs -> the next server adopts the still-running worker; SIGKILL the
server and the worker -> the next server queues the job again and it resumes from its last
checkpoint to completion, with no step missing or repeated; a job queued behind it stays
queued across both restarts and runs after it."""

from __future__ import annotations

import os
import signal

from openrft.jobs.workers import pid_alive

from .helpers import job_config, metric_steps, wait_ended, wait_for, wait_job
from .processes import ServerProcess


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
    assert any(
        m.endswith("the worker is gone; restart 1 of 3; queued to resume from its last checkpoint")
        for m in events
    )
    assert any("resuming from the last checkpoint" in m for m in events)
    queued = wait_ended(client, queued_id)  # the queued job ran after the restarts
    assert queued["status"] == "Completed" and metric_steps(client, queued_id) == [0, 1]

    servers[-1].process.send_signal(signal.SIGTERM)  # a clean stop removes server.json
    assert servers[-1].process.wait(30) in (0, -signal.SIGTERM)
    assert not (data_dir / "server.json").exists()
