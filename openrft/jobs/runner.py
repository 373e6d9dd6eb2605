"""The scheduler: a background thread that starts queued jobs as worker subprocesses (at most
`concurrency` at once), watches them, and records what happens.

Every `poll_s` (or at once after `wake()`) it reads each worker's RUN_DIR/status.json and new
metrics.jsonl lines into the job (statusDetails, progress, latest metrics), maps exit codes to
statuses (0 Completed, 75 Stopped, else Failed with the cause) and starts queued jobs oldest
first. Stop sends the worker SIGTERM (it finishes the step, checkpoints and exits 75);
a stopped or failed job resumes with `openrft train --resume`.

Restarts lose nothing. On start, a job left InProgress/Stopping whose worker still runs (pid
alive and its command line is that job's `openrft train`) is adopted and watched through
status.json; one whose worker is gone is settled from status.json when the run had ended
(completed, failed, or stopped as asked), else queued again, ahead of the queue, to resume
from its last checkpoint. On shutdown the server sends SIGTERM
to its workers and waits up to `shutdown_grace_s` for them to checkpoint; their jobs go back to
Queued and resume on the next start. A worker slower than that keeps running on its own,
checkpoints, exits; the next start finds it (alive: adopted; gone: resumed).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from openrft.config import JobsConfig
from openrft.jobs import runfiles
from openrft.jobs.model import ACTIVE, Job, JobConflict, JobStatus
from openrft.jobs.store import Store
from openrft.jobs.workers import (
    EXIT_COMPLETED,
    EXIT_STOPPED,
    Worker,
    failure_message,
    is_worker_of,
    killed_by,
    memory_note,
    signal_worker,
    spawn_worker,
    worker_command,
)
from openrft.train.checkpoint import list_checkpoints
from openrft.train.status import read_status

log = logging.getLogger(__name__)
S = JobStatus
RESTARTS = "restarts"  # Job.extra key: automatic restarts since the job was last started by hand


def max_restarts(job: Job) -> int:
    """The job's jobs.max_restarts (validated when the job was created)."""
    section = job.config.get("jobs")
    value = section.get("max_restarts") if isinstance(section, dict) else None
    return int(value) if isinstance(value, int) else JobsConfig.max_restarts


class Runner:
    def __init__(
        self,
        store: Store,
        jobs_dir: Path,
        concurrency: int = 1,
        poll_s: float = 0.5,
        shutdown_grace_s: float = 30.0,
        python: str = sys.executable,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.store, self.jobs_dir, self.concurrency = store, jobs_dir, concurrency
        self.poll_s, self.shutdown_grace_s, self.python = poll_s, shutdown_grace_s, python
        self.workers: dict[str, Worker] = {}
        self.lock = threading.RLock()  # serialises starts, stops, resumes and settling
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._shutting_down = False
        self._thread: threading.Thread | None = None

    def run_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="openrft-runner", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def shutdown(self, grace_s: float | None = None) -> None:
        """Stop scheduling, SIGTERM the workers and wait (up to the grace) for them to
        checkpoint; their jobs are queued to resume on the next start."""
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self.lock:
            self._shutting_down = True
            for worker in self.workers.values():
                self.store.add_event(
                    worker.job_id, "server shutting down: SIGTERM sent to the worker"
                )
                signal_worker(worker.pid)
        deadline = time.monotonic() + (self.shutdown_grace_s if grace_s is None else grace_s)
        while self.workers and time.monotonic() < deadline:
            self.watch_all()
            time.sleep(0.1)
        for worker in list(self.workers.values()):
            self.store.add_event(
                worker.job_id,
                f"the worker (pid {worker.pid}) still runs after the shutdown grace; "
                "the next server start adopts it or resumes the job",
                "warning",
            )

    def _loop(self) -> None:
        while not self._closing.is_set():
            try:
                self.tick()
            except Exception:  # the scheduler must outlive any one bad job
                log.exception("runner tick failed")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def tick(self) -> None:
        self.watch_all()
        self.start_queued()

    # -- requests from the API --------------------------------------------------------------

    def stop(self, job_id: str, reason: str = "stop") -> Job:
        """Queued -> Stopped at once; InProgress -> Stopping and SIGTERM to its worker."""
        with self.lock:
            job = self.store.get_job(job_id)
            if job.status is S.STOPPING:
                return job
            if job.status is S.QUEUED:
                return self.store.transition(
                    job_id, S.STOPPED, f"{reason} requested while queued", stop_reason=reason
                )
            if job.status is not S.IN_PROGRESS:
                raise JobConflict(f"job {job_id} has ended ({job.status.value}); nothing to stop")
            details = {
                k: "Stopping" if v == "InProgress" else v for k, v in job.status_details.items()
            }
            job = self.store.transition(
                job_id,
                S.STOPPING,
                f"{reason} requested; SIGTERM sent to the worker",
                stop_reason=reason,
                status_details=details,
            )
            if job.pid is not None:
                signal_worker(job.pid)
        self.wake()
        return job

    def resume(self, job_id: str) -> Job:
        """A Stopped or Failed job is queued again; it continues from its last checkpoint."""
        with self.lock:
            job = self.store.get_job(job_id)
            if job.status not in (S.STOPPED, S.FAILED):
                raise JobConflict(
                    f"job {job_id} is {job.status.value}; only Stopped or Failed jobs resume"
                )
            job = self.store.transition(
                job_id,
                S.QUEUED,
                "resume requested",
                stop_reason=None,
                extra={**job.extra, RESTARTS: 0},  # a resumed job has its restarts again
            )
        self.wake()
        return job

    # -- scheduling -------------------------------------------------------------------------

    def start_queued(self) -> None:
        with self.lock:
            for job in self.store.queued_jobs():
                if len(self.workers) >= self.concurrency or self._closing.is_set():
                    return
                self._start(job)

    def _start(self, job: Job) -> None:
        run_dir = self.run_dir(job.id)
        command = worker_command(run_dir, job.resume, self.python)
        how = "resuming from the last checkpoint" if job.resume else "starting"
        try:
            worker = spawn_worker(job.id, run_dir, command)
        except OSError as exc:
            self.store.transition(job.id, S.FAILED, level="error", failure_message=str(exc))
            return
        self.workers[job.id] = worker
        self.store.transition(
            job.id,
            S.IN_PROGRESS,
            f"{how}: worker pid {worker.pid}",
            pid=worker.pid,
            resume=True,
            started_at=job.started_at or time.time(),
        )

    # -- watching ---------------------------------------------------------------------------

    def watch_all(self) -> None:
        with self.lock:
            for worker in list(self.workers.values()):
                self._watch(worker)

    def _watch(self, worker: Worker) -> None:
        worker.sample_memory()
        returncode = worker.poll()
        job = self._observe(worker)
        if returncode is None:
            return
        del self.workers[worker.job_id]
        if worker.process is None:
            self._settle_without_code(job, "its adopted worker is gone", worker.peak_rss)
        else:
            self._settle(job, returncode, worker.peak_rss)

    def _observe(self, worker: Worker) -> Job:
        """Copy the worker's status.json and new metrics lines into the job."""
        job = self.store.get_job(worker.job_id)
        status = read_status(worker.run_dir) or {}
        stage = status.get("stage")
        records = worker.metrics.read_new()
        changes: dict[str, object] = {}
        if stage and stage != worker.stage and stage in runfiles.STAGE_DETAIL:
            worker.stage = stage
            message = status.get("message") or ""
            self.store.add_event(job.id, f"stage {stage}" + (f": {message}" if message else ""))
        if stage in runfiles.STAGE_DETAIL or stage == "completed":
            details = runfiles.status_details(stage, job.status_details, job.status is S.STOPPING)
            if details != job.status_details:
                changes["status_details"] = details
        step = max([int(status.get("step") or 0)] + [int(r.get("step", 0)) for r in records])
        total = int(status.get("total_steps") or job.progress.get("total_steps", 0))
        progress = {"step": max(step, job.progress.get("step", 0)), "total_steps": total}
        if progress != job.progress:
            changes["progress"] = progress
        if records:
            changes["latest"] = runfiles.update_latest(job.latest, records)
        return self.store.update_job(job.id, **changes) if changes else job

    def _settle(self, job: Job, returncode: int, peak_rss: int = 0) -> None:
        """Record how a worker this server started has ended."""
        self.store.add_event(job.id, f"worker exited with code {returncode}")
        stopped = returncode == EXIT_STOPPED or returncode == -signal.SIGTERM
        killed = killed_by(returncode)
        if returncode == EXIT_COMPLETED:
            self._complete(job)
        elif stopped and job.status is S.STOPPING:
            self._end(job, S.STOPPED, "the worker checkpointed and exited")
        elif stopped and self._shutting_down:
            self._requeue(job, "the server stopped the worker to shut down")
        elif stopped:
            self._end(job, S.STOPPED, "the worker was stopped by a signal from outside the server")
        elif killed is not None and job.status is S.STOPPING:
            self._end(job, S.STOPPED, f"the worker was killed by {killed.name} while stopping")
        elif killed is not None:
            why = f"the worker was killed by {killed.name}"
            self._restart_or_fail(job, why, peak_rss, returncode)
        else:
            self._fail(job, failure_message(returncode, self.run_dir(job.id)))

    def _restart_or_fail(
        self, job: Job, why: str, peak_rss: int, returncode: int | None = None
    ) -> None:
        """A worker that died from outside (the OOM killer, a lost node, a native crash, a
        machine that went down with the server) is resumed from the run's last checkpoint,
        up to `jobs.max_restarts` times; then the job fails, naming the cause. A worker this
        server started is started again at once, the job staying InProgress; one found gone
        (adopted, or at server start) is queued ahead of the others."""
        run_dir = self.run_dir(job.id)
        restarts, limit = int(job.extra.get(RESTARTS, 0)), max_restarts(job)
        cause = f"{why}; " + memory_note(peak_rss) if peak_rss else why
        if restarts >= limit:
            tries = f"after {restarts} restart{'s' * (restarts != 1)} " if restarts else ""
            message = f"{cause}; {tries}(jobs.max_restarts = {limit})"
            tail = failure_message(returncode, run_dir).partition("\n")[2]
            self._fail(job, message + (f"\n{tail}" if tail else ""))
            return
        counted = {**job.extra, RESTARTS: restarts + 1}
        step = f"restart {restarts + 1} of {limit}"
        if returncode is None or job.status is not S.IN_PROGRESS:
            self._requeue(job, f"{cause}; {step}", extra=counted)
            return
        checkpoints = list_checkpoints(run_dir)
        where = f"checkpoints/{checkpoints[-1].name}" if checkpoints else "the start"
        try:
            worker = spawn_worker(job.id, run_dir, worker_command(run_dir, True, self.python))
        except OSError as exc:
            self._fail(job, f"{cause}; restarting it failed: {exc}")
            return
        self.workers[job.id] = worker
        self.store.add_event(
            job.id,
            f"{cause}; {step}: resuming from its last checkpoint ({where}), worker pid "
            f"{worker.pid}",
            "warning",
        )
        self.store.update_job(job.id, pid=worker.pid, resume=True, extra=counted)

    def _settle_without_code(self, job: Job, why: str, peak_rss: int = 0) -> None:
        """Record how a worker ended when there is no exit code (adopted, or found gone on
        start): from the run's status.json. One that died mid-run counts as a restart."""
        stage = (read_status(self.run_dir(job.id)) or {}).get("stage")
        if stage == "completed":
            self._complete(job)
        elif stage == "failed":
            self._fail(job, failure_message(None, self.run_dir(job.id)))
        elif stage == "stopped" and job.status is S.STOPPING:
            self._end(job, S.STOPPED, f"{why}; it had checkpointed and stopped as asked")
        elif stage == "stopped":  # the server that shut down stopped it
            self._requeue(job, why)
        elif job.status is S.STOPPING:
            self._end(job, S.STOPPED, f"{why}; it died while stopping")
        else:
            self._restart_or_fail(job, why, peak_rss)

    def _complete(self, job: Job) -> None:
        details = dict.fromkeys(job.status_details, "Completed")
        self.store.transition(job.id, S.COMPLETED, pid=None, status_details=details)

    def _end(self, job: Job, status: JobStatus, message: str) -> None:
        details = runfiles.ended_details(job.status_details, status.value)
        self.store.transition(job.id, status, message, pid=None, status_details=details)

    def _fail(self, job: Job, message: str) -> None:
        details = runfiles.ended_details(job.status_details, "Failed")
        self.store.transition(
            job.id,
            S.FAILED,
            message,
            level="error",
            pid=None,
            failure_message=message,
            status_details=details,
        )

    def _requeue(self, job: Job, why: str, **changes: Any) -> None:
        """Back to the queue, ahead of jobs queued after it had started."""
        self.store.transition(
            job.id,
            S.QUEUED,
            f"{why}; queued to resume from its last checkpoint",
            level="warning",
            resume=True,
            queued_at=job.queued_at,
            **changes,
        )

    # -- restart recovery -------------------------------------------------------------------

    def recover(self) -> None:
        """Adopt the live workers of jobs a previous server left active; settle or re-queue
        the rest."""
        with self.lock:
            for job in self.store.list_jobs():
                if job.status not in ACTIVE or job.id in self.workers:
                    continue
                run_dir = self.run_dir(job.id)
                if job.pid is not None and is_worker_of(job.pid, run_dir):
                    self.workers[job.id] = Worker(job.id, job.pid, run_dir, None)
                    self.store.add_event(
                        job.id, f"server restarted: adopted the running worker (pid {job.pid})"
                    )
                else:
                    self._settle_without_code(job, "server restarted and the worker is gone")
