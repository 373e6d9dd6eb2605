"""The SQLite store: schema versioning, WAL, jobs with their status history, files."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from openrft.jobs.model import (
    FileRecord,
    IllegalTransition,
    Job,
    JobConflict,
    JobNotFound,
    JobStatus,
    new_file_id,
    new_job_id,
)
from openrft.jobs.store import SCHEMA_VERSION, Store

S = JobStatus


def new_job(store: Store, name: str = "t") -> Job:
    return store.add_job(Job(id=new_job_id(), name=name, status=S.QUEUED, config={"a": 1}))


def test_schema_version_and_wal(tmp_path):
    Store(tmp_path / "db.sqlite").close()
    raw = sqlite3.connect(tmp_path / "db.sqlite")
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"jobs", "events", "files"} <= tables
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.commit()
    with pytest.raises(JobConflict, match="schema version"):
        Store(tmp_path / "db.sqlite")


def test_jobs_round_trip_and_persist(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    first, second = new_job(store, "first"), new_job(store, "second")
    store.update_job(first.id, latest={"reward/mean": 0.5}, progress={"step": 2, "total_steps": 4})
    store.close()
    store = Store(tmp_path / "db.sqlite")
    loaded = store.get_job(first.id)
    assert loaded.latest == {"reward/mean": 0.5} and loaded.config == {"a": 1}
    assert [j.id for j in store.list_jobs()] == [second.id, first.id]  # newest first
    assert [j.id for j in store.queued_jobs()] == [first.id, second.id]  # oldest first
    with pytest.raises(JobNotFound):
        store.get_job("job-ffffffffffff")
    with pytest.raises(ValueError, match="transition"):
        store.update_job(first.id, status=S.FAILED)


def test_transitions_write_the_status_history(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    job = new_job(store)
    store.transition(job.id, S.IN_PROGRESS, "started", pid=123)
    store.transition(job.id, S.FAILED, "boom", level="error", failure_message="boom")
    with pytest.raises(IllegalTransition):
        store.transition(job.id, S.COMPLETED)
    loaded = store.get_job(job.id)
    assert loaded.status is S.FAILED and loaded.failure_message == "boom" and loaded.pid == 123
    events = store.list_events(job.id)
    assert [e.data.get("to") for e in events] == [None, "InProgress", "Failed"]
    assert events[-1].level == "error" and "boom" in events[-1].message
    assert store.list_events(job.id, after=events[1].seq) == events[2:]
    assert store.list_jobs(S.FAILED)[0].id == job.id and store.list_jobs(S.QUEUED) == []


def test_concurrent_transitions_let_exactly_one_win(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    job = new_job(store)
    wins, losses = [], []

    def start() -> None:
        try:
            wins.append(store.transition(job.id, S.IN_PROGRESS))
        except IllegalTransition:
            losses.append(1)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(wins), len(losses)) == (1, 7)


def test_files_and_deletion(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    record = store.add_file(FileRecord(new_file_id(), "train.jsonl", 10, "fine-tune", 1.0))
    assert store.get_file(record.id) == record and store.list_files() == [record]
    with pytest.raises(JobNotFound):
        store.get_file("file-0000")
    job = new_job(store)
    store.delete_job(job.id)
    with pytest.raises(JobNotFound):
        store.get_job(job.id)
    assert store.list_events(job.id) == []
