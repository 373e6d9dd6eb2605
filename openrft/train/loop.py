"""The RL training loop, top to bottom: sample prompts, roll out G completions each, grade,
compute group-relative advantages, update the policy, log, validate, checkpoint.

    summary = train(load_config("recipes/sst2-smollm2.toml"), Path("runs/demo"))

Every step seeds its own RNGs from (seed, step), so a run resumed from a checkpoint
produces the same steps as one that was never interrupted.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch

from openrft.config import JobConfig, dump_config
from openrft.errors import CheckpointError, NoLearningSignal
from openrft.evaluation.baseline import baseline
from openrft.evaluation.evaluate import evaluate
from openrft.metrics import names
from openrft.metrics.report import write_report
from openrft.metrics.writer import JsonlLog
from openrft.rewards import build_grader
from openrft.rewards.grader import with_batch_timeout
from openrft.rollout.engine import RolloutEngine
from openrft.train.checkpoint import (
    TrainPosition,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from openrft.train.data_setup import JobData, batch_for_step, load_job_data, total_steps
from openrft.train.engines import build_engine
from openrft.train.optim import build_optimizer
from openrft.train.policy import Policy, build_policy, set_threads
from openrft.train.progress import Progress
from openrft.train.rollouts import (
    assign_advantages,
    collect_groups,
    completion_metrics,
    reward_metrics,
    rollout_records,
)
from openrft.train.status import write_status
from openrft.train.update import UpdateStats, train_rows, update_policy
from openrft.types import SamplingParams


@dataclass(frozen=True)
class RunSummary:
    val_before: float | None
    val_after: float | None
    steps: int
    wall_s: float
    run_dir: str
    report: str
    status: str = "completed"  # or "stopped": a stop request ended it after a checkpoint


class StopRequest(Protocol):
    def is_set(self) -> bool: ...


def train(
    config: JobConfig,
    run_dir: Path,
    resume: bool = False,
    show_progress: bool = True,
    stop: StopRequest | None = None,
) -> RunSummary:
    """Run (or resume) a job. When `stop` is set, the current step finishes, a checkpoint is
    written, and the run returns with status "stopped" (resume it later)."""
    started = time.monotonic()
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(config, run_dir / "config.toml")
    set_threads(config.train.threads)
    torch.manual_seed(config.train.seed)

    write_status(run_dir, "loading", message=f"loading {config.model.name}")
    policy = build_policy(config)
    write_status(run_dir, "data_processing", message=f"validating {config.data.train_file}")
    data = load_job_data(config, policy.tokenizer)
    grader = with_batch_timeout(
        build_grader(config.reward.grader, config.reward.timeout_s), config.reward.batch_timeout_s
    )
    # The engine may be a vLLM server this job started: it is stopped however the job ends.
    engine = build_engine(config, policy, data.prompt_ids[data.train[0].id], run_dir)
    try:
        return run_steps(
            config, run_dir, policy, data, grader, engine, resume, show_progress, stop, started
        )
    finally:
        engine.close()


def run_steps(
    config: JobConfig,
    run_dir: Path,
    policy: Policy,
    data: JobData,
    grader,
    engine: RolloutEngine,
    resume: bool,
    show_progress: bool,
    stop: StopRequest | None,
    started: float,
) -> RunSummary:
    """The steps of `train` once its policy, data, grader and engine exist."""
    steps = total_steps(config, len(data.train))
    passes = config.algo.update_epochs * config.train.mini_batches
    optimizer, scheduler = build_optimizer(
        policy.trainable_parameters(), config.train, steps * passes
    )

    position = TrainPosition(step=0, prompts_seen=0, val_before=None, wall_s=0.0)
    checkpoints = list_checkpoints(run_dir) if resume else []
    if checkpoints:
        position = load_checkpoint(checkpoints[-1], policy, optimizer, scheduler)
        engine.sync_weights(policy.model)  # a sampling copy was made from the pre-load weights
    elif resume and (run_dir / "final").exists():
        raise CheckpointError(f"{run_dir} finished already and has no checkpoint to resume from")
    prior_wall_s = position.wall_s  # time spent by earlier, interrupted sessions of this run
    # Lines after the checkpoint (or every line, without one) belong to lost work.
    keep_through = position.step if checkpoints else -1
    metrics_log = JsonlLog(run_dir / "metrics.jsonl", keep_through_step=keep_through)
    rollouts_log = JsonlLog(run_dir / "rollouts.jsonl", keep_through_step=keep_through)

    if position.step == 0:
        write_status(run_dir, "validation", 0, steps, "validating the starting model")
        validation = validate(engine, data, config, grader, step=0)
        if config.eval.baseline_prompts:
            write_status(run_dir, "validation", 0, steps, "Step-0 baseline: can GRPO learn here?")
            validation.update(step_zero_baseline(engine, data, config, grader, run_dir))
        metrics_log.write({names.STEP: 0, names.EPOCH: 0.0, **validation})
        position = replace(position, val_before=validation[names.VAL_REWARD_MEAN])
    val_after = position.val_before

    progress = Progress(steps, position.step, position.val_before, enabled=show_progress)
    status = "completed"
    for step in range(position.step + 1, steps + 1):
        write_status(run_dir, "training", step - 1, steps)
        step_started = time.monotonic()
        torch.manual_seed(config.train.seed * 1_000_003 + step)
        examples = batch_for_step(step, data, config)
        params = sampling_params(config, seed=config.train.seed * 1_000_003 + step)
        prompt_ids = [data.prompt_ids[e.id] for e in examples]
        groups, timing = collect_groups(engine, examples, prompt_ids, params, grader)
        assign_advantages(groups, config.algo.advantage_scaling, config.reward.error_score)

        update_started = time.monotonic()
        stats = update_policy(
            policy,
            train_rows(groups, config.algo.mask_truncated),
            optimizer,
            scheduler,
            config.algo,
            config.train,
            config.rollout.max_new_tokens,
        )
        sync_metrics = engine.sync_weights(policy.model)
        step_s = time.monotonic() - step_started
        generated = sum(len(c.token_ids) for g in groups for c in g.completions)
        record = {
            names.STEP: step,
            names.EPOCH: step * config.train.prompts_per_step / len(data.train),
            **reward_metrics(groups),
            **completion_metrics(groups),
            names.ENTROPY: stats.entropy,
            names.KL: stats.kl,
            names.CLIP_RATIO: stats.clip_ratio,
            names.LOSS: stats.loss,
            "loss/policy": stats.policy_loss,
            names.GRAD_NORM: stats.grad_norm,
            names.LR: scheduler.get_last_lr()[0],
            "train/sequences_trained": stats.trained_sequences,
            names.STEP_S: step_s,
            names.ROLLOUT_S: timing.rollout_s,
            names.REWARD_S: timing.reward_s,
            names.UPDATE_S: time.monotonic() - update_started,
            names.TOKENS_PER_S: generated / step_s,
            names.PEAK_RSS_GB: peak_rss_gb(),
            **sync_metrics,
            **mismatch_metrics(stats),
        }
        if step == steps or (config.eval.interval and step % config.eval.interval == 0):
            record.update(validate(engine, data, config, grader, step=step))
            val_after = record[names.VAL_REWARD_MEAN]
        metrics_log.write(record)
        for line in rollout_records(groups, step):
            rollouts_log.write(line)
        position = TrainPosition(
            step=step,
            prompts_seen=step * config.train.prompts_per_step,
            val_before=position.val_before,
            wall_s=prior_wall_s + time.monotonic() - started,
        )
        stopping = stop is not None and stop.is_set() and step < steps
        periodic = config.checkpoint.interval and step % config.checkpoint.interval == 0
        if step == steps or periodic or stopping:
            save_checkpoint(
                run_dir, position, policy, optimizer, scheduler, config, config.checkpoint.keep_last
            )
        progress.update(step, record)
        if stopping:
            status = "stopped"
            break

    progress.close()
    metrics_log.close()
    rollouts_log.close()
    if status == "completed":
        policy.save(run_dir / "final")
    wall_s = prior_wall_s + time.monotonic() - started
    summary = RunSummary(
        position.val_before, val_after, position.step, round(wall_s, 1), str(run_dir), "", status
    )
    report = write_report(run_dir, summary.__dict__)
    summary = replace(summary, report=str(report))
    (run_dir / "summary.json").write_text(json.dumps(summary.__dict__, indent=2))
    write_status(run_dir, status, position.step, steps)
    return summary


def mismatch_metrics(stats: UpdateStats) -> dict[str, float]:
    """The rollout/trainer mismatch, for engines that report their log-probs (vLLM)."""
    if stats.sampler_kl is None:
        return {}
    return {
        names.SAMPLER_KL: stats.sampler_kl,
        names.SAMPLER_WEIGHT: stats.sampler_weight,
        names.SAMPLER_CORRECTED: stats.sampler_corrected,
    }


def validate(
    engine: RolloutEngine, data: JobData, config: JobConfig, grader, step: int
) -> dict[str, float]:
    """Validation on the held-out prompts with the same code as `openrft eval` (greedy unless
    eval.temperature > 0): val/reward/*, val/completion/*, val/pass@k/*."""
    params = SamplingParams(
        n=config.eval.samples_per_prompt,
        temperature=config.eval.temperature,
        top_p=config.rollout.top_p if config.eval.temperature > 0 else 1.0,
        top_k=config.rollout.top_k if config.eval.temperature > 0 else 0,
        max_new_tokens=config.eval.max_new_tokens or config.rollout.max_new_tokens,
        stop=config.rollout.stop,
        seed=config.train.seed + 7_919 * (step + 1),
    )
    prompt_ids = [data.prompt_ids[e.id] for e in data.validation]
    result = evaluate(
        engine, data.validation, prompt_ids, params, grader, config.eval.success_threshold
    )
    return result.log_metrics("val")


def step_zero_baseline(
    engine: RolloutEngine, data: JobData, config: JobConfig, grader, run_dir: Path
) -> dict[str, float]:
    """The baseline check on the first `eval.baseline_prompts` training prompts, sampled as
    training samples them; writes RUN_DIR/baseline.json and returns its baseline/* metrics.
    With `eval.require_signal`, no prompt with differing scores stops the job here."""
    examples = data.train[: config.eval.baseline_prompts]
    prompt_ids = [data.prompt_ids[e.id] for e in examples]
    params = sampling_params(config, seed=config.train.seed * 1_000_003)
    result = baseline(engine, examples, prompt_ids, params, grader, config.eval.success_threshold)
    (run_dir / "baseline.json").write_text(json.dumps(result.to_dict(), indent=2))
    print(f"Step-0 baseline: {result.message}", file=sys.stderr, flush=True)
    if config.eval.require_signal and result.signal_share == 0:
        raise NoLearningSignal(
            f"eval.require_signal: the Step-0 baseline sampled {result.prompts} prompts x "
            f"{result.samples_per_prompt} and no prompt's samples scored differently, so GRPO "
            f"has nothing to learn from ({result.message}); see {run_dir / 'baseline.json'}"
        )
    return {
        "baseline/mean_reward": result.mean_reward,
        "baseline/signal_share": result.signal_share,
        "baseline/all_fail_share": result.all_fail_share,
        "baseline/all_succeed_share": result.all_succeed_share,
    }


def sampling_params(config: JobConfig, seed: int) -> SamplingParams:
    rollout = config.rollout
    return SamplingParams(
        n=rollout.samples_per_prompt,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        top_k=rollout.top_k,
        max_new_tokens=rollout.max_new_tokens,
        stop=rollout.stop,
        seed=seed,
    )


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB
