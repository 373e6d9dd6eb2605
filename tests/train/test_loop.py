"""End-to-end runs of the training loop on the tiny model: outputs, variants, grader errors."""

from __future__ import annotations

import json
import math

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from openrft.train.loop import train

from .helpers import tiny_job

REQUIRED_KEYS = [
    "step", "epoch", "reward/mean", "reward/std", "reward/min", "reward/max",
    "reward/frac_zero_std_groups", "reward/error_rate", "completion/length_mean",
    "completion/length_max", "completion/truncated_ratio", "policy/entropy", "policy/kl",
    "policy/clip_ratio", "loss/total", "optim/grad_norm", "optim/lr", "time/step_s",
    "time/rollout_s", "time/reward_s", "time/update_s", "throughput/completion_tokens_per_s",
    "memory/peak_rss_gb",
]  # fmt: skip


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_writes_every_output(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    summary = train(tiny_job(tmp_path, tiny_model_dir), run_dir, show_progress=False)

    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    assert "val/reward/mean" in metrics[0]  # step 0 validates the starting model
    for record in metrics[1:]:
        missing = [k for k in REQUIRED_KEYS if k not in record]
        assert not missing, missing
        assert "reward/has_letter/mean" in record and "reward/brevity/mean" in record
        assert math.isfinite(record["loss/total"]) and record["reward/error_rate"] == 0
    assert "val/reward/mean" in metrics[2] and "val/reward/mean" in metrics[3]

    rollouts = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 3 * 2  # steps x prompts per step
    first = rollouts[0]["completions"]
    assert len(first) == 4 and {"text", "finish_reason", "score", "components", "advantage"} <= set(
        first[0]
    )

    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-2", "step-3"]
    checkpoint = run_dir / "checkpoints" / "step-3"
    for name in ["optimizer.pt", "scheduler.pt", "rng.pt", "state.json", "config.toml"]:
        assert (checkpoint / name).exists(), name
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 3

    summary_file = json.loads((run_dir / "summary.json").read_text())
    assert summary_file["steps"] == 3 and summary_file["val_before"] == summary.val_before
    assert {"val_before", "val_after", "wall_s", "report"} <= set(summary_file)
    usage = summary_file["usage"]  # each step's usage/* summed (openrft.metrics.usage)
    for name in ("prompt_tokens", "sampled_tokens", "trained_tokens", "graded_samples"):
        assert usage[name] == sum(m[f"usage/{name}"] for m in metrics[1:]) > 0, name
    assert usage["graded_samples"] == 3 * 2 * 4  # steps x prompts x samples
    assert usage["sampled_tokens"] <= 3 * 2 * 4 * 6  # at most max_new_tokens each
    assert usage["judge_prompt_tokens"] == usage["tool_calls"] == 0
    report = (run_dir / "report.md").read_text()
    assert "reward.png" in report and (run_dir / "reward.png").stat().st_size > 1000
    assert (run_dir / "config.toml").exists()

    # final/ is a PEFT adapter that peft loads onto the base model
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = PeftModel.from_pretrained(base, run_dir / "final")
    assert any("lora" in name for name, _ in tuned.named_parameters())


def test_training_changes_the_adapter(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    train(tiny_job(tmp_path, tiny_model_dir, "train.max_steps=2"), run_dir, show_progress=False)
    metrics = read_metrics(run_dir)
    assert any(m.get("optim/grad_norm", 0) > 0 for m in metrics[1:])


@pytest.mark.parametrize(
    "overrides",
    [
        ["lora.enabled=false", "algo.kl_coef=0.1"],  # full fine-tuning with a frozen reference
        ["algo.kl_coef=0.05", "algo.kl_estimator=k1", "algo.entropy_coef=0.01"],
        ["algo.update_epochs=2", "train.mini_batches=2", "algo.loss_aggregation=sequence_mean"],
        [
            "algo.loss_aggregation=constant",
            "algo.advantage_scaling=none",  # the old name of algo.advantage = "drgrpo"
            "algo.mask_truncated=true",
        ],
        [
            "algo.advantage=reinforce_pp_baseline",
            "train.lr_schedule=cosine",
            "train.warmup_steps=1",
        ],
        ["algo.advantage=rloo", "algo.policy_loss=gspo", "algo.loss_aggregation=sequence_mean"],
        ["algo.advantage=reinforce_pp", "algo.policy_loss=cispo", "algo.clip_low=1.0"],
        ["algo.advantage=grpo_per_turn", "algo.policy_loss=importance_sampling"],
        ["train.fast_paths=off", "algo.kl_coef=0.05"],
    ],
)
def test_algorithm_variants_run(tmp_path, tiny_model_dir, overrides):
    run_dir = tmp_path / "run"
    config = tiny_job(tmp_path, tiny_model_dir, "train.max_steps=2", "eval.interval=0", *overrides)
    train(config, run_dir, show_progress=False)
    metrics = read_metrics(run_dir)[1:]
    for record in metrics:
        assert math.isfinite(record["loss/total"])
        if config.algo.kl_coef > 0:
            assert record["policy/kl"] is not None and math.isfinite(record["policy/kl"])
            if config.algo.kl_estimator == "k3":  # k3 is never negative; k1 only in expectation
                assert record["policy/kl"] >= -1e-6
        else:
            assert record["policy/kl"] is None  # no reference forward when KL is off


def test_dynamic_sampling_and_overlong_shaping_are_logged(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    config = tiny_job(
        tmp_path, tiny_model_dir, "train.max_steps=2", "eval.interval=0",
        "algo.dynamic_sampling=true", "algo.dynamic_sampling_max_rounds=2",
        "algo.overlong_buffer=3", 'reward.grader="exact_label"',  # mostly flat groups
    )  # fmt: skip
    train(config, run_dir, show_progress=False)
    for record in read_metrics(run_dir)[1:]:
        assert record["rollout/sampling_rounds"] in (1, 2)
        assert record["rollout/prompts_sampled"] >= 2
        assert record["reward/dropped_groups"] >= 0
        penalty = record["reward/overlong_penalty_mean"]  # null: no group was trained on
        assert penalty is None or penalty <= 0
    rollouts = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    dropped = [r for r in rollouts if not r["trained"]]
    assert len(dropped) == sum(m["reward/dropped_groups"] for m in read_metrics(run_dir)[1:])
    assert all(c["advantage"] is None for r in dropped for c in r["completions"])
    assert all(r["policy_version"] == r["step"] - 1 for r in rollouts)


def test_grader_failures_are_counted_not_zeroed(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    config = tiny_job(tmp_path, tiny_model_dir, "train.max_steps=2", grader="flaky")
    train(config, run_dir, show_progress=False)
    metrics = read_metrics(run_dir)[1:]
    rollouts = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    failed = [c for r in rollouts for c in r["completions"] if c["error"] is not None]
    assert failed, "the flaky grader should fail on some completions"
    for completion in failed:
        assert completion["error"]["kind"] == "runtime_error"
        assert "crashed on purpose" in completion["error"]["message"]
        assert completion["score"] is None and completion["advantage"] is None
    total_errors = sum(m.get("reward/errors/runtime_error", 0) for m in metrics)
    assert total_errors == len(failed)
    assert any(m["reward/error_rate"] > 0 for m in metrics)


def test_error_score_trains_on_failed_samples(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    config = tiny_job(
        tmp_path, tiny_model_dir, "train.max_steps=1", "reward.error_score=-1.0", grader="flaky"
    )
    train(config, run_dir, show_progress=False)
    rollouts = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    failed = [c for r in rollouts for c in r["completions"] if c["error"] is not None]
    assert failed and all(c["advantage"] is not None for c in failed)


def test_the_step_zero_baseline_runs_at_job_start(tmp_path, tiny_model_dir):
    config = tiny_job(tmp_path, tiny_model_dir, "train.max_steps=1", "eval.baseline_prompts=3")
    train(config, tmp_path / "run", show_progress=False)
    report = json.loads((tmp_path / "run" / "baseline.json").read_text())
    assert report["prompts"] == 3 and report["samples_per_prompt"] == 4
    assert report["advice"] in ("go", "sft_first", "rft_unnecessary") and report["message"]
    step0 = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert step0["baseline/mean_reward"] == pytest.approx(report["mean_reward"])
    assert step0["baseline/signal_share"] == report["signal_share"]
    # The rubric's brevity term differs between samples: every group carries signal.
    assert report["signal_share"] == 1.0


def test_require_signal_refuses_a_job_grpo_cannot_learn(tmp_path, tiny_model_dir):
    from openrft.errors import NoLearningSignal

    # Random tiny weights never say the bare label: every sample scores 0, no signal.
    config = tiny_job(
        tmp_path, tiny_model_dir, 'reward.grader="exact_label"', "eval.require_signal=true"
    )
    with pytest.raises(NoLearningSignal, match="no prompt's samples scored differently"):
        train(config, tmp_path / "run", show_progress=False)
    assert json.loads((tmp_path / "run" / "baseline.json").read_text())["signal_share"] == 0
    assert not (tmp_path / "run" / "final").exists()
    off = tiny_job(tmp_path, tiny_model_dir, "train.max_steps=1", "eval.baseline_prompts=0")
    train(off, tmp_path / "off", show_progress=False)
    assert not (tmp_path / "off" / "baseline.json").exists()
