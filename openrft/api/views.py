"""The native API's JSON shapes (docs/api.md, "Native API"): jobs, files, events, times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Request

from openrft.jobs.model import Event, FileRecord, Job
from openrft.jobs.service import JobService


def service_of(request: Request) -> JobService:
    return request.app.state.service


def iso(timestamp: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds, e.g. 2026-11-21T15:00:00.123Z."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def job_view(job: Job, service: JobService) -> dict[str, Any]:
    return {
        "id": job.id,
        "name": job.name,
        "status": job.status.value,
        "status_details": job.status_details,
        "failure_message": job.failure_message,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "ended_at": iso(job.ended_at),
        "updated_at": iso(job.updated_at),
        "progress": job.progress,
        "latest": job.latest,
        "config": job.config,
        "run_dir": str(service.run_dir(job.id)),
        "source": job.source,
        "pid": job.pid,
        "stop_reason": job.stop_reason,
    }


def file_view(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "filename": record.filename,
        "bytes": record.bytes,
        "purpose": record.purpose,
        "created_at": iso(record.created_at),
    }


def event_view(event: Event) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "time": iso(event.time),
        "level": event.level,
        "message": event.message,
        "data": event.data,
    }
