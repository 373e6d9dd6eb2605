"""Server-sent events for a job's metrics: each new metrics.jsonl line as `event: metrics`, the
job as `event: status` when its status changes (and once at the start), `event: end` once
the job has ended (after its last lines). A comment line every `HEARTBEAT_S` keeps proxies
from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from openrft.api.views import job_view
from openrft.jobs.model import Job, JobNotFound
from openrft.jobs.runfiles import read_metrics
from openrft.jobs.service import JobService

POLL_S = 0.25
HEARTBEAT_S = 15.0


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def metrics_stream(
    service: JobService,
    job_id: str,
    after: int | None,
    closing: Callable[[], bool],
) -> AsyncIterator[str]:
    """The event stream of one job; returns when the job ends, is deleted, or the server
    is shutting down. Each poll (the job from SQLite, new lines from the shared metrics
    cache) runs in the threadpool: the event loop never waits on the store's lock or a file."""
    run_dir = service.run_dir(job_id)
    last_step = -1 if after is None else after

    def poll() -> tuple[Job, list[dict[str, Any]]]:
        job = service.store.get_job(job_id)  # before the file: a job's last lines precede its end
        return job, read_metrics(run_dir, None if last_step < 0 else last_step)

    job = await run_in_threadpool(service.store.get_job, job_id)
    status = job.status
    yield sse("status", job_view(job, service))
    beat = time.monotonic()
    while True:
        try:
            job, records = await run_in_threadpool(poll)
        except JobNotFound:
            yield sse("end", {"id": job_id, "deleted": True})
            return
        if job.status is not status:
            status = job.status
            yield sse("status", job_view(job, service))
        for record in records:
            step = record.get("step", 0)
            if isinstance(step, int) and step > last_step:
                last_step = step
                yield sse("metrics", record)
        if job.ended:
            yield sse("end", job_view(job, service))
            return
        if time.monotonic() - beat > HEARTBEAT_S:
            beat = time.monotonic()
            yield ": ping\n\n"
        await asyncio.sleep(POLL_S)
        if closing():
            return
