"""The job record and its lifecycle: `Job`, `JobStatus` (Bedrock's statuses) and the allowed
transitions between them, plus the job service's errors.

    job = job.moved_to(JobStatus.IN_PROGRESS, started_at=now)   # raises IllegalTransition if not
                                                                # allowed from job.status
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from openrft.errors import RFTError


class JobStatus(StrEnum):
    QUEUED = "Queued"
    IN_PROGRESS = "InProgress"
    COMPLETED = "Completed"
    FAILED = "Failed"
    STOPPING = "Stopping"
    STOPPED = "Stopped"


S = JobStatus
# Re-queueing an InProgress/Stopping job happens when its worker is gone after a server
# restart (or the server stopped it to shut down): it resumes from its last checkpoint.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.QUEUED: frozenset({S.IN_PROGRESS, S.STOPPED, S.FAILED}),
    S.IN_PROGRESS: frozenset({S.COMPLETED, S.FAILED, S.STOPPING, S.STOPPED, S.QUEUED}),
    # A worker asked to stop during its last step completes instead.
    S.STOPPING: frozenset({S.STOPPED, S.FAILED, S.COMPLETED, S.QUEUED}),
    S.STOPPED: frozenset({S.QUEUED}),
    S.FAILED: frozenset({S.QUEUED}),
    S.COMPLETED: frozenset(),
}
ENDED = frozenset({S.COMPLETED, S.FAILED, S.STOPPED})
ACTIVE = frozenset({S.IN_PROGRESS, S.STOPPING})  # a worker process exists (or should)

DETAIL_STAGES = ("validation", "dataProcessing", "training")
NOT_STARTED = {stage: "NotStarted" for stage in DETAIL_STAGES}


class JobError(RFTError):
    """A request the job service refuses; `status` is its HTTP status code."""

    status = 400

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class JobNotFound(JobError):
    status = 404


class JobConflict(JobError):
    """The job (or file) is in a state that does not allow the request."""

    status = 409


class IllegalTransition(JobConflict):
    def __init__(self, job_id: str, current: JobStatus, target: JobStatus):
        super().__init__(f"job {job_id} is {current.value}; it cannot become {target.value}")
        self.current, self.target = current, target


@dataclass(frozen=True)
class Job:
    """One fine-tuning job as the store keeps it. `config` is the resolved JobConfig as plain
    data; `extra` holds what an API facade needs to answer in its own shapes."""

    id: str
    name: str
    status: JobStatus
    config: dict[str, Any]
    source: str = "native"  # native | bedrock | openai
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    queued_at: float = field(default_factory=time.time)  # queue order: oldest first
    started_at: float | None = None
    ended_at: float | None = None
    failure_message: str | None = None
    pid: int | None = None  # the worker process while ACTIVE
    resume: bool = False  # the next start continues from the last checkpoint
    stop_reason: str | None = None  # stop | cancel | pause: why it was stopped
    status_details: dict[str, str] = field(default_factory=lambda: dict(NOT_STARTED))
    progress: dict[str, int] = field(default_factory=lambda: {"step": 0, "total_steps": 0})
    latest: dict[str, float | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    def moved_to(self, target: JobStatus, **changes: Any) -> Job:
        """This job in status `target` (with `changes`); raises IllegalTransition."""
        if target not in TRANSITIONS[self.status]:
            raise IllegalTransition(self.id, self.status, target)
        now = time.time()
        stamps: dict[str, Any] = {"updated_at": now}
        if target in ENDED:
            stamps["ended_at"] = now
        if target is S.QUEUED:
            stamps.update(queued_at=now, ended_at=None, failure_message=None, pid=None)
        return replace(self, status=target, **{**stamps, **changes})


@dataclass(frozen=True)
class Event:
    seq: int
    job_id: str
    time: float
    level: str  # info | warning | error
    message: str
    data: dict[str, Any]


@dataclass(frozen=True)
class FileRecord:
    """An uploaded file, stored as DATA_DIR/files/<id>/<filename>."""

    id: str
    filename: str
    bytes: int
    purpose: str
    created_at: float


def new_job_id() -> str:
    return f"job-{secrets.token_hex(6)}"


def parse_status(value: str, param: str) -> JobStatus:
    """A status filter from a request; JobError naming `param` and the choices otherwise."""
    try:
        return JobStatus(value)
    except ValueError as exc:
        choices = ", ".join(s.value for s in JobStatus)
        raise JobError(f"{param} {value!r} is not one of: {choices}", param) from exc


# Grader-spec fields that name files beside the grader file (python_function's `function`,
# json's `schema_file`): `jobs create` uploads them, the server resolves their file ids.
GRADER_FILE_FIELDS = ("function", "schema_file")


def rewrite_grader_files(
    spec: Any, rewrite: Callable[[str, str, str], str | None], where: str = "reward.grader"
) -> None:
    """Calls `rewrite(field path, key, value)` for every GRADER_FILE_FIELDS string in a grader
    spec, nested graders included, and stores what it returns in place (None: unchanged)."""
    items = spec.items() if isinstance(spec, dict) else enumerate(spec)
    for key, value in list(items):
        field = f"{where}.{key}"
        if isinstance(value, dict | list):
            rewrite_grader_files(value, rewrite, field)
        elif key in GRADER_FILE_FIELDS and isinstance(value, str):
            new = rewrite(field, key, value)
            if new is not None:
                spec[key] = new


def new_file_id() -> str:
    return f"file-{secrets.token_hex(8)}"
