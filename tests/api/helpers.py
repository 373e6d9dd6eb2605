"""Tiny jobs for the job service tests: the tiny model, a small JSONL data set (optionally
with a bad row), a reward file (`reward`, and `slow` for jobs that must still be running when
a test acts on them), configs as plain data, and polling helpers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import tomli_w

from openrft.api import ServerThread, create_app
from openrft.jobs.workers import kill_worker_group, pid_alive

T = TypeVar("T")
REWARD_FILE = """
import time


def reward(response, item):
    letter = item["reference_answer"]
    return {"has_letter": float(letter in response), "brevity": 1.0 / (1 + len(response))}


def slow(response, item):
    time.sleep(0.1)  # 0.8 s per step at 2 prompts x 4 samples: time to act on a running job
    return reward(response, item)
"""
ENDED = ("Completed", "Failed", "Stopped")


def write_dataset(directory: Path, rows: int = 24, bad_line: int | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ("bad.jsonl" if bad_line else "train.jsonl")
    letters = "abcdefgh"
    with path.open("w") as f:
        for i in range(1, rows + 1):
            role = "bot" if i == bad_line else "user"
            row = {
                "messages": [{"role": role, "content": f"say the letter {letters[i % 8]} {i}"}],
                "reference_answer": letters[i % 8],
            }
            f.write(json.dumps(row) + "\n")
    return path


def job_config(
    directory: Path,
    model_dir: Path,
    max_steps: int = 3,
    grader: str = "reward",
    bad_line: int | None = None,
) -> dict[str, Any]:
    """A job config as plain data (TOML tables as JSON) with server-side paths."""
    directory.mkdir(parents=True, exist_ok=True)
    reward_file = directory / "reward_fn.py"
    reward_file.write_text(REWARD_FILE)
    data = write_dataset(directory, bad_line=bad_line)
    return {
        "name": "tiny",
        "model": {"name": str(model_dir)},
        "data": {"train_file": str(data), "validation_size": 4},
        "reward": {"grader": f"{reward_file}:{grader}"},
        "rollout": {"samples_per_prompt": 4, "max_new_tokens": 6},
        "train": {
            "prompts_per_step": 2,
            "micro_batch_size": 4,
            "max_steps": max_steps,
            "learning_rate": 1e-3,
            "threads": 1,
        },
        "eval": {"interval": 0},
        "checkpoint": {"interval": 1},
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(config))
    return path


def wait_for(
    check: Callable[[], T | None], timeout_s: float = 180.0, what: str = "the condition"
) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


def api_client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def wait_job(
    client: httpx.Client, job_id: str, check: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """Poll GET /api/jobs/{id} until `check(job)`; fails naming `what` and the last state."""
    last: dict[str, Any] = {}

    def poll() -> dict[str, Any] | None:
        nonlocal last
        last = client.get(f"/api/jobs/{job_id}").json()
        return last if check(last) else None

    try:
        return wait_for(poll, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last state: {json.dumps(last)[:2000]}") from None


def wait_ended(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return wait_job(client, job_id, lambda job: job["status"] in ENDED, f"{job_id} to end")


def metric_steps(client: httpx.Client, job_id: str) -> list[int]:
    return [m["step"] for m in client.get(f"/api/jobs/{job_id}/metrics").json()["data"]]


@dataclass
class Served:
    url: str
    token: str
    data_dir: Path
    client: httpx.Client
    thread: ServerThread

    def stop(self) -> None:
        self.thread.stop()
        service = self.thread.app.state.service
        for job in service.store.list_jobs():
            if job.pid is not None and pid_alive(job.pid):
                kill_worker_group(job.pid)
        self.client.close()


def serve_dir(data_dir: Path, concurrency: int = 1, start_runner: bool = True) -> Served:
    app = create_app(data_dir, concurrency=concurrency, start_runner=start_runner, poll_s=0.2)
    app.state.service.runner.shutdown_grace_s = 20.0
    thread = ServerThread(app).start()
    token = app.state.token
    return Served(thread.url, token, data_dir, api_client(thread.url, token), thread)


def clean_aws_environment(monkeypatch: Any, tmp_path: Path) -> None:
    """Keep the developer's AWS setup out of a boto3 test: no profile, config file, session
    or bearer token (boto3 would send that bearer token, and only over https)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_BEDROCK", "AWS_DEFAULT_REGION", "AWS_REGION"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
