"""Two real GRPO steps of a tool-using job: Qwen2.5-Coder-0.5B-Instruct with the built-in
calculator on built-in arithmetic rows (marked: slower, CI runs it)."""

from __future__ import annotations

import json
import math

import pytest

from openrft.config import load_config
from openrft.train.loop import train

RECIPE = "openrft/recipes/calculator-tools-qwen.toml"


@pytest.mark.real_model
def test_two_real_steps_with_a_calculator(tmp_path):
    config = load_config(
        RECIPE,
        [
            "model.dtype=float32",  # CI's CPU may lack bf16 arithmetic
            "rollout.dtype=model",
            "train.max_steps=2",
            "train.prompts_per_step=2",
            "rollout.samples_per_prompt=2",
            "rollout.max_new_tokens=72",  # room for a chain's two calls as JSON lines
            "env.max_turns=2",
            "algo.dynamic_sampling=false",
            "eval.max_prompts=2",
            "eval.interval=2",
            "checkpoint.interval=0",
        ],
    )
    train(config, tmp_path / "run", show_progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    for record in metrics[1:]:
        assert math.isfinite(record["loss/total"]) and record["reward/error_rate"] == 0
        assert 1 <= record["episode/turns_mean"] <= 2
        assert record["episode/tool_calls_mean"] > 0  # the model calls the calculator
    rollouts = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").open()]
    calls = [
        m for r in rollouts for c in r["completions"] for m in c["messages"]
        if m.get("tool_calls")
    ]  # fmt: skip
    assert calls and calls[0]["tool_calls"][0]["function"]["name"] in ("multiply", "add")
    assert any(m["role"] == "tool" for r in rollouts for c in r["completions"]
               for m in c["messages"])  # fmt: skip
