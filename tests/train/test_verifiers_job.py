"""A verifiers taskset as a job on the tiny model: its tasks are the rows, verifiers (in its
own venv) runs and scores the episodes, the job trains on its branches."""

from __future__ import annotations

import json

from verifiers_env import TASKSETS, VERIFIERS_PYTHON, needs_verifiers

from openrft.train.loop import train

from .helpers import tiny_job


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@needs_verifiers
def test_a_verifiers_job_trains_on_its_tasksets_episodes(tmp_path, tiny_model_dir):
    config = tiny_job(
        tmp_path,
        tiny_model_dir,
        f'env.verifiers="{TASKSETS / "tiny_vf"}"',
        "env.verifiers_args={num_tasks = 6, tools = false}",  # the tiny template has no tools
        f'env.verifiers_python="{VERIFIERS_PYTHON}"',
        "env.max_turns=2",
        "data.validation_size=2",
        "train.max_steps=2",
        "checkpoint.interval=0",
    )
    run_dir = tmp_path / "run"
    train(config, run_dir, show_progress=False)
    metrics = read(run_dir / "metrics.jsonl")
    step = metrics[1]
    # Every episode scored by the taskset's own reward (never a failure read as 0).
    assert step["reward/error_rate"] == 0
    # The 6-token cap cuts most replies: verifiers' truncation, kept as the episode's finish.
    assert step["episode/finish/stop"] + step["episode/finish/length"] == 1.0
    assert "reward/correct/mean" in step and step["reward/reply_chars/mean"] >= 0
    assert step["train/tokens_trained"] > 0
    assert "val/reward/mean" in metrics[0]  # validation runs the taskset too
    rollout = read(run_dir / "rollouts.jsonl")[0]
    assert rollout["example_id"].startswith("tiny_vf:")
    completion = rollout["completions"][0]
    assert completion["messages"][-1]["role"] == "assistant"
    assert set(completion["components"]) >= {"correct", "reply_chars"}
