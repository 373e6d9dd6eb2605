"""The job service the API surfaces share: the data directory, the store, the runner, job
creation (config validated at once, uploaded-file references resolved) and file uploads.

    service = JobService(DataDir(Path("~/.openrft").expanduser()), concurrency=1)
    service.start()                      # recover, then schedule in the background
    job = service.create_job({"model": {...}, "data": {"train_file": "file-..."}}, name="x")
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from openrft.config import JobConfig, config_from_dict, config_to_dict, dump_config
from openrft.errors import ConfigError
from openrft.jobs.model import (
    ACTIVE,
    FileRecord,
    Job,
    JobConflict,
    JobError,
    JobNotFound,
    JobStatus,
    new_file_id,
    new_job_id,
    rewrite_grader_files,
)
from openrft.jobs.runner import Runner
from openrft.jobs.store import Store
from openrft.train.preflight_check import check_memory

FILE_ID = re.compile(r"^file-[0-9a-f]{4,64}$")
JOB_ID = re.compile(r"^job-[0-9a-f]{4,64}$")
FILE_REFERENCE = re.compile(r"^(file-[0-9a-f]{4,64})(:[A-Za-z_][\w.]*)?$")  # file-<id>[:function]
FILE_FIELDS = (("data", "train_file"), ("data", "validation_file"), ("reward", "grader"))
DATA_FIELDS = (("data", "train_file"), ("data", "validation_file"))


def default_data_dir() -> Path:
    return Path(os.environ.get("OPENRFT_HOME") or Path.home() / ".openrft").expanduser()


@dataclass(frozen=True)
class DataDir:
    """The layout of a server's data directory (docs/api.md, "Data directory")."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "openrft.db"

    @property
    def token(self) -> Path:
        return self.root / "token"

    @property
    def server_json(self) -> Path:
        return self.root / "server.json"

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    def file_dir(self, file_id: str) -> Path:
        if not FILE_ID.match(file_id):
            raise JobNotFound(f"no file {file_id}", "file_id")
        return self.files / file_id


class JobService:
    def __init__(self, data_dir: DataDir, concurrency: int = 1, poll_s: float = 0.5):
        self.data_dir = data_dir
        data_dir.root.mkdir(parents=True, exist_ok=True)
        self.store = Store(data_dir.db)
        self.runner = Runner(self.store, data_dir.jobs, concurrency, poll_s)

    def start(self) -> None:
        self.runner.start()

    def close(self) -> None:
        self.runner.shutdown()

    def run_dir(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise JobNotFound(f"no job {job_id}", "id")
        return self.data_dir.jobs / job_id

    # -- jobs -------------------------------------------------------------------------------

    def create_job(
        self,
        raw_config: dict[str, Any],
        name: str | None = None,
        source: str = "native",
        extra: dict[str, Any] | None = None,
        grader_spec: dict[str, Any] | None = None,
    ) -> Job:
        """Validate a config (ConfigError names the bad field) and queue a job for it.
        `grader_spec` (a grader JSON object) is written to RUN_DIR/grader.json and used as
        reward.grader."""
        if not isinstance(raw_config, dict):
            raise ConfigError("<root>", "the config must be an object (TOML tables as JSON)")
        job_id = new_job_id()
        run_dir = self.run_dir(job_id)
        raw = copy.deepcopy(raw_config)
        if grader_spec is not None:
            raw.setdefault("reward", {})["grader"] = str(run_dir / "grader.json")
        config = self.resolve_config(raw)
        # A job that will not fit in this machine's memory is refused now, naming the knob
        # to turn, not after it has waited in the queue and loaded its model (preflight.check).
        check_memory(config)
        run_dir.mkdir(parents=True)
        if grader_spec is not None:
            (run_dir / "grader.json").write_text(json.dumps(grader_spec, indent=2))
        dump_config(config, run_dir / "config.toml")
        job = Job(
            id=job_id,
            name=name or config.name,
            status=JobStatus.QUEUED,
            config=config_to_dict(config),
            source=source,
            extra=extra or {},
        )
        self.store.add_job(job)
        self.runner.wake()
        return job

    def resolve_config(self, raw: dict[str, Any]) -> JobConfig:
        """The validated config, with `file-<id>` references replaced by server paths and
        data files checked to exist on the server."""
        for section, key in FILE_FIELDS:
            table = raw.get(section)
            value = table.get(key) if isinstance(table, dict) else None
            if isinstance(value, str) and FILE_REFERENCE.match(value.strip()):
                table[key] = self._file_reference(f"{section}.{key}", value.strip())
            elif isinstance(value, dict):  # an inline grader table naming uploaded files
                rewrite_grader_files(value, self._grader_file_reference, f"{section}.{key}")
        config = config_from_dict(raw)
        for section, key in DATA_FIELDS:
            value = getattr(getattr(config, section), key)
            if value and not value.startswith("builtin:") and not Path(value).is_file():
                raise ConfigError(f"{section}.{key}", f"no such file on the server: {value}")
        return config

    def _grader_file_reference(self, field: str, _key: str, value: str) -> str | None:
        """An uploaded file named inside an inline grader table, as its server path."""
        if not FILE_REFERENCE.match(value.strip()):
            return None
        return self._file_reference(field, value.strip())

    def _file_reference(self, field: str, reference: str) -> str:
        match = FILE_REFERENCE.match(reference)
        assert match is not None
        file_id, function = match.group(1), match.group(2) or ""
        try:
            path = self.file_path(file_id)
        except JobNotFound as exc:
            raise ConfigError(field, f"no uploaded file {file_id}") from exc
        return f"{path}{function}"

    def stop_job(self, job_id: str, reason: str = "stop") -> Job:
        return self.runner.stop(job_id, reason)

    def resume_job(self, job_id: str) -> Job:
        return self.runner.resume(job_id)

    def delete_job(self, job_id: str) -> None:
        run_dir = self.run_dir(job_id)
        with self.runner.lock:
            job = self.store.get_job(job_id)
            if job.status in ACTIVE:
                raise JobConflict(f"job {job_id} is {job.status.value}; stop it first")
            self.store.delete_job(job_id)
        shutil.rmtree(run_dir, ignore_errors=True)

    # -- files ------------------------------------------------------------------------------

    def save_upload(self, filename: str, stream: BinaryIO, purpose: str) -> FileRecord:
        """Store an upload as DATA_DIR/files/<id>/<filename> (the name keeps its extension,
        which grader references need, and error messages show it)."""
        file_id = new_file_id()
        directory = self.data_dir.file_dir(file_id)
        directory.mkdir(parents=True)
        name = safe_filename(filename)
        size = 0
        with (directory / name).open("wb") as out:
            for chunk in _chunks(stream):
                out.write(chunk)
                size += len(chunk)
        record = FileRecord(file_id, name, size, purpose or "fine-tune", time.time())
        return self.store.add_file(record)

    def file_path(self, file_id: str) -> Path:
        record = self.store.get_file(file_id)
        path = self.data_dir.file_dir(file_id) / record.filename
        if not path.is_file():
            raise JobNotFound(f"file {file_id} is missing from {path.parent}", "file_id")
        return path


def safe_filename(filename: str) -> str:
    """The base name of an uploaded file, reduced to safe characters."""
    base = re.split(r"[\\/]", filename or "")[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    if not cleaned:
        return "upload"
    if len(cleaned) > 200:
        raise JobError(f"file name too long ({len(cleaned)} characters)", "file")
    return cleaned


def _chunks(stream: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := stream.read(size):
        yield chunk
