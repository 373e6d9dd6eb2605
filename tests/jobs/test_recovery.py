"""Restart recovery decisions, without training: jobs a previous server left InProgress or
Stopping are settled from their run's status.json, re-queued to resume, or adopted when their
worker still runs (a real process whose command line names the job's run directory)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from openrft.jobs.model import Job, JobStatus, new_job_id
from openrft.jobs.runner import Runner
from openrft.jobs.store import Store
from openrft.jobs.workers import is_worker_of, pid_alive
from openrft.train.status import write_status

S = JobStatus


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def left_active(
    store: Store, jobs_dir, status: JobStatus, stage: str | None, pid: int, job_id: str = ""
) -> Job:
    """A job as a killed server leaves it: active, with the pid of its worker."""
    job = store.add_job(Job(id=job_id or new_job_id(), name="t", status=S.QUEUED, config={}))
    store.transition(job.id, S.IN_PROGRESS, pid=pid, resume=True)
    if status is S.STOPPING:
        store.transition(job.id, S.STOPPING, stop_reason="stop")
    (jobs_dir / job.id).mkdir(parents=True)
    if stage:
        write_status(jobs_dir / job.id, stage, 3, 4, "DatasetError: d.jsonl:2: id: bad")
    return job


@pytest.mark.parametrize(
    ("status", "stage", "expected"),
    [
        (S.IN_PROGRESS, None, S.QUEUED),
        (S.IN_PROGRESS, "training", S.QUEUED),
        (S.IN_PROGRESS, "completed", S.COMPLETED),
        (S.IN_PROGRESS, "failed", S.FAILED),
        (S.IN_PROGRESS, "stopped", S.QUEUED),  # the old server's shutdown stopped it
        (S.STOPPING, "training", S.STOPPED),  # died before it could stop: as asked
        (S.STOPPING, "stopped", S.STOPPED),  # stopped as asked while no server watched
    ],
)
def test_jobs_whose_worker_is_gone(tmp_path, status, stage, expected):
    store = Store(tmp_path / "db.sqlite")
    job = left_active(store, tmp_path / "jobs", status, stage, dead_pid())
    Runner(store, tmp_path / "jobs").recover()
    recovered = store.get_job(job.id)
    assert recovered.status is expected and recovered.pid is None
    if expected is S.QUEUED:
        assert recovered.resume and recovered.queued_at == job.queued_at  # keeps its place
        assert "resume from its last checkpoint" in store.list_events(job.id)[-1].message
    if expected is S.FAILED:
        assert recovered.failure_message == "DatasetError: d.jsonl:2: id: bad"
    # A worker that died mid-run counts against jobs.max_restarts; a shutdown's stop does not.
    died = stage in (None, "training") and expected is S.QUEUED
    assert recovered.extra.get("restarts", 0) == died


def test_a_dead_worker_with_no_restarts_left_fails_the_job(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    job = store.add_job(
        Job(id=new_job_id(), name="t", status=S.QUEUED, config={"jobs": {"max_restarts": 1}})
    )
    store.transition(job.id, S.IN_PROGRESS, pid=dead_pid(), resume=True)
    store.update_job(job.id, extra={"restarts": 1})
    (tmp_path / "jobs" / job.id).mkdir(parents=True)
    write_status(tmp_path / "jobs" / job.id, "training", 2, 4)
    Runner(store, tmp_path / "jobs").recover()
    failed = store.get_job(job.id)
    assert failed.status is S.FAILED
    assert failed.failure_message == (
        "server restarted and the worker is gone; after 1 restart (jobs.max_restarts = 1)"
    )


def test_a_live_worker_is_adopted_and_a_stranger_is_not(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    jobs_dir = tmp_path / "jobs"
    job_id = new_job_id()
    command = [sys.executable, "-c", "import time; time.sleep(60)", "openrft", "train",
               "--resume", str(jobs_dir / job_id)]  # fmt: skip
    worker = subprocess.Popen(command)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert is_worker_of(worker.pid, jobs_dir / job_id)
        assert not is_worker_of(stranger.pid, jobs_dir / job_id)
        left_active(store, jobs_dir, S.IN_PROGRESS, "training", worker.pid, job_id)
        other = left_active(store, jobs_dir, S.IN_PROGRESS, "training", stranger.pid)
        runner = Runner(store, jobs_dir)
        runner.recover()
        assert set(runner.workers) == {job_id}
        assert "adopted" in store.list_events(job_id)[-1].message
        assert store.get_job(other.id).status is S.QUEUED  # pid reused by something else

        write_status(jobs_dir / job_id, "completed", 4, 4)
        worker.kill()
        worker.wait()
        assert not pid_alive(worker.pid)
        runner.watch_all()
        assert store.get_job(job_id).status is S.COMPLETED and runner.workers == {}
    finally:
        for process in (worker, stranger):
            process.kill()
            process.wait()
