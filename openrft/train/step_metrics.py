"""One RL step's record for metrics.jsonl, every key a constant of openrft.metrics.names."""

from __future__ import annotations

from typing import Any

import torch

from openrft.metrics import names
from openrft.metrics.system import peak_rss_gb
from openrft.metrics.usage import JUDGE_COMPLETION_COMPONENT, JUDGE_PROMPT_COMPONENT
from openrft.train.rollouts import RolloutBatch, completion_metrics, reward_metrics
from openrft.train.rows import Advantages
from openrft.train.update import UpdateStats


def step_record(
    step: int,
    epoch: float,
    batch: RolloutBatch,
    advantages: Advantages,
    stats: UpdateStats,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sync: dict[str, float],
    step_s: float,
    update_s: float,
) -> dict[str, Any]:
    """Rewards and completions over every group sampled this step; the update's numbers;
    time, throughput and memory."""
    generated = sum(len(c.token_ids) for g in batch.sampled for c in g.completions)
    lags = [step - 1 - g.policy_version for g in batch.groups]
    record = {
        names.STEP: step,
        names.EPOCH: epoch,
        **reward_metrics(batch.sampled),
        **completion_metrics(batch.sampled),
        names.ENTROPY: stats.entropy,
        names.KL: stats.kl,
        names.CLIP_RATIO: stats.clip_ratio,
        names.LOSS: stats.loss,
        names.POLICY_LOSS: stats.policy_loss,
        names.GRAD_NORM: stats.grad_norm,
        names.LR: scheduler.get_last_lr()[0],
        names.SEQUENCES_TRAINED: stats.trained_sequences,
        names.TOKENS_TRAINED: stats.trained_tokens,
        names.ROLLOUT_POLICY_LAG: max(lags, default=0),
        names.STEP_S: step_s,
        names.ROLLOUT_S: batch.timing.rollout_s,
        names.REWARD_S: batch.timing.reward_s,
        names.REWARD_EXPOSED_S: batch.timing.reward_exposed_s,
        names.UPDATE_S: update_s,
        names.TOKENS_PER_S: generated / step_s,
        names.PEAK_RSS_GB: peak_rss_gb(),
        **sync,
        **usage_record(batch, stats),
    }
    if batch.dynamic:
        record[names.REWARD_DROPPED_GROUPS] = batch.dropped
        record[names.ROLLOUT_ROUNDS] = batch.rounds
        record[names.ROLLOUT_PROMPTS] = batch.prompts_used
    rewards = advantages.rewards
    if rewards.shaped:  # NaN (null in the log) when no group was trained on
        record[names.REWARD_OVERLONG_PENALTY] = float(rewards.penalty_P_G[rewards.valid_P_G].mean())
    if stats.sampler_kl is not None:
        record[names.SAMPLER_KL] = stats.sampler_kl
        record[names.SAMPLER_WEIGHT] = stats.sampler_weight
        record[names.SAMPLER_CORRECTED] = stats.sampler_corrected
    return record


def usage_record(batch: RolloutBatch, stats: UpdateStats) -> dict[str, int]:
    """The step's `usage/*` counts over every group sampled (openrft.metrics.usage)."""
    samples = [(g, c, grade) for g in batch.sampled
               for c, grade in zip(g.completions, g.grades, strict=True)]  # fmt: skip
    episodes = [c.episode for _, c, _ in samples if c.episode is not None]
    components = [grade.components for _, _, grade in samples]
    return {
        names.USAGE_PROMPT_TOKENS: sum(len(g.prompt_token_ids) for g, _, _ in samples),
        names.USAGE_SAMPLED_TOKENS: sum(
            c.episode.sampled_tokens if c.episode is not None else len(c.token_ids)
            for _, c, _ in samples
        ),
        names.USAGE_TRAINED_TOKENS: stats.trained_tokens,
        # An episode whose environment failed is not graded (openrft.train.rollouts).
        names.USAGE_GRADED: sum(c.finish_reason != "error" for _, c, _ in samples),
        names.USAGE_JUDGE_PROMPT: int(sum(c.get(JUDGE_PROMPT_COMPONENT, 0) for c in components)),
        names.USAGE_JUDGE_COMPLETION: int(
            sum(c.get(JUDGE_COMPLETION_COMPONENT, 0) for c in components)
        ),
        names.USAGE_TOOL_CALLS: sum(e.tool_calls for e in episodes),
    }
