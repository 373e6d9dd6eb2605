"""Crash anywhere: a real job on a real job server process, with the server and (alternately)
the job's worker SIGKILLed at random moments, 10 times in a row. The server comes back after
each of its kills and adopts the worker that kept training; a killed worker is resumed from
its last checkpoint by the server on its own (jobs.max_restarts). The job must end Completed
with every step exactly once in metrics.jsonl, the same metrics as an uninterrupted run, no
file cut short, and a sound SQLite store. And a worker killed with no restarts left fails the
job, naming the signal and the worker's peak memory."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import time
from pathlib import Path

from openrft.config import config_from_dict
from openrft.jobs.workers import pid_alive
from openrft.train.loop import train

from .helpers import job_config, metric_steps, wait_ended, wait_for, wait_job
from .processes import ServerProcess

KILLS = 10
STEPS = 24  # two steps between kills at most, and room to spare: the job outlives the kills
COMPARED = ("reward/mean", "reward/std", "loss/total", "optim/grad_norm", "policy/entropy",
            "completion/length_mean")  # fmt: skip


def running_past(job: dict, step: int) -> bool:
    """A worker trains the job (not between a kill and its restart) and has passed `step`."""
    return job["status"] == "InProgress" and job["pid"] and job["progress"]["step"] >= step


def kill_worker(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 30, f"worker {pid} to die")


def test_ten_kills_of_server_and_worker_lose_nothing(servers, tmp_path, tiny_model_dir):
    data_dir, log = tmp_path / "data", tmp_path / "servers.log"
    config = job_config(tmp_path / "job", tiny_model_dir, max_steps=STEPS, grader="slow")
    config["jobs"] = {"max_restarts": KILLS}
    servers.append(ServerProcess(data_dir, log))
    job_id = servers[-1].client.post("/api/jobs", json={"config": config}).json()["id"]
    chance = random.Random(20)  # random moments, the same ones on every run
    killed_workers = []
    for kill in range(KILLS):
        client = servers[-1].client
        wait_job(client, job_id, lambda j, k=kill: running_past(j, 2 * k + 1), f"kill {kill}")
        time.sleep(chance.uniform(0.0, 0.8))  # anywhere in the step: rollout, update, saving
        if kill % 2 == 0:
            servers[-1].kill()  # the worker, in its own session, keeps training
            servers.append(ServerProcess(data_dir, log))
        else:
            pid = client.get(f"/api/jobs/{job_id}").json()["pid"]
            kill_worker(pid)
            killed_workers.append(pid)

    client = servers[-1].client
    done = wait_ended(client, job_id)
    assert done["status"] == "Completed", done["failure_message"]
    assert metric_steps(client, job_id) == list(range(STEPS + 1))  # each step exactly once

    events = [e["message"] for e in client.get(f"/api/jobs/{job_id}/events").json()["data"]]
    # A killed worker the server had started is restarted at once; one it had adopted from
    # the server before (no exit code to read) is queued to resume: both count as restarts.
    restarts = [m for m in events if re.search(rf"restart \d+ of {KILLS}\b", m)]
    assert len(restarts) == len(killed_workers) == KILLS // 2, "\n".join(events)
    assert all("peak memory" in m and "resum" in m for m in restarts), restarts
    assert sum("adopted the running worker" in m for m in events) >= KILLS // 2

    run_dir = data_dir / "jobs" / job_id
    reference = tmp_path / "uninterrupted"
    train(config_from_dict(config), reference, show_progress=False)
    expected, got = metric_records(reference), metric_records(run_dir)
    assert sorted(got) == sorted(expected) == list(range(STEPS + 1))
    for step in range(1, STEPS + 1):
        for key in COMPARED:
            assert got[step].get(key) == expected[step].get(key), (step, key)
    assert rollout_steps(run_dir) == rollout_steps(reference)

    assert_no_file_cut_short(run_dir)
    with sqlite3.connect(data_dir / "openrft.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_killed_worker_without_restarts_fails_naming_the_cause(servers, tmp_path, tiny_model_dir):
    data_dir, log = tmp_path / "data", tmp_path / "servers.log"
    config = job_config(tmp_path / "job", tiny_model_dir, max_steps=30, grader="slow")
    config["jobs"] = {"max_restarts": 0}
    servers.append(ServerProcess(data_dir, log))
    client = servers[-1].client
    job_id = client.post("/api/jobs", json={"config": config}).json()["id"]
    job = wait_job(client, job_id, lambda j: j["progress"]["step"] >= 1, "step 1")
    kill_worker(job["pid"])
    done = wait_ended(client, job_id)
    assert done["status"] == "Failed"
    message = done["failure_message"]
    assert message.startswith("the worker was killed by SIGKILL; its peak memory was ")
    assert "(jobs.max_restarts = 0)" in message


def metric_records(run_dir: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in records}
    assert len(by_step) == len(records), "a step was logged twice"
    return by_step


def rollout_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "rollouts.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def assert_no_file_cut_short(run_dir: Path) -> None:
    """Every JSON file parses, every JSONL line parses, no temporary file is left over, and
    every checkpoint passes its checksums."""
    from openrft.train.checkpoint import checkpoint_problem, list_checkpoints

    for path in run_dir.rglob("*"):
        assert ".tmp" not in path.name, f"{path} left half-written"
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            text = path.read_text()
            assert not text or text.endswith("\n"), f"{path} ends in a partial line"
            for line in text.splitlines():
                json.loads(line)
    checkpoints = list_checkpoints(run_dir)
    assert checkpoints
    for checkpoint in checkpoints:
        assert checkpoint_problem(checkpoint) is None, checkpoint
