"""The RL training loop, top to bottom. One step: roll out G completions for each prompt and
grade them, turn rewards into advantages, update the policy on the rows, sync the sampler's
weights, log. Validation, checkpoints, resume and the report are the run scaffold's
(openrft.train.run); the math is openrft.algo's, picked by name from its registry.

    summary = train(load_config("recipes/sst2-smollm2.toml"), Path("runs/demo"))

Every step seeds its own RNGs from (seed, step), so a run resumed from a checkpoint
produces the same steps as one that was never interrupted (sampling ahead, with
rollout.max_off_policy_steps > 0, aside: openrft.train.off_policy). Graders and rollout
engines run here or, with cluster.backend = "ray", as Ray actors (openrft.train.ray_workers).
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import torch

from openrft.config import JobConfig
from openrft.errors import ConfigError
from openrft.rewards import Grader, build_grader
from openrft.rewards.grader import with_batch_timeout
from openrft.rollout.engine import RolloutEngine
from openrft.rollout.hf_engine import end_of_turn_ids
from openrft.train.data_parallel import (
    DataParallel,
    init_data_parallel,
    lead_update,
    stop_followers,
)
from openrft.train.data_parallel_job import follow_job, share_setup
from openrft.train.data_setup import JobData, PromptStream, load_job_data, total_steps
from openrft.train.engines import build_engine, sampling_params
from openrft.train.episodes import EpisodeJob, episode_job
from openrft.train.forward import RowForward, choose_forward
from openrft.train.off_policy import RolloutSource
from openrft.train.optim import build_optimizer
from openrft.train.pipeline import grading_plan
from openrft.train.policy import Policy, build_policy, resolve_device
from openrft.train.ray_workers import RayGraderPool, RayRolloutPool, cluster_metrics, connect
from openrft.train.rollouts import RolloutBatch, collect_batch, rollout_records
from openrft.train.rows import compute_advantages, no_signal, training_rows
from openrft.train.run import RL, Run, RunSummary, StopRequest
from openrft.train.step_metrics import step_record
from openrft.train.update import update_policy
from openrft.train.validation import step_zero_baseline, validate

__all__ = ["RunSummary", "StopRequest", "train"]


def train(
    config: JobConfig,
    run_dir: Path,
    resume: bool = False,
    show_progress: bool = True,
    stop: StopRequest | None = None,
) -> RunSummary:
    """Run (or resume) a job. When `stop` is set, the current step finishes, a checkpoint is
    written, and the run returns with status "stopped" (resume it later). Under torchrun
    (several ranks) rank 0 runs the job and the others share its updates."""
    data_parallel = init_data_parallel(resolve_device(config.model.device))
    if data_parallel is not None and not data_parallel.is_lead:
        started = time.monotonic()
        updates = follow_job(config, data_parallel)
        wall_s = time.monotonic() - started
        return RunSummary(None, None, updates, wall_s, str(run_dir), "", status="follower")
    run = Run(config, run_dir, RL, resume, show_progress, stop)
    run.status("loading", f"loading {config.model.name}")
    policy = build_policy(config)
    # Multi-turn jobs ([env]): the tools or environment, checked before any data is read.
    episodes = episode_job(
        config, policy.tokenizer, end_of_turn_ids(policy.model, policy.tokenizer)
    )
    run.status("data_processing", f"validating {config.data.train_file}")
    data = load_job_data(config, policy.tokenizer, episodes)
    probe_ids = data.prompt_ids[data.train[0].id]
    fast = config.train.fast_paths == "auto"
    forward, how = choose_forward(
        policy.causal_lm(), fast, probe_ids, config.algo.logprob_chunk_tokens
    )
    # Workers (a vLLM server, Ray actors, tool processes) are stopped however the job ends.
    with ExitStack() as workers:
        if episodes is not None:
            workers.callback(episodes.close)
        ray = None
        if config.cluster.backend == "ray":
            ray, started = connect(config.cluster)
            if started:
                workers.callback(ray.shutdown)
        if ray is None:
            grader: Grader = with_batch_timeout(
                build_grader(config.reward.grader, config.reward.timeout_s),
                config.reward.batch_timeout_s,
            )
            if hasattr(grader, "close"):  # a user function's worker processes
                workers.callback(grader.close)
        else:
            run.status("loading", f"starting {config.cluster.reward_workers} grader workers")
            grader = RayGraderPool(config, ray)
            workers.callback(grader.close)
        if ray is not None and episodes is None:
            run.status("loading", f"starting {config.cluster.rollout_workers} rollout workers")
            engine: RolloutEngine = RayRolloutPool(config, policy, probe_ids, ray)
        else:
            engine = build_engine(config, policy, probe_ids, run_dir)
        workers.callback(engine.close)
        if config.rollout.max_off_policy_steps and not samples_from_a_copy(engine):
            raise ConfigError(
                "rollout.max_off_policy_steps",
                f"sampling ahead needs an engine with its own copy of the weights, not "
                f"{engine.description}: the compact decoder, rollout.dtype = 'bfloat16', "
                "vLLM, or Ray rollout workers",
            )
        run.notes["fast_paths"] = f"update: {how}; rollouts: {engine.description}"
        print(f"openrft: {run.notes['fast_paths']}", file=sys.stderr, flush=True)
        if episodes is not None:  # what answers the turns (external agents: where to connect)
            run.notes["episodes"] = episodes.describe()
            episodes.announce(run_dir)
            print(f"openrft: episodes: {run.notes['episodes']}", file=sys.stderr, flush=True)
        summary = run_steps(run, policy, data, grader, engine, forward, episodes, data_parallel)
    if data_parallel is not None:
        data_parallel.close()
    return summary


def run_steps(
    run: Run,
    policy: Policy,
    data: JobData,
    grader: Grader,
    engine: RolloutEngine,
    forward: RowForward,
    episodes: EpisodeJob | None = None,
    data_parallel: DataParallel | None = None,
) -> RunSummary:
    """The steps of `train` once its policy, data, grader, engine and forward exist
    (and, for a multi-turn job, its episodes; for a data-parallel group, the group)."""
    config, algo = run.config, run.config.algo
    max_tokens, error_score = config.rollout.max_new_tokens, config.reward.error_score
    steps = total_steps(config, len(data.train))
    optimizer, scheduler = build_optimizer(
        policy.trainable_parameters(),
        config.train,
        steps * algo.update_epochs * config.train.mini_batches,
    )
    run.restore(policy, optimizer, scheduler, steps)
    update = update_policy
    if data_parallel is not None:  # the other ranks update on their shards of each batch
        share_setup(data_parallel, policy, steps, forward, run.restored_from)
        update = partial(lead_update, data_parallel=data_parallel)
    engine.sync_weights(policy.model, run.position.step)  # a copy holds the pre-restore weights
    if run.position.step == 0:
        run.status("validation", "validating the starting model")
        start = validate(engine, data, config, grader, step=0, episodes=episodes)
        if config.eval.baseline_prompts:
            run.status("validation", "Step-0 baseline: can GRPO learn here?")
            start |= step_zero_baseline(engine, data, config, grader, run.run_dir, episodes)
        run.log_start(start)

    # Each step's rollouts: sampled when the step starts, or with rollout.max_off_policy_steps
    # = k > 0 sampled ahead in the background by weights up to k updates old.
    sample = partial(sample_batch, engine, grader, data, config, episodes)
    first, seen = run.position.step + 1, run.position.prompts_seen
    with RolloutSource(sample, first, steps, seen, config.rollout.max_off_policy_steps) as rollouts:
        for step in run.steps():
            started = time.monotonic()
            torch.manual_seed(step_seed(config, step))
            # 1. Rollouts, graded (with dynamic sampling, until enough groups carry signal).
            batch, off_policy = rollouts.take(step)
            # 2. Advantages from the training rewards, by the configured estimator.
            advantages = compute_advantages(batch.groups, algo, error_score, max_tokens, config.env)
            # 3. Training rows: tokens, loss masks (environment tokens 0), per-token advantages.
            rows = training_rows(batch.groups, advantages, algo.mask_truncated, config.env.mask_cut)
            # 4. The policy update, then the sampler's copy of the weights.
            update_started = time.monotonic()
            stats = update(
                policy, rows, optimizer, scheduler, algo, config.train, max_tokens, forward
            )
            update_s = time.monotonic() - update_started
            with rollouts.engine_lock:
                sync = engine.sync_weights(policy.model, step)
            rollouts.synced_update(step)

            prompts_seen = run.position.prompts_seen + batch.prompts_used
            record = step_record(
                step, prompts_seen / len(data.train), batch, advantages, stats, scheduler, sync,
                step_s=time.monotonic() - started, update_s=update_s,
            ) | off_policy | cluster_metrics(engine, grader)  # fmt: skip
            if run.validates(step):
                with rollouts.engine_lock:
                    record |= validate(engine, data, config, grader, step=step, episodes=episodes)
            trained_advantages = [advantages.of_group(p) for p in range(len(batch.groups))]
            run.end_step(
                step, record, prompts_seen, policy, optimizer, scheduler,
                rollout_records(batch, step, trained_advantages),
            )  # fmt: skip
    if data_parallel is not None:
        stop_followers(data_parallel)
    return run.finish(policy)


def samples_from_a_copy(engine: RolloutEngine) -> bool:
    """Whether the engine samples from weights of its own (which the update does not touch
    until the next sync): every engine but the in-process one on the trainer's model."""
    decoder = getattr(engine, "decoder", None)
    return decoder is None or decoder.holds_copy


def step_seed(config: JobConfig, step: int) -> int:
    return config.train.seed * 1_000_003 + step


def sample_batch(
    engine: RolloutEngine,
    grader: Grader,
    data: JobData,
    config: JobConfig,
    episodes: EpisodeJob | None,
    step: int,
    prompts_seen: int,
) -> RolloutBatch:
    """Step `step`'s rollouts, graded: prompts from `prompts_seen` on in the data stream,
    sampled with the step's seed (so a resumed run samples as an uninterrupted one)."""
    algo = config.algo
    return collect_batch(
        engine,
        grader,
        PromptStream(data, config, prompts_seen),
        sampling_params(config, step_seed(config, step)),
        size=config.train.prompts_per_step,
        max_rounds=algo.dynamic_sampling_max_rounds if algo.dynamic_sampling else 1,
        flat=partial(
            no_signal, algo=algo, error_score=config.reward.error_score,
            max_tokens=config.rollout.max_new_tokens, cut_penalty=config.env.cut_penalty,
        ),
        episodes=episodes,
        grading=grading_plan(config),
    )  # fmt: skip
