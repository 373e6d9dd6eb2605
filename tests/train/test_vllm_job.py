"""A whole job with rollout.engine = "vllm": openrft starts the vLLM server from the config,
syncs the LoRA adapter after every update, logs the probe, and stops the server at the end."""

from __future__ import annotations

import json
import math

import psutil
from tiny_model import make_tiny_model_dir
from vllm_env import VLLM_COMMAND, needs_vllm

from openrft.metrics import names
from openrft.train.loop import train

from .helpers import tiny_job


def vllm_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "vllm" in " ".join(p.cmdline())]


@needs_vllm
def test_a_job_rolls_out_with_a_vllm_server_it_starts_and_stops(tmp_path):
    model_dir = make_tiny_model_dir(tmp_path / "model", head_dim=32)
    config = tiny_job(
        tmp_path,
        model_dir,
        "rollout.engine=vllm",
        f"vllm.command={json.dumps(VLLM_COMMAND)}",
        "vllm.max_model_len=512",
        "train.max_steps=2",
    )
    summary = train(config, tmp_path / "run", show_progress=False)
    assert summary.status == "completed" and summary.steps == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    steps = [r for r in records if r["step"] > 0]
    assert len(steps) == 2
    for record in steps:
        assert record[names.PROBE_GAP] < 1e-3  # vLLM computes the trainer's float32 model
        assert math.isfinite(record[names.PROBE_SHIFT])  # and followed its update
        assert 0 <= record["reward/mean"] <= 1
        if record["train/sequences_trained"]:  # the mismatch is measured on trained tokens
            assert abs(record[names.SAMPLER_KL]) < 1e-3  # float32 on both sides
            assert record[names.SAMPLER_CORRECTED] == 0
    log = (tmp_path / "run" / "vllm.log").read_text()
    assert "load_lora_adapter" in log  # the adapter was hot-loaded, not the base re-read
    assert vllm_children() == []  # the server the job started is gone
