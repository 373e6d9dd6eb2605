"""A whole job under torchrun with two ranks over gloo: rank 0 rolls out, grades, logs and
checkpoints; both ranks update. Its metrics and final adapter match a single process's run
of the same job (the update math is tests/train/test_data_parallel.py's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from openrft.rollout.vllm_server import free_port
from openrft.train.loop import train
from tests.train.helpers import config_file, tiny_job

pytestmark = pytest.mark.usefixtures("one_thread")


def steps_of(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("step", 0) > 0 and "loss/total" in r]


def test_two_ranks_train_the_job_one_process_would(tmp_path, tiny_model_dir):
    config = tiny_job(tmp_path, tiny_model_dir, "train.max_steps=2", "eval.interval=0",
                      "train.micro_batch_size=2")  # fmt: skip
    path = config_file(tmp_path, config)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", str(free_port()), "-m", "openrft.cli", "train", str(path),
         "--output", str(tmp_path / "group"), "--no-progress"],
        env=environment, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("validation reward") == 1  # rank 0 reports, rank 1 does not

    train(config, tmp_path / "single", show_progress=False)
    group, single = steps_of(tmp_path / "group"), steps_of(tmp_path / "single")
    assert [r["step"] for r in group] == [1, 2]
    for ours, theirs in zip(group, single, strict=True):
        assert ours["reward/mean"] == theirs["reward/mean"]
        assert ours["train/tokens_trained"] == theirs["train/tokens_trained"]
        assert ours["loss/total"] == pytest.approx(theirs["loss/total"], rel=1e-4, abs=1e-6)
        assert ours["optim/grad_norm"] == pytest.approx(theirs["optim/grad_norm"], rel=1e-4)
    adapter = "final/adapter_model.safetensors"
    ours, theirs = load_file(tmp_path / "group" / adapter), load_file(tmp_path / "single" / adapter)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-6)
