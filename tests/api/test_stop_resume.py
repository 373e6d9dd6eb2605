"""Stopping a running job (Stopping -> Stopped with a checkpoint), resuming it, and a server
shutdown in the middle: the worker checkpoints, the job goes back to the queue, and the next
server finishes it. The metrics continue across every interruption without a repeated step."""

from __future__ import annotations

from openrft.jobs.store import Store

from .helpers import job_config, metric_steps, wait_ended, wait_job


def test_stop_resume_and_server_shutdown(start_server, tmp_path, tiny_model_dir):
    served = start_server(concurrency=1)
    client = served.client
    config = job_config(tmp_path / "job", tiny_model_dir, max_steps=7, grader="slow")
    job_id = client.post("/api/jobs", json={"config": config}).json()["id"]
    wait_job(client, job_id, lambda j: j["progress"]["step"] >= 1, "step 1")

    stopping = client.post(f"/api/jobs/{job_id}/stop").json()
    assert stopping["status"] == "Stopping" and stopping["status_details"]["training"] == "Stopping"
    stopped = wait_ended(client, job_id)
    assert stopped["status"] == "Stopped" and stopped["status_details"]["training"] == "Stopped"
    at = stopped["progress"]["step"]
    checkpoints = client.get(f"/api/jobs/{job_id}/checkpoints").json()["data"]
    assert checkpoints[-1]["step"] == at and 1 <= at < 7
    assert metric_steps(client, job_id) == list(range(at + 1))

    assert client.post(f"/api/jobs/{job_id}/resume").json()["status"] == "Queued"
    wait_job(client, job_id, lambda j: j["progress"]["step"] > at, "a step after the resume")
    served.stop()  # SIGTERM to the worker: it checkpoints; the job waits for the next server
    left = Store(served.data_dir / "openrft.db").get_job(job_id)
    assert left.status.value == "Queued" and left.resume and left.pid is None

    served = start_server(concurrency=1)
    done = wait_ended(served.client, job_id)
    assert done["status"] == "Completed", done["failure_message"]
    assert metric_steps(served.client, job_id) == list(range(8))
    events = [e["message"] for e in served.client.get(f"/api/jobs/{job_id}/events").json()["data"]]
    assert any("stop requested" in m for m in events)
    assert any("server shutting down" in m for m in events)
    assert any("stopped the worker to shut down" in m for m in events)
    assert sum("resuming from the last checkpoint" in m for m in events) == 2
