"""`openrft preflight` and the memory check of `openrft train`: a config with an absurd batch
is refused before any model loads, naming the knob (the job server's check:
tests/api/test_preflight_api.py)."""

from __future__ import annotations

import json

import tomli_w

from openrft.cli import main

ABSURD = {"train": {"micro_batch_size": 64}, "rollout": {"max_new_tokens": 1_000_000}}
KNOBS = ("train.micro_batch_size", "rollout.max_new_tokens")


def job_config(directory, model_dir) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"say {i}"}], "reference_answer": "a"}
            for i in range(12)]  # fmt: skip
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {
        "name": "tiny",
        "model": {"name": str(model_dir)},
        "data": {"train_file": str(data), "validation_size": 4},
        "reward": {"grader": "exact_label"},
        "rollout": {"samples_per_prompt": 4, "max_new_tokens": 6},
        "train": {"prompts_per_step": 2, "micro_batch_size": 4, "max_steps": 3, "threads": 1},
        "eval": {"interval": 0},
    }


def write_config(path, config: dict):
    path.write_text(tomli_w.dumps(config))
    return path


def _absurd(config: dict) -> dict:
    for section, values in ABSURD.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def test_preflight_prints_the_breakdown_and_fits(tmp_path, tiny_model_dir, capsys):
    path = write_config(tmp_path / "job.toml", job_config(tmp_path / "job", tiny_model_dir))
    assert main(["preflight", str(path), "--no-calibrate"]) == 0
    out = capsys.readouterr().out
    assert "KV cache" in out and "activations" in out and "fits" in out


def test_preflight_json_with_calibration(tmp_path, tiny_model_dir, capsys):
    path = write_config(tmp_path / "job.toml", job_config(tmp_path / "job", tiny_model_dir))
    assert main(["preflight", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fits"] and report["peak_bytes"] == max(report["phases"].values())
    timing = report["time"]
    assert timing["steps"] == 3 and timing["step_s"] > 0 and timing["total_s"] > 0
    assert report["prompt_basis"].startswith("the longest of the first")


def test_preflight_refuses_an_absurd_batch_naming_the_knob(tmp_path, tiny_model_dir, capsys):
    path = write_config(tmp_path / "job.toml", job_config(tmp_path / "job", tiny_model_dir))
    sets = ["--set", "train.micro_batch_size=64", "--set", "rollout.max_new_tokens=1000000"]
    assert main(["preflight", str(path), *sets]) == 1  # refused before calibrating
    err = capsys.readouterr().err
    assert "will not fit" in err and any(f"lower {knob} from" in err for knob in KNOBS)
    assert main(["preflight", str(path), *sets, "--json", "--no-calibrate"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["fits"] and report["advice"] and report["time"] is None


def test_train_refuses_before_loading_the_model(tmp_path, tiny_model_dir, capsys):
    path = write_config(
        tmp_path / "job.toml", _absurd(job_config(tmp_path / "job", tiny_model_dir))
    )
    run_dir = tmp_path / "run"
    assert main(["train", str(path), "--output", str(run_dir), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert any(f"config field '{knob}'" in err for knob in KNOBS), err
    assert "preflight.check = false" in err
    status = json.loads((run_dir / "status.json").read_text())
    assert status["stage"] == "failed" and not (run_dir / "checkpoints").exists()
