"""The HTTP client behind `openrft jobs ...`: finding the server and token, uploading the
local files a config names, and printing jobs, logs and metrics (rich tables, one compact
line per step; `--follow` polls events and worker.log, or reads the metrics SSE stream).
"""

from __future__ import annotations

import json
import os
import re
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from openrft.config import apply_override
from openrft.errors import ConfigError, RFTError
from openrft.jobs.model import rewrite_grader_files
from openrft.jobs.service import default_data_dir
from openrft.rewards.spec import load_grader_file

ENDED = ("Completed", "Failed", "Stopped")
FILE_ID = re.compile(r"^file-[0-9a-f]+(:.*)?$")
console = Console(highlight=False, soft_wrap=True)


class ClientError(RFTError):
    """The server refused a request, or cannot be reached."""


class JobsClient:
    def __init__(self, url: str, token: str, timeout_s: float = 60.0):
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout_s, read=None),
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach the job server at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ClientError(f"{response.status_code}: {detail}")
        return response

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    def read_config(self, path: Path, overrides: list[str]) -> dict[str, Any]:
        try:
            raw = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError("<file>", f"cannot read {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("<file>", f"{path} is not valid TOML: {exc}") from exc
        for item in overrides:
            apply_override(raw, item)
        return raw

    def upload(self, path: Path) -> str:
        with path.open("rb") as f:
            record = self.call("POST", "/api/files", files={"file": (path.name, f)})
        return record["id"]

    def stream(self, path: str, **params: Any) -> Iterator[tuple[str, Any]]:
        """(event, data) pairs of a server-sent event stream."""
        try:
            with self.http.stream("GET", path, params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ClientError(f"{response.status_code}: {response.text}")
                event, data = "message", []
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        yield event, json.loads("\n".join(data))
                        event, data = "message", []
        except httpx.TransportError as exc:
            raise ClientError(f"the stream from {self.url} broke: {exc}") from exc


def connect(server: str | None = None, token: str | None = None) -> JobsClient:
    """A client for --server/--token, else OPENRFT_SERVER/OPENRFT_TOKEN, else the data dir."""
    home = default_data_dir()
    url = server or os.environ.get("OPENRFT_SERVER")
    if not url:
        try:
            url = json.loads((home / "server.json").read_text())["url"]
        except (OSError, ValueError, KeyError) as exc:
            raise ClientError(
                f"no server found ({home / 'server.json'}): start one with `openrft server`, "
                "or pass --server URL (or set OPENRFT_SERVER)"
            ) from exc
    token = token or os.environ.get("OPENRFT_TOKEN")
    if not token:
        try:
            token = (home / "token").read_text().strip()
        except OSError as exc:
            raise ClientError(
                f"no token: pass --token, set OPENRFT_TOKEN, or read {home / 'token'}"
            ) from exc
    return JobsClient(str(url), token)


def upload_local_files(
    client: JobsClient, raw: dict[str, Any], config_dir: Path
) -> list[tuple[str, Path, str]]:
    """Upload the local files the config names and rewrite it to `file-<id>` references.
    Returns (field, local path, file id) for each upload."""
    uploaded = []
    for section, key in (("data", "train_file"), ("data", "validation_file"), ("reward", "grader")):
        table = raw.get(section)
        value = table.get(key) if isinstance(table, dict) else None
        if not isinstance(value, str) or not value or FILE_ID.match(value):
            continue
        path_part, function = value, ""
        if key == "grader" and ":" in value:
            path_part, _, name = value.rpartition(":")
            function = f":{name}"
            if not path_part.endswith(".py"):
                continue  # package.module:function lives on the server
        local = _find(path_part, config_dir)
        if local is None:
            continue  # a built-in name, builtin:..., or a path on the server
        if key == "grader" and local.suffix in (".toml", ".json"):
            # Inlined, with the files it names uploaded: the server has no folder beside it.
            table[key] = _inline_grader(client, local, uploaded)
            continue
        file_id = client.upload(local)
        table[key] = f"{file_id}{function}"
        uploaded.append((f"{section}.{key}", local, file_id))
    return uploaded


def _inline_grader(
    client: JobsClient, path: Path, uploaded: list[tuple[str, Path, str]]
) -> dict[str, Any]:
    """The grader file's spec, every local file it names (GRADER_FILE_FIELDS, nested graders
    too) uploaded and replaced by `file-<id>[:function]`."""
    spec = load_grader_file(path)

    def upload(field: str, key: str, value: str) -> str | None:
        file_part, function = value, ""
        if key == "function":
            file_part, _, name = value.rpartition(":")
            function = f":{name}"
            if not file_part.endswith(".py"):
                return None  # package.module:function lives on the server
        local = Path(file_part).expanduser()
        local = local if local.is_absolute() else path.parent / local
        if not local.is_file():
            return None
        file_id = client.upload(local)
        uploaded.append((field, local, file_id))
        return f"{file_id}{function}"

    rewrite_grader_files(spec, upload)
    return spec


def _find(value: str, config_dir: Path) -> Path | None:
    if value.startswith("builtin:"):
        return None
    for candidate in (Path(value).expanduser(), config_dir / value):
        if candidate.is_file():
            return candidate
    return None


# -- printing --------------------------------------------------------------------------------


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def print_jobs(jobs: list[dict[str, Any]]) -> None:
    table = Table("ID", "NAME", "STATUS", "STEP", "REWARD", "VAL", "CREATED", box=None)
    for job in jobs:
        progress = job.get("progress") or {}
        latest = job.get("latest") or {}
        table.add_row(
            job["id"],
            job["name"],
            job["status"],
            f"{progress.get('step', 0)}/{progress.get('total_steps') or '?'}",
            _number(latest.get("reward/mean")),
            _number(latest.get("val/reward/mean")),
            (job.get("created_at") or "")[:19].replace("T", " "),
        )
    console.print(table if jobs else "no jobs")


def print_job(job: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    progress = job.get("progress") or {}
    details = job.get("status_details") or {}
    rows = [
        ("id", job["id"]),
        ("name", job["name"]),
        ("status", job["status"]),
        ("details", ", ".join(f"{k} {v}" for k, v in details.items())),
        ("progress", f"step {progress.get('step', 0)} of {progress.get('total_steps') or '?'}"),
        ("model", job["config"]["model"]["name"]),
        ("created", job["created_at"]),
        ("started", job.get("started_at") or "-"),
        ("ended", job.get("ended_at") or "-"),
        ("run dir", job["run_dir"]),
    ]
    rows += [(k, _number(v, 4)) for k, v in (job.get("latest") or {}).items()]
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)
    if job.get("failure_message"):
        console.print(f"\nfailure: {job['failure_message']}")


def metric_line(record: dict[str, Any], total: int | None = None) -> str:
    """One compact line per step: reward, validation reward, loss, entropy, length, time."""
    step = record.get("step", 0)
    parts = [f"step {step:>4}" + (f"/{total}" if total else "")]
    for label, key, digits in (
        ("reward", "reward/mean", 3),
        ("val", "val/reward/mean", 3),
        ("loss", "loss/total", 4),
        ("entropy", "policy/entropy", 3),
        ("len", "completion/length_mean", 1),
        ("errors", "reward/error_rate", 2),
    ):
        if isinstance(record.get(key), int | float):
            parts.append(f"{label} {record[key]:.{digits}f}")
    if isinstance(record.get("time/step_s"), int | float):
        parts.append(f"{record['time/step_s']:.1f}s")
    return "  ".join(parts)


def print_metrics(client: JobsClient, job_id: str, follow: bool) -> int:
    job = client.call("GET", f"/api/jobs/{job_id}")
    total = (job.get("progress") or {}).get("total_steps") or None
    if not follow:
        for record in client.call("GET", f"/api/jobs/{job_id}/metrics")["data"]:
            print(metric_line(record, total))
        return 0
    try:
        for event, data in client.stream(f"/api/jobs/{job_id}/metrics/stream"):
            if event == "metrics":
                print(metric_line(data, total), flush=True)
            elif event == "status":
                total = (data.get("progress") or {}).get("total_steps") or total
                print(f"status: {data['status']}", flush=True)
            elif event == "end":
                print(f"ended: {data.get('status', 'deleted')}", flush=True)
                return 0
    except KeyboardInterrupt:
        return 130
    return 0


def follow_logs(client: JobsClient, job_id: str, follow: bool, poll_s: float = 1.0) -> int:
    """Print events and worker.log; with `follow`, keep printing until the job has ended."""
    after, offset = 0, 0
    try:
        while True:
            ended = client.call("GET", f"/api/jobs/{job_id}")["status"] in ENDED
            events = client.call("GET", f"/api/jobs/{job_id}/events", params={"after": after})
            for event in events["data"]:
                after = event["seq"]
                print(f"[{event['time'][:19]}] {event['level']}: {event['message']}", flush=True)
            offset += _print_log(client, job_id, offset)
            if not follow or ended:
                return 0
            time.sleep(poll_s)
    except KeyboardInterrupt:
        return 130


def _print_log(client: JobsClient, job_id: str, offset: int) -> int:
    try:
        response = client.request(
            "GET", f"/api/jobs/{job_id}/files/worker.log", params={"offset": offset}
        )
    except ClientError as exc:
        if str(exc).startswith("404"):
            return 0  # no worker has started yet
        raise
    text = response.content.decode("utf-8", "replace")
    if text:
        print(text, end="" if text.endswith("\n") else "\n", flush=True)
    return len(response.content)
