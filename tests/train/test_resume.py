"""Kill a real training process and resume it: the steps after the resume must reproduce the
metrics of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from openrft.train.loop import train

from .helpers import config_file, tiny_job

COMPARED = ["reward/mean", "reward/std", "loss/total", "policy/entropy", "optim/grad_norm",
            "completion/length_mean", "val/reward/mean"]  # fmt: skip


def metrics_by_step(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {m["step"]: m for m in map(json.loads, lines)}


def test_killed_run_resumes_exactly(tmp_path, tiny_model_dir):
    config = tiny_job(tmp_path, tiny_model_dir, "train.max_steps=5", "eval.interval=2")
    reference_dir = tmp_path / "uninterrupted"
    train(config, reference_dir, show_progress=False)

    killed_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "openrft.cli", "train", str(config_file(tmp_path, config)),
               "--output", str(killed_dir), "--no-progress"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (killed_dir / "checkpoints" / "step-2" / "state.json").exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "final").exists()

    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "openrft.cli",
            "train",
            "--resume",
            str(killed_dir),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr

    expected, got = metrics_by_step(reference_dir), metrics_by_step(killed_dir)
    assert sorted(got) == [0, 1, 2, 3, 4, 5]  # no step logged twice, none missing
    for step in range(1, 6):
        for key in COMPARED:
            assert got[step].get(key) == expected[step].get(key), (step, key)
    lines = (killed_dir / "rollouts.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [
        s for s in range(1, 6) for _ in range(2)
    ]
    assert (killed_dir / "final" / "adapter_model.safetensors").exists()


# Steps enough that the job cannot finish between its first rollout record and the signal
# (with 4, a fast machine once finished all of them first: exit 0 instead of 75).
STEPS = 8


def test_sigterm_stops_after_a_checkpoint_and_resumes(tmp_path, tiny_model_dir):
    config = tiny_job(
        tmp_path, tiny_model_dir, f"train.max_steps={STEPS}", "eval.interval=0",
        "checkpoint.interval=100",
    )  # fmt: skip
    reference_dir = tmp_path / "uninterrupted"
    train(config, reference_dir, show_progress=False)

    run_dir = tmp_path / "stopped"
    command = [sys.executable, "-m", "openrft.cli", "train", str(config_file(tmp_path, config)),
               "--output", str(run_dir), "--no-progress"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run_dir / "rollouts.jsonl").exists() or not (run_dir / "rollouts.jsonl").read_text():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 75, stderr
    assert "resume with" in stdout
    status = json.loads((run_dir / "status.json").read_text())
    stopped_at = status["step"]
    assert status["stage"] == "stopped" and 1 <= stopped_at < STEPS
    assert (
        run_dir / "checkpoints" / f"step-{stopped_at}"
    ).exists()  # checkpointed despite interval
    assert not (run_dir / "final").exists()

    resumed = subprocess.run(
        [*command[:4], "--resume", str(run_dir), "--no-progress"], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    expected, got = metrics_by_step(reference_dir), metrics_by_step(run_dir)
    assert sorted(got) == list(range(STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step]["loss/total"] == expected[step]["loss/total"], step
    assert json.loads((run_dir / "status.json").read_text())["stage"] == "completed"
