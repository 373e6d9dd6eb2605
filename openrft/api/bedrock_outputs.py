"""A Bedrock job's outputs, written under its `outputDataConfig.s3Uri` when the job ends, in
the layout Bedrock uses for a model customization job (docs/aws.md, "Outputs"):

    <s3Uri>/model-customization-job-<job-id>/
        training_artifacts/step_wise_training_metrics.csv     one row per training step
        training_artifacts/metrics.jsonl                      openrft's own metric lines
        validation_artifacts/post_fine_tuning_validation/validation_metrics.csv
        model/...                                             final/: the adapter or weights
        report/report.md, summary.json, *.png                 the run's report

A Completed job writes all of it; a Stopped or Failed one writes what its run directory has.
`OutputWriter` does the writing in a background thread. Until a job's outputs are written
the Bedrock API shows it as still running (openrft.api.bedrock_shapes), so a client that
polls for Completed finds its outputs there.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from openrft.api.s3 import S3, S3Error, S3Uri
from openrft.jobs import runfiles
from openrft.jobs.model import Job, JobNotFound
from openrft.jobs.service import JobService

log = logging.getLogger(__name__)
OUTPUT = "s3Output"  # Job.extra: the S3 URI the job's outputs go under
WRITTEN = "s3OutputWritten"  # Job.extra: {"endedAt", "objects"} or {"endedAt", "error"}
REPORT_FILES = ("report.md", "summary.json")
# Bedrock's column name, then the metrics.jsonl key it is taken from.
TRAINING_COLUMNS = (
    ("step_number", "step"),
    ("epoch_number", "epoch"),
    ("training_loss", "loss/total"),
    ("training_reward_mean", "reward/mean"),
    ("training_reward_std", "reward/std"),
    ("training_reward_min", "reward/min"),
    ("training_reward_max", "reward/max"),
    ("episode_length_mean", "completion/length_mean"),
    ("policy_entropy", "policy/entropy"),
    ("grad_norm", "optim/grad_norm"),
    ("learning_rate", "optim/lr"),
    ("reward_error_rate", "reward/error_rate"),
)
VALIDATION_COLUMNS = (
    ("step_number", "step"),
    ("epoch_number", "epoch"),
    ("validation_reward_mean", "val/reward/mean"),
    ("validation_reward_std", "val/reward/std"),
    ("validation_reward_min", "val/reward/min"),
    ("validation_reward_max", "val/reward/max"),
    ("validation_episode_length_mean", "val/completion/length_mean"),
)


def job_prefix(output: str, job_id: str) -> S3Uri:
    return S3Uri.parse(output).under(f"model-customization-job-{job_id}")


def _record(job: Job) -> dict[str, Any] | None:
    """What was written for the job's current end (None: nothing yet, or it has not ended)."""
    if OUTPUT not in job.extra or not job.ended:
        return None
    record = job.extra.get(WRITTEN) or {}
    return record if record.get("endedAt") == job.ended_at else None


def outputs_pending(job: Job) -> bool:
    """The job has ended and its outputs are still to be written (a job resumed and ended
    again writes them again)."""
    return OUTPUT in job.extra and job.ended and _record(job) is None


def output_error(job: Job) -> str | None:
    """Why the outputs of the job's current end could not be written, if they could not."""
    return (_record(job) or {}).get("error")


def metrics_csv(
    records: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], about: str
) -> str:
    """One row per step whose line has the metric `about` (training or validation reward)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([name for name, _ in columns])
    for record in records:
        if record.get(about) is not None:
            writer.writerow(["" if record.get(key) is None else record[key] for _, key in columns])
    return out.getvalue()


def by_step(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metric lines merged per step, in step order (a step's training and validation
    numbers may come on separate lines; a resumed run repeats the steps after its checkpoint,
    and the later line wins)."""
    merged: dict[int, dict[str, Any]] = {}
    for record in records:
        merged.setdefault(int(record.get("step", 0)), {}).update(record)
    return [merged[step] for step in sorted(merged)]


def write_outputs(s3: S3, run_dir: Path, prefix: S3Uri) -> int:
    """Everything the run directory has, under `prefix`; the number of objects written."""
    written = 0
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        steps = by_step(runfiles.read_metrics(run_dir))
        training = metrics_csv(steps, TRAINING_COLUMNS, "reward/mean").encode()
        validation = metrics_csv(steps, VALIDATION_COLUMNS, "val/reward/mean").encode()
        s3.put_bytes(training, prefix.under("training_artifacts/step_wise_training_metrics.csv"))
        s3.put_file(metrics, prefix.under("training_artifacts/metrics.jsonl"))
        validation_key = "validation_artifacts/post_fine_tuning_validation/validation_metrics.csv"
        s3.put_bytes(validation, prefix.under(validation_key))
        written += 3
    final = run_dir / "final"
    for path in sorted(final.rglob("*")) if final.is_dir() else []:
        if path.is_file():
            s3.put_file(path, prefix.under("model", path.relative_to(final).as_posix()))
            written += 1
    report = [run_dir / name for name in REPORT_FILES] + sorted(run_dir.glob("*.png"))
    for path in report:
        if path.is_file():
            s3.put_file(path, prefix.under("report", path.name))
            written += 1
    return written


class OutputWriter:
    """Writes the outputs of jobs with an S3 output once each time they end, in a thread.

    Jobs are watched from their creation (`watch`) or, after a restart, from the store; one
    interrupted by a shutdown is written on the next start."""

    def __init__(self, s3: S3, service: JobService, poll_s: float = 0.5):
        self.s3, self.service, self.poll_s = s3, service, poll_s
        self.watched: set[str] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        for job in self.service.store.list_jobs():
            if OUTPUT in job.extra:
                self.watch(job.id)
        self._thread = threading.Thread(target=self._loop, name="openrft-s3-output", daemon=True)
        self._thread.start()

    def watch(self, job_id: str) -> None:
        with self._lock:
            self.watched.add(job_id)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stops watching; an upload still running is cut off and redone on the next start."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._closing.wait(self.poll_s):
            try:
                self.tick()
            except Exception:  # a store hiccup must not end the writing of later jobs
                log.exception("writing job outputs to S3 failed")

    def tick(self) -> None:
        with self._lock:
            job_ids = sorted(self.watched)
        for job_id in job_ids:
            try:
                job = self.service.store.get_job(job_id)
            except JobNotFound:  # deleted
                with self._lock:
                    self.watched.discard(job_id)
                continue
            if outputs_pending(job) and not self._closing.is_set():
                self.write(job)

    def write(self, job: Job) -> None:
        prefix = job_prefix(job.extra[OUTPUT], job.id)
        record: dict[str, Any] = {"endedAt": job.ended_at}
        try:
            record["objects"] = write_outputs(self.s3, self.service.run_dir(job.id), prefix)
            self.service.store.add_event(
                job.id, f"outputs written to {prefix}/ ({record['objects']} objects)"
            )
        except (S3Error, OSError) as exc:
            record["error"] = f"the job's outputs could not be written to {prefix}/: {exc}"
            self.service.store.add_event(job.id, record["error"], "error")
        with contextlib.suppress(JobNotFound):  # deleted meanwhile
            self.service.store.modify(
                job.id, lambda fresh: replace(fresh, extra={**fresh.extra, WRITTEN: record})
            )


def settle_unwritable(service: JobService) -> None:
    """Jobs whose outputs wait for S3 on a server started without it: recorded as failed to
    write, rather than shown as running for ever."""
    for job in service.store.list_jobs():
        if outputs_pending(job):
            error = f"the job's outputs could not be written to {job.extra[OUTPUT]}: " + (
                "this server was started without --s3-endpoint-url"
            )
            record = {"endedAt": job.ended_at, "error": error}
            service.store.modify(
                job.id, lambda fresh, r=record: replace(fresh, extra={**fresh.extra, WRITTEN: r})
            )
