"""SQLite persistence for the job service: jobs, events (status history included) and files.

One connection shared by every thread behind a lock (sqlite3 with check_same_thread=False),
WAL mode so readers in other processes (a second server, a test) never block the writer.
The schema is versioned with `PRAGMA user_version`; `MIGRATIONS[i]` moves version i to i+1.

    store = Store(Path("~/.openrft/openrft.db"))
    job = store.transition(job_id, JobStatus.STOPPING, "stop requested")
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from openrft.jobs.model import (
    Event,
    FileRecord,
    Job,
    JobConflict,
    JobNotFound,
    JobStatus,
)

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        source TEXT NOT NULL,
        config TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        queued_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        failure_message TEXT,
        pid INTEGER,
        resume INTEGER NOT NULL DEFAULT 0,
        stop_reason TEXT,
        status_details TEXT NOT NULL,
        progress TEXT NOT NULL,
        latest TEXT NOT NULL,
        extra TEXT NOT NULL
    );
    CREATE INDEX jobs_status ON jobs (status, queued_at);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        time REAL NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX events_job ON events (job_id, seq);
    CREATE TABLE files (
        id TEXT PRIMARY KEY,
        filename TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        purpose TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
JSON_COLUMNS = ("config", "status_details", "progress", "latest", "extra")
JOB_COLUMNS = tuple(f.name for f in fields(Job))


class Store:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JobConflict(
                    f"{self.path} has schema version {version}; this openrft knows "
                    f"{SCHEMA_VERSION} at most (upgrade openrft)"
                )
            for index in range(version, SCHEMA_VERSION):
                self._db.executescript(
                    f"BEGIN; {MIGRATIONS[index]}; PRAGMA user_version = {index + 1}; COMMIT;"
                )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- jobs -------------------------------------------------------------------------------

    def add_job(self, job: Job) -> Job:
        values = _job_row(job)
        columns, marks = ", ".join(values), ", ".join("?" for _ in values)
        insert = f"INSERT INTO jobs ({columns}) VALUES ({marks})"
        with self._lock:
            self._db.execute(insert, list(values.values()))
            self._add_event(job.id, "info", f"job created ({job.status.value})", {})
        return job

    def get_job(self, job_id: str) -> Job:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id}", "id")
        return _job_from_row(row)

    def list_jobs(self, status: JobStatus | None = None) -> list[Job]:
        """Newest first."""
        query, args = "SELECT * FROM jobs", ()
        if status is not None:
            query, args = query + " WHERE status = ?", (status.value,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at DESC, id", args).fetchall()
        return [_job_from_row(row) for row in rows]

    def queued_jobs(self) -> list[Job]:
        """Queued jobs in the order they start: oldest queued_at first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE status = ? ORDER BY queued_at, created_at",
                (JobStatus.QUEUED.value,),
            ).fetchall()
        return [_job_from_row(row) for row in rows]

    def update_job(self, job_id: str, **changes: Any) -> Job:
        """Change fields other than the status (use `transition` for that)."""
        if "status" in changes:
            raise ValueError("use transition() to change a job's status")
        return self.modify(job_id, lambda job: replace(job, updated_at=time.time(), **changes))

    def transition(
        self,
        job_id: str,
        target: JobStatus,
        message: str = "",
        level: str = "info",
        **changes: Any,
    ) -> Job:
        """Move a job to `target` (IllegalTransition if not allowed), with a status event."""

        def move(job: Job) -> Job:
            moved = job.moved_to(target, **changes)
            text = f"status {job.status.value} -> {target.value}" + (
                f": {message}" if message else ""
            )
            data = {"from": job.status.value, "to": target.value}
            self._add_event(job_id, level, text, data)
            return moved

        return self.modify(job_id, move)

    def modify(self, job_id: str, change: Callable[[Job], Job]) -> Job:
        """Read, change and write one job atomically."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                job = change(self.get_job(job_id))
                values = _job_row(job)
                sets = ", ".join(f"{name} = ?" for name in values)
                self._db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*values.values(), job_id])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return job

    def delete_job(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            self._db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))

    # -- events -----------------------------------------------------------------------------

    def add_event(
        self, job_id: str, message: str, level: str = "info", data: dict[str, Any] | None = None
    ) -> None:
        with self._lock:
            self._add_event(job_id, level, message, data or {})

    def _add_event(self, job_id: str, level: str, message: str, data: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO events (job_id, time, level, message, data) VALUES (?, ?, ?, ?, ?)",
            (job_id, time.time(), level, message, json.dumps(data)),
        )

    def list_events(self, job_id: str, after: int = 0) -> list[Event]:
        """Oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, after)
            ).fetchall()
        return [
            Event(r["seq"], r["job_id"], r["time"], r["level"], r["message"], json.loads(r["data"]))
            for r in rows
        ]

    # -- files ------------------------------------------------------------------------------

    def add_file(self, record: FileRecord) -> FileRecord:
        with self._lock:
            self._db.execute(
                "INSERT INTO files (id, filename, bytes, purpose, created_at) VALUES (?,?,?,?,?)",
                (record.id, record.filename, record.bytes, record.purpose, record.created_at),
            )
        return record

    def get_file(self, file_id: str) -> FileRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no file {file_id}", "file_id")
        return FileRecord(**dict(row))

    def list_files(self) -> list[FileRecord]:
        """Newest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM files ORDER BY created_at DESC").fetchall()
        return [FileRecord(**dict(row)) for row in rows]


def _job_row(job: Job) -> dict[str, Any]:
    values: dict[str, Any] = {name: getattr(job, name) for name in JOB_COLUMNS}
    values["status"] = job.status.value
    values["resume"] = int(job.resume)
    for name in JSON_COLUMNS:
        values[name] = json.dumps(values[name])
    return values


def _job_from_row(row: sqlite3.Row) -> Job:
    values = {name: row[name] for name in JOB_COLUMNS}
    for name in JSON_COLUMNS:
        values[name] = json.loads(values[name])
    values["status"] = JobStatus(values["status"])
    values["resume"] = bool(values["resume"])
    return Job(**values)
