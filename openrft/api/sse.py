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

from openrft.api.views import job_view
from openrft.jobs.model import JobNotFound
from openrft.jobs.runfiles import MetricsTail
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
    is shutting down."""
    tail = MetricsTail(service.run_dir(job_id) / "metrics.jsonl")
    last_step = -1 if after is None else after
    job = service.store.get_job(job_id)
    status = job.status
    yield sse("status", job_view(job, service))
    beat = time.monotonic()
    while True:
        ended = job.ended  # read before the file: a job's last lines precede its end
        for record in tail.read_new():
            step = record.get("step", 0)
            if isinstance(step, int) and step > last_step:
                last_step = step
                yield sse("metrics", record)
        if ended:
            yield sse("end", job_view(job, service))
            return
        await asyncio.sleep(POLL_S)
        if closing():
            return
        try:
            job = service.store.get_job(job_id)
        except JobNotFound:
            yield sse("end", {"id": job_id, "deleted": True})
            return
        if job.status is not status:
            status = job.status
            yield sse("status", job_view(job, service))
        if time.monotonic() - beat > HEARTBEAT_S:
            beat = time.monotonic()
            yield ": ping\n\n"
