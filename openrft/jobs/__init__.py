"""The job service: a SQLite job store, a scheduler that runs each job in an `openrft train`
worker subprocess, and the job lifecycle (Bedrock's statuses). The HTTP API on top of it is
`openrft.api`; the layout of its data directory is in docs/api.md.
"""

from openrft.jobs.model import (
    ACTIVE,
    ENDED,
    Event,
    FileRecord,
    IllegalTransition,
    Job,
    JobConflict,
    JobError,
    JobNotFound,
    JobStatus,
)
from openrft.jobs.runner import Runner
from openrft.jobs.service import DataDir, JobService, default_data_dir
from openrft.jobs.store import Store

__all__ = [
    "ACTIVE",
    "ENDED",
    "DataDir",
    "Event",
    "FileRecord",
    "IllegalTransition",
    "Job",
    "JobConflict",
    "JobError",
    "JobNotFound",
    "JobService",
    "JobStatus",
    "Runner",
    "Store",
    "default_data_dir",
]
