"""A tiny job: the tiny model, a small JSONL data set and a reward with real spread."""

from __future__ import annotations

import json
from pathlib import Path

from openrft.config import JobConfig, load_config

REWARD_FILE = '''
def reward(response, item):
    """Reward short answers containing the reference letter: spread within every group."""
    letter = item["reference_answer"]
    return {"has_letter": float(letter in response), "brevity": 1.0 / (1 + len(response))}


def flaky(response, item):
    if len(response) % 3 == 0:
        raise ValueError("grader crashed on purpose")
    return 1.0 / (1 + len(response))
'''


def write_dataset(directory: Path, rows: int = 24) -> Path:
    path = directory / "train.jsonl"
    letters = "abcdefgh"
    with path.open("w") as f:
        for i in range(rows):
            row = {
                "messages": [{"role": "user", "content": f"say the letter {letters[i % 8]} {i}"}],
                "reference_answer": letters[i % 8],
                "topic": "letters",
            }
            f.write(json.dumps(row) + "\n")
    return path


def tiny_job(tmp_path: Path, model_dir: Path, *overrides: str, grader: str = "reward") -> JobConfig:
    reward_file = tmp_path / "reward_fn.py"
    reward_file.write_text(REWARD_FILE)
    data = write_dataset(tmp_path)
    return load_config(
        None,
        [
            f'model.name="{model_dir}"',
            f'data.train_file="{data}"',
            "data.validation_size=4",
            f'reward.grader="{reward_file}:{grader}"',
            "rollout.samples_per_prompt=4",
            "rollout.max_new_tokens=6",
            "train.prompts_per_step=2",
            "train.micro_batch_size=4",
            "train.max_steps=3",
            "train.learning_rate=1e-3",
            "train.threads=1",
            "eval.interval=2",
            "checkpoint.interval=1",
            *overrides,
        ],
    )


def config_file(tmp_path: Path, config: JobConfig) -> Path:
    from openrft.config import dump_config

    path = tmp_path / "job.toml"
    dump_config(config, path)
    return path
