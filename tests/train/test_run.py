"""The run scaffold RL and SFT share: the best checkpoints kept beside the last ones, final/
from the best or the last, early stopping, and resume of that bookkeeping; driven with a
real tiny policy and chosen validation values."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from openrft.config import load_config
from openrft.errors import ConfigError
from openrft.train.optim import build_optimizer
from openrft.train.policy import build_policy
from openrft.train.run import RL, SFT, Run
from openrft.train.sft import train_sft

from .helpers import tiny_job

VAL = "val/reward/mean"


def drive(tmp_path, model_dir, values, *overrides, run_dir=None, resume=False, crash_after=0):
    """A run of len(values) steps validated every step with `values` (None: no value), the
    adapter's B matrices set to the step number so checkpoints can be told apart."""
    config = tiny_job(tmp_path, model_dir, f"train.max_steps={len(values)}", "eval.interval=1",
                      "checkpoint.interval=0", *overrides)  # fmt: skip
    policy = build_policy(config)
    optimizer, scheduler = build_optimizer(policy.trainable_parameters(), config.train, 10)
    run = Run(config, run_dir or tmp_path / "run", RL, resume, show_progress=False)
    run.restore(policy, optimizer, scheduler, len(values))
    markers = [p for n, p in policy.model.named_parameters() if "lora_B" in n]
    if run.position.step == 0:
        run.log_start({VAL: 0.0})
    for step in run.steps():
        with torch.no_grad():
            for marker in markers:
                marker.fill_(step)
        record = {"step": step, "reward/mean": 0.5}
        if values[step - 1] is not None:
            record[VAL] = values[step - 1]
        run.end_step(step, record, step * 2, policy, optimizer, scheduler)
        if step == crash_after:
            raise KeyboardInterrupt  # the process dies here
    return run.finish(policy), run.run_dir


def marker_of(directory) -> float:
    weights = load_file(directory / "adapter_model.safetensors")
    return next(v for k, v in sorted(weights.items()) if "lora_B" in k).flatten()[0].item()


def test_the_best_checkpoints_are_kept_beside_the_last_and_listed(tmp_path, tiny_model_dir):
    values = [0.2, 0.9, 0.4, 0.7, 0.1, 0.3]
    summary, run_dir = drive(
        tmp_path, tiny_model_dir, values, "checkpoint.keep_best=2", "checkpoint.keep_last=1"
    )
    kept = sorted(int(p.name[5:]) for p in (run_dir / "checkpoints").iterdir())
    assert kept == [2, 4, 6]  # best 0.9 (step 2) and 0.7 (step 4), and the last
    assert summary.best_step == 2 and summary.best_value == 0.9
    listing = json.loads((run_dir / "summary.json").read_text())["checkpoints"]
    assert [(c["step"], c["metric"], c["best"]) for c in listing] == [
        (2, 0.9, True), (4, 0.7, True), (6, 0.3, False),
    ]  # fmt: skip
    assert marker_of(run_dir / "final") == 6.0  # final/ holds the last weights by default
    assert "| 2 | 0.900 | yes |" in (run_dir / "report.md").read_text()


def test_final_can_hold_the_best_checkpoint(tmp_path, tiny_model_dir):
    summary, run_dir = drive(
        tmp_path, tiny_model_dir, [0.2, 0.9, 0.4], "checkpoint.keep_best=1", "checkpoint.final=best"
    )
    assert marker_of(run_dir / "final") == 2.0 and summary.best_step == 2


def test_early_stopping_after_patience_validations_without_a_new_best(tmp_path, tiny_model_dir):
    values = [0.5, 0.6, 0.6, 0.55, 0.9, 1.0]
    summary, run_dir = drive(tmp_path, tiny_model_dir, values, "train.early_stop_patience=2")
    # Best 0.6 at step 2; steps 3 and 4 do not beat it: stop after step 4.
    assert summary.steps == 4 and summary.stop_reason == "early_stop"
    assert summary.status == "completed" and (run_dir / "final").exists()
    assert (run_dir / "checkpoints" / "step-4").exists()
    assert json.loads((run_dir / "status.json").read_text())["stage"] == "completed"


def test_best_bookkeeping_survives_a_resume(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    config = ["train.early_stop_patience=3", "checkpoint.keep_best=1"]
    values = [0.5, 0.8, 0.6, 0.7, 0.7, 0.9]
    with pytest.raises(KeyboardInterrupt):  # a crash after step 3's checkpoint
        drive(tmp_path, tiny_model_dir, values, *config, run_dir=run_dir, crash_after=3)
    state = json.loads((run_dir / "checkpoints" / "step-3" / "state.json").read_text())
    assert (state["best_value"], state["best_step"], state["validations_since_best"]) == (0.8, 2, 1)
    summary, _ = drive(tmp_path, tiny_model_dir, values, *config, run_dir=run_dir, resume=True)
    assert summary.steps == 5 and summary.stop_reason == "early_stop"  # 0.6, 0.7, 0.7


def test_a_best_metric_that_is_never_logged_is_named(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="'val/nothing' was not logged at validation step 0"):
        drive(tmp_path, tiny_model_dir, [0.1], "checkpoint.keep_best=1",
              'checkpoint.best_metric="val/nothing"')  # fmt: skip


def test_sft_ranks_by_its_own_loss_lower_first(tmp_path, tiny_model_dir):
    run = Run(load_config(None), tmp_path / "sft", SFT, False, show_progress=False)
    assert run.best_metric == "val/loss" and not run.maximize
    run = Run(load_config(None), tmp_path / "rl", RL, False, show_progress=False)
    assert run.best_metric == VAL and run.maximize
    assert train_sft  # SFT runs through the same scaffold (tests/train/test_sft.py)
