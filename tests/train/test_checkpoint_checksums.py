"""Checkpoint checksums: every file of a checkpoint is in its checksums.json; a truncated,
changed or missing file is found at resume, and the run resumes from the checkpoint before
it, saying so, instead of failing or training on a damaged state."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from openrft.errors import CheckpointError
from openrft.train.checkpoint import CHECKSUMS, checkpoint_problem, list_checkpoints
from openrft.train.loop import train

from .helpers import tiny_job

pytestmark = pytest.mark.usefixtures("one_thread")


def steps_of(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r.get("step", 0) > 0 and "loss/total" in r]


@pytest.fixture
def run(tmp_path, tiny_model_dir):
    """A 3-step run with checkpoints at steps 2 and 3, and its config."""
    config = tiny_job(tmp_path, tiny_model_dir, "eval.interval=0")
    train(config, tmp_path / "run", show_progress=False)
    return tmp_path / "run", config


def test_every_file_is_summed_and_damage_is_named(run):
    run_dir, _ = run
    latest = list_checkpoints(run_dir)[-1]
    sums = json.loads((latest / CHECKSUMS).read_text())
    files = {str(p.relative_to(latest)) for p in latest.rglob("*") if p.is_file()}
    assert set(sums) == files - {CHECKSUMS} and "optimizer.pt" in sums
    assert checkpoint_problem(latest) is None
    optimizer = latest / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])  # truncated
    assert "optimizer.pt does not match" in checkpoint_problem(latest)
    (latest / "rng.pt").unlink()
    assert checkpoint_problem(latest) in ("rng.pt is missing", "optimizer.pt does not match "
                                          "its checksum (truncated or changed)")  # fmt: skip


def test_a_damaged_latest_checkpoint_resumes_from_the_one_before(run):
    run_dir, config = run
    step_2, step_3 = list_checkpoints(run_dir)
    weights = step_3 / "model" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # a copy cut short
    (run_dir / "final").rename(run_dir / "final-old")  # let the finished run resume
    longer = replace(config, train=replace(config.train, max_steps=4))
    summary = train(longer, run_dir, resume=True, show_progress=False)
    assert summary.steps == 4
    assert steps_of(run_dir) == [1, 2, 3, 4]  # step 3 trained again from step 2's state
    notes = json.loads((run_dir / "summary.json").read_text())["checkpoints_skipped"]
    assert notes == ["step-3 is damaged (model/adapter_model.safetensors does not match its "
                     "checksum (truncated or changed))"]  # fmt: skip
    assert checkpoint_problem(list_checkpoints(run_dir)[-1]) is None  # step-4, sound


def test_no_sound_checkpoint_is_an_error_naming_each(run):
    run_dir, config = run
    for checkpoint in list_checkpoints(run_dir):
        (checkpoint / "scheduler.pt").write_bytes(b"")
    (run_dir / "final").rename(run_dir / "final-old")
    with pytest.raises(CheckpointError, match="step-3 is damaged .*step-2 is damaged"):
        train(config, run_dir, resume=True, show_progress=False)
