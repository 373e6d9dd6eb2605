"""Two real GRPO steps with SmolLM2-135M-Instruct on SST-2 (marked: slower, CI runs it)."""

from __future__ import annotations

import json
import math

import pytest

from openrft.config import load_config
from openrft.train.loop import train

RECIPE = "openrft/recipes/sst2-smollm2.toml"


@pytest.mark.real_model
def test_two_real_steps_on_sst2(tmp_path):
    config = load_config(
        RECIPE,
        [
            "train.max_steps=2",
            "train.prompts_per_step=2",
            "rollout.samples_per_prompt=4",
            "eval.max_prompts=8",
            "checkpoint.interval=1",
        ],
    )
    summary = train(config, tmp_path / "run", show_progress=False)
    metrics = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    for record in metrics[1:]:
        assert math.isfinite(record["loss/total"]) and 0 <= record["reward/mean"] <= 1
        assert record["reward/error_rate"] == 0
    assert 0 <= summary.val_before <= 1 and 0 <= summary.val_after <= 1
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").exists()
