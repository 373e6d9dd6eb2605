"""A full disk in the middle of a run: a real `openrft train` writing into a small tmpfs that
its own grader fills once checkpoint step-1 exists. Filled to the last byte, the metrics line
of step 2 cannot be written; with a little room left, the metrics fit but checkpoint step-2
does not. Either way the run fails with a message naming the file and the free space, the
step-1 checkpoint passes its checksums, no half-written checkpoint is left, and once space is
freed the run resumes and ends with every step logged exactly once. Needs `mount` (root);
skipped where tmpfs cannot be mounted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from openrft.jobs.workers import failure_message
from openrft.train.checkpoint import checkpoint_problem, list_checkpoints

from .helpers import config_file, tiny_job

# The grader of tests/train/helpers.py, plus: the first call after checkpoint step-1 exists
# (or, FILL_AFTER=metrics, after step 1 is logged) fills the disk with a ballast file, leaving
# FILL_LEAVE bytes.
FILLING_REWARD = """
import os
from pathlib import Path

RUN = Path(os.environ["FILL_RUN_DIR"])
BALLAST = Path(os.environ["FILL_BALLAST"])
DONE = Path(os.environ["FILL_DONE"])


def fill(leave):
    with BALLAST.open("ab") as f:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"x" * size)
                    f.flush()
            except OSError:
                pass
    if leave:
        os.truncate(BALLAST, BALLAST.stat().st_size - leave)


def due():
    if os.environ["FILL_AFTER"] == "checkpoint":
        return (RUN / "checkpoints" / "step-1").exists()
    metrics = RUN / "metrics.jsonl"
    return metrics.exists() and '"step": 1,' in metrics.read_text()


def reward(response, item):
    if not DONE.exists() and due():
        DONE.touch()  # once: the resumed run has the space back
        fill(int(os.environ["FILL_LEAVE"]))
    letter = item["reference_answer"]
    return {"has_letter": float(letter in response), "brevity": 1.0 / (1 + len(response))}
"""


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


# metrics: checkpoints only at the end, the disk filled to the last byte: a log line or
# status.json is the first write that needs a new page. checkpoint: a checkpoint each step
# and 48 KB left, room for the step's log lines but not for checkpoint step-2.
CASES = {
    "metrics": (0, ["train.max_steps=6", "checkpoint.interval=0"]),
    "checkpoint": (48 * 1024, ["train.max_steps=3", "checkpoint.interval=1"]),
}


@pytest.mark.parametrize("failing_write", sorted(CASES))
def test_a_full_disk_fails_clearly_and_the_run_resumes(
    small_disk, tmp_path, tiny_model_dir, failing_write
):
    leave, overrides = CASES[failing_write]
    reward_file = tmp_path / "filling_reward.py"
    reward_file.write_text(FILLING_REWARD)
    config = tiny_job(
        tmp_path, tiny_model_dir, *overrides, "eval.interval=0", "eval.baseline_prompts=0",
        f'reward.grader="{reward_file}:reward"',
    )  # fmt: skip
    run_dir, ballast = small_disk / "run", small_disk / "ballast"
    env = {**os.environ, "FILL_RUN_DIR": str(run_dir), "FILL_BALLAST": str(ballast)}
    env.update(FILL_LEAVE=str(leave), FILL_AFTER=failing_write, FILL_DONE=str(tmp_path / "filled"))
    command = [sys.executable, "-m", "openrft.cli", "train"]
    first = subprocess.run(
        [*command, str(config_file(tmp_path, config)), "--output", str(run_dir), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip

    assert first.returncode == 1, first.stderr
    assert ballast.exists(), "the grader never filled the disk"
    error = first.stderr.strip().splitlines()[-1]
    assert "No space left on device" in error and "MB free on its disk" in error, first.stderr
    if failing_write == "checkpoint":
        assert "could not write checkpoint" in error and "step-2" in error, error
        assert "step-1 is intact: free space and resume the run" in error, error
    else:
        assert f"cannot write {run_dir}/" in error, error  # a log line or status.json
    # What the job server says of this worker (exit code 1): its own error when status.json
    # could be written, else that the disk is full.
    reported = failure_message(1, run_dir)
    assert "No space left on device" in reported or "is full" in reported, reported

    checkpoints = list_checkpoints(run_dir)
    assert [c.name for c in checkpoints] == (["step-1"] if failing_write == "checkpoint" else [])
    assert all(checkpoint_problem(c) is None for c in checkpoints)
    assert not list(run_dir.glob("checkpoints/.step-*")), "a half-written checkpoint"

    ballast.unlink()
    resumed = subprocess.run(
        [*command, "--resume", str(run_dir), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    steps = config.train.max_steps
    assert [json.loads(line)["step"] for line in lines] == list(range(steps + 1))
    assert checkpoint_problem(list_checkpoints(run_dir)[-1]) is None
