"""Real jobs on one server with concurrency 1: a job with a bad data row (first) and a good
job submitted with `openrft jobs create` (which uploads its files). The good job waits in the
queue, the bad one fails naming file:line and field, the good one completes; its metrics,
rollouts, checkpoints and files are served, its SSE stream delivers every step and an end
event, and the CLI client reads it all."""

from __future__ import annotations

import io
import json
import re
import threading
from contextlib import redirect_stdout
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from openrft.cli import main

from .helpers import Served, job_config, serve_dir, wait_ended, write_config


class StreamCollector(threading.Thread):
    """Reads GET /api/jobs/{id}/metrics/stream (raw SSE) until its end event."""

    def __init__(self, served: Served, job_id: str, after: int | None = None):
        super().__init__(daemon=True)
        self.url = f"{served.url}/api/jobs/{job_id}/metrics/stream"
        self.params = {} if after is None else {"after": after}
        self.headers = {"Authorization": f"Bearer {served.token}"}
        self.events: list[tuple[str, Any]] = []
        self.content_type = ""

    def run(self) -> None:
        timeout = httpx.Timeout(10, read=300)
        with httpx.stream(
            "GET", self.url, params=self.params, headers=self.headers, timeout=timeout
        ) as response:
            self.content_type = response.headers["content-type"]
            event = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    self.events.append((event, json.loads(line[6:])))
                    if event == "end":
                        return


@dataclass
class Scenario:
    served: Served
    bad: dict[str, Any]
    good: dict[str, Any]
    good_when_created: dict[str, Any]
    create_output: str
    stream: StreamCollector


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("scenario")
    served = serve_dir(root / "data", concurrency=1)
    try:
        bad_config = job_config(root / "bad", tiny_model_dir, bad_line=3)
        bad = served.client.post("/api/jobs", json={"config": bad_config, "name": "bad"}).json()
        config = job_config(root / "good", tiny_model_dir)
        config["data"]["train_file"] = "train.jsonl"  # relative to the config file
        config["reward"]["grader"] = "reward_fn.py:reward"
        path = write_config(root / "good" / "job.toml", config)
        output = io.StringIO()
        command = ["jobs", "create", str(path), "--name", "good", "--server", served.url]
        with redirect_stdout(output):
            assert main([*command, "--token", served.token]) == 0
        good_id = re.search(r"created (job-\w+)", output.getvalue()).group(1)
        good_when_created = served.client.get(f"/api/jobs/{good_id}").json()
        stream = StreamCollector(served, good_id)
        stream.start()
        bad, good = wait_ended(served.client, bad["id"]), wait_ended(served.client, good_id)
        stream.join(60)
        yield Scenario(served, bad, good, good_when_created, output.getvalue(), stream)
    finally:
        served.stop()


def test_concurrency_one_keeps_the_second_job_queued(scenario):
    assert scenario.good_when_created["status"] == "Queued"
    assert scenario.good["started_at"] >= scenario.bad["ended_at"]


def test_a_bad_row_fails_the_job_naming_file_line_and_field(scenario):
    bad = scenario.bad
    assert bad["status"] == "Failed"
    assert "bad.jsonl:3: messages[0].role: unknown role 'bot'" in bad["failure_message"]
    assert bad["status_details"]["dataProcessing"] == "Failed"
    events = scenario.served.client.get(f"/api/jobs/{bad['id']}/events").json()["data"]
    assert events[-1]["level"] == "error" and "bad.jsonl:3" in events[-1]["message"]


def test_the_good_job_completes_unaffected(scenario):
    good = scenario.good
    assert good["status"] == "Completed" and good["failure_message"] is None
    assert set(good["status_details"].values()) == {"Completed"}
    assert good["progress"] == {"step": 3, "total_steps": 3}
    assert set(good["latest"]) >= {"reward/mean", "val/reward/mean", "loss/total"}
    assert "uploaded" in scenario.create_output
    assert good["config"]["data"]["train_file"].startswith(str(scenario.served.data_dir))
    assert re.search(
        r"/files/file-[0-9a-f]+/reward_fn\.py:reward$", good["config"]["reward"]["grader"]
    )


def test_metrics_rollouts_checkpoints_and_files_are_served(scenario):
    client, job_id = scenario.served.client, scenario.good["id"]
    metrics = client.get(f"/api/jobs/{job_id}/metrics").json()
    assert [m["step"] for m in metrics["data"]] == [0, 1, 2, 3] and metrics["last_step"] == 3
    later = client.get(f"/api/jobs/{job_id}/metrics", params={"after": 1}).json()
    assert [m["step"] for m in later["data"]] == [2, 3]
    assert client.get(f"/api/jobs/{job_id}/rollouts/steps").json() == {"steps": [1, 2, 3]}
    rollouts = client.get(f"/api/jobs/{job_id}/rollouts", params={"step": 2}).json()
    assert rollouts["step"] == 2 and len(rollouts["data"]) == 2
    assert len(rollouts["data"][0]["completions"]) == 4
    checkpoints = client.get(f"/api/jobs/{job_id}/checkpoints").json()["data"]
    assert [c["step"] for c in checkpoints][-1] == 3 and checkpoints[-1]["metrics"]["step"] == 3
    assert client.get(f"/api/jobs/{job_id}/files/report.md").text.startswith("#")
    assert client.get(f"/api/jobs/{job_id}/files/reward.png").content[:4] == b"\x89PNG"
    assert "worker started" in client.get(f"/api/jobs/{job_id}/files/worker.log").text
    # What the job used: each step's usage/* counts summed, as summary.json has them.
    usage = client.get(f"/api/jobs/{job_id}").json()["usage"]
    steps = metrics["data"][1:]
    assert usage["sampled_tokens"] == sum(m["usage/sampled_tokens"] for m in steps) > 0
    assert usage["graded_samples"] == 3 * 2 * 4  # steps x prompts x samples
    summary = client.get(f"/api/jobs/{job_id}/files/summary.json").json()
    assert summary["usage"] == usage


def test_the_sse_stream_delivers_each_step_then_end(scenario):
    stream = scenario.stream
    assert stream.content_type.startswith("text/event-stream")
    names = [name for name, _ in stream.events]
    assert names[0] == "status" and names[-1] == "end"
    steps = [data["step"] for name, data in stream.events if name == "metrics"]
    assert steps == [0, 1, 2, 3]
    statuses = [data["status"] for name, data in stream.events if name == "status"]
    assert statuses[0] == "Queued" and statuses[-1] == "Completed" and "InProgress" in statuses
    assert stream.events[-1][1]["status"] == "Completed"
    replay = StreamCollector(scenario.served, scenario.good["id"], after=1)
    replay.run()  # an ended job: its lines after step 1, then end at once
    assert [(n, d.get("step")) for n, d in replay.events[1:]] == [
        ("metrics", 2), ("metrics", 3), ("end", None)
    ]  # fmt: skip


def test_cli_client(scenario, capsys, monkeypatch, tmp_path):
    served, job_id = scenario.served, scenario.good["id"]
    monkeypatch.setenv("OPENRFT_SERVER", served.url)
    monkeypatch.setenv("OPENRFT_TOKEN", served.token)
    assert main(["jobs", "list"]) == 0
    out = capsys.readouterr().out
    assert job_id in out and scenario.bad["id"] in out and "Completed" in out
    assert main(["jobs", "get", job_id]) == 0
    assert "dataProcessing Completed" in capsys.readouterr().out
    assert main(["jobs", "get", scenario.bad["id"]]) == 0
    assert "failure: DatasetError" in capsys.readouterr().out
    assert main(["jobs", "metrics", job_id, "--follow"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("step")] == [
        "0/3",
        "1/3",
        "2/3",
        "3/3",
    ]
    assert lines[-1] == "ended: Completed"
    assert main(["jobs", "logs", job_id, "--follow"]) == 0
    out = capsys.readouterr().out
    assert "status InProgress -> Completed" in out and "worker started" in out
    assert main(["jobs", "stop", job_id]) == 1
    assert "409" in capsys.readouterr().err

    home = tmp_path / "home"  # no flags, no env: server.json and token from OPENRFT_HOME
    home.mkdir()
    (home / "server.json").write_text(json.dumps({"url": served.url, "pid": 1}))
    (home / "token").write_text(served.token)
    monkeypatch.delenv("OPENRFT_SERVER")
    monkeypatch.delenv("OPENRFT_TOKEN")
    monkeypatch.setenv("OPENRFT_HOME", str(home))
    assert main(["jobs", "list", "--status", "Failed"]) == 0
    assert scenario.bad["id"] in capsys.readouterr().out
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / "nowhere"))
    assert main(["jobs", "list"]) == 1
    assert "no server found" in capsys.readouterr().err


def test_delete_an_ended_job(scenario):
    client, bad = scenario.served.client, scenario.bad
    assert client.delete(f"/api/jobs/{bad['id']}").status_code == 204
    assert client.get(f"/api/jobs/{bad['id']}").status_code == 404
    assert not (scenario.served.data_dir / "jobs" / bad["id"]).exists()
