"""A fine-tuning job's `result_files` and `trained_tokens` in the OpenAI facade, from the
run's metrics.jsonl.

- `trained_tokens`: the sum of `train/tokens_trained` over the run's steps once the job has
  succeeded, failed or been cancelled; null while it is queued, running or paused (OpenAI's
  "null while the job is running").
- `result_files`: a succeeded job's per-step metrics as a CSV file object (purpose
  `fine-tune-results`, file name `step_metrics.csv`, as OpenAI names its result file),
  downloadable through `/v1/files/{id}/content`. It is registered the first time the finished
  job is read, under a file id derived from the job id, so it is made once.

    files, tokens = job_results(job, service, "succeeded")   # (["file-..."], 1234)
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sqlite3
import threading
import time
from dataclasses import replace
from typing import Any

from openrft.jobs import runfiles
from openrft.jobs.model import FileRecord, Job, JobNotFound, JobStatus
from openrft.jobs.service import JobService
from openrft.metrics import names

RESULTS_PURPOSE = "fine-tune-results"
RESULTS_NAME = "step_metrics.csv"
FINISHED = ("succeeded", "failed", "cancelled")  # OpenAI statuses with a known token count
# The first columns, named as OpenAI's result files and checkpoint metrics name them; every
# other metric follows under openrft's own name (docs/outputs.md lists them).
PLAIN_COLUMNS = {
    names.STEP: "step",
    names.LOSS: "train_loss",
    names.REWARD_MEAN: "train_mean_reward",
    names.VAL_REWARD_MEAN: "full_valid_mean_reward",
    names.TOKENS_TRAINED: "tokens_trained",
}
_registering = threading.Lock()  # concurrent GETs of one finished job register one file


def job_results(job: Job, service: JobService, status: str) -> tuple[list[str], int | None]:
    """(result_files, trained_tokens) for a job whose OpenAI status is `status`."""
    if status not in FINISHED:
        return [], None
    if job.status is JobStatus.COMPLETED and "result_file" in job.extra:
        return [job.extra["result_file"]], job.extra.get("trained_tokens")
    steps = step_records(runfiles.read_metrics(service.run_dir(job.id)))
    tokens = trained_tokens(steps)
    if job.status is not JobStatus.COMPLETED:  # a failed run may be retried: nothing cached
        return [], tokens
    file_id = _register(job, service, steps)
    # A completed job never changes again, so its answer is kept with it.
    cached = {"result_file": file_id, "trained_tokens": tokens}
    service.store.modify(job.id, lambda j: replace(j, extra={**j.extra, **cached}))
    return [file_id], tokens


def step_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per step, in step order: lines of one step are merged, and a step written
    again after a resume replaces the earlier values."""
    merged: dict[int, dict[str, Any]] = {}
    for record in records:
        step = record.get(names.STEP)
        if isinstance(step, int):
            merged.setdefault(step, {}).update(record)
    return [merged[step] for step in sorted(merged)]


def trained_tokens(steps: list[dict[str, Any]]) -> int | None:
    counts = [s[names.TOKENS_TRAINED] for s in steps if names.TOKENS_TRAINED in s]
    return int(sum(counts)) if counts else None


def metrics_csv(steps: list[dict[str, Any]]) -> str:
    """The steps as CSV: the plain columns first, then the other metrics in first-seen order;
    a metric a step did not log (or logged as null) is an empty cell."""
    keys = [key for key in PLAIN_COLUMNS if any(key in s for s in steps) or key == names.STEP]
    for step in steps:
        keys += [key for key in step if key not in keys and key not in PLAIN_COLUMNS]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([PLAIN_COLUMNS.get(key, key) for key in keys])
    for step in steps:
        writer.writerow([_cell(step.get(key)) for key in keys])
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def result_file_id(job_id: str) -> str:
    return "file-" + job_id.removeprefix("job-")


def _register(job: Job, service: JobService, steps: list[dict[str, Any]]) -> str:
    file_id = result_file_id(job.id)
    with _registering:
        try:
            service.store.get_file(file_id)
            return file_id  # registered already (by an earlier read, or before a restart)
        except JobNotFound:
            pass
        data = metrics_csv(steps).encode()
        directory = service.data_dir.file_dir(file_id)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / RESULTS_NAME).write_bytes(data)
        record = FileRecord(file_id, RESULTS_NAME, len(data), RESULTS_PURPOSE, time.time())
        # Another server on this data directory may have been first.
        with contextlib.suppress(sqlite3.IntegrityError):
            service.store.add_file(record)
    return file_id
