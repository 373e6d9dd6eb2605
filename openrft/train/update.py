"""The policy update of one RL step: log-probs of the sampled completions, the clipped
policy-gradient loss (plus optional KL and entropy terms), gradient accumulation over
micro-batches, clipping and the optimizer step. Metrics come back as `UpdateStats`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from openrft.algo import (
    KL_ESTIMATORS,
    aggregate_loss,
    clipped_policy_loss,
    lookup,
    sampler_correction_weights,
)
from openrft.config import AlgoConfig, TrainConfig
from openrft.train.packed_forward import pack_rows, packed_hidden_states
from openrft.train.policy import Policy, lm_head_logprobs
from openrft.types import RolloutGroup


@dataclass(frozen=True)
class TrainRow:
    """One completion as the trainer sees it."""

    token_ids: tuple[int, ...]  # prompt followed by completion
    prompt_length: int
    advantage: float
    sampler_logprobs: tuple[float, ...] | None = None  # the rollout engine's, per completion token


@dataclass(frozen=True)
class UpdateStats:
    loss: float  # mean aggregated loss over optimizer steps
    policy_loss: float  # token mean of the clipped policy-gradient term
    entropy: float  # token mean entropy of the policy on the sampled completions
    kl: float | None  # token mean KL to the reference; None when kl_coef is 0 (not computed)
    clip_ratio: float  # fraction of tokens whose ratio was clipped
    grad_norm: float  # mean pre-clip gradient norm over optimizer steps
    optimizer_steps: int
    trained_sequences: int  # rows that needed a forward (non-zero advantage or KL/entropy on)
    # Rollout/trainer mismatch, over tokens whose engine reported log-probs (None: no such token)
    sampler_kl: float | None = None  # mean of log pi_sampler - log pi_trainer: KL(sampler||trainer)
    sampler_weight: float | None = None  # mean correction weight applied to the policy term
    sampler_corrected: float | None = None  # share of tokens truncated or masked out


def train_rows(groups: list[RolloutGroup], mask_truncated: bool) -> list[TrainRow]:
    """Completions that enter the loss: graded (or given error_score), optionally not truncated."""
    rows = []
    for group in groups:
        for completion, advantage in zip(group.completions, group.advantages, strict=True):
            if math.isnan(advantage):  # a failed grade without error_score: left out
                continue
            if mask_truncated and completion.finish_reason == "length":
                continue
            if not completion.token_ids:
                continue
            ids = group.prompt_token_ids + completion.token_ids
            rows.append(TrainRow(ids, len(group.prompt_token_ids), advantage, completion.logprobs))
    return rows


def update_policy(
    policy: Policy,
    rows: list[TrainRow],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    algo: AlgoConfig,
    train: TrainConfig,
    max_completion_tokens: int,
) -> UpdateStats:
    # With no KL or entropy term, a zero-advantage row contributes exactly zero gradient:
    # it counts in the normaliser but needs no forward pass.
    needs_forward = algo.kl_coef != 0 or algo.entropy_coef != 0
    chunk = algo.logprob_chunk_tokens
    kl_fn = lookup(KL_ESTIMATORS, algo.kl_estimator, "KL estimator")
    reuse_old = algo.update_epochs == 1 and train.mini_batches == 1  # ratio is exactly 1
    old = {} if reuse_old else _logprobs_no_grad(policy.causal_lm(), rows, train, chunk)
    reference = {}
    if algo.kl_coef > 0:
        with policy.reference() as reference_model:
            reference = _logprobs_no_grad(reference_model, rows, train, chunk)

    sums = {"policy": 0.0, "entropy": 0.0, "kl": 0.0, "clipped": 0.0, "tokens": 0.0, "loss": 0.0}
    mismatch = {"kl": 0.0, "weight": 0.0, "corrected": 0.0, "tokens": 0.0}
    grad_norms, trained = [], 0
    params = policy.trainable_parameters()
    for _ in range(algo.update_epochs):
        for mini in _split(list(range(len(rows))), train.mini_batches):
            total_tokens = sum(len(rows[i].token_ids) - rows[i].prompt_length for i in mini)
            forward = [i for i in mini if needs_forward or rows[i].advantage != 0]
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for start in range(0, len(forward), train.micro_batch_size):
                micro = forward[start : start + train.micro_batch_size]
                logprobs_B_T, entropy_B_T, mask_B_T = sequence_logprobs(
                    policy.causal_lm(), [rows[i] for i in micro], chunk, with_entropy=True
                )
                old_B_T = _stack(old, micro, mask_B_T) if old else logprobs_B_T.detach()
                advantages_B = torch.tensor([rows[i].advantage for i in micro])
                loss_B_T, clipped_B_T = clipped_policy_loss(
                    logprobs_B_T, old_B_T, advantages_B, algo.clip_low, algo.clip_high
                )
                sampled = [rows[i].sampler_logprobs for i in micro]
                if any(s is not None for s in sampled):
                    weights_B_T = _sampler_weights(old_B_T, sampled, mask_B_T, algo, mismatch)
                    loss_B_T = loss_B_T * weights_B_T
                sums["policy"] += float((loss_B_T.detach() * mask_B_T).sum())
                if algo.kl_coef > 0:
                    kl_B_T = kl_fn(logprobs_B_T, _stack(reference, micro, mask_B_T))
                    loss_B_T = loss_B_T + algo.kl_coef * kl_B_T
                    sums["kl"] += float((kl_B_T.detach() * mask_B_T).sum())
                if algo.entropy_coef != 0:
                    loss_B_T = loss_B_T - algo.entropy_coef * entropy_B_T
                loss = aggregate_loss(
                    loss_B_T,
                    mask_B_T,
                    algo.loss_aggregation,
                    total_tokens=total_tokens,
                    total_sequences=len(mini),
                    max_completion_tokens=max_completion_tokens,
                )
                loss.backward()
                step_loss += float(loss.detach())
                sums["entropy"] += float((entropy_B_T.detach() * mask_B_T).sum())
                sums["clipped"] += float((clipped_B_T * mask_B_T).sum())
                sums["tokens"] += float(mask_B_T.sum())
                trained += len(micro)
            if forward:  # a mini-batch without signal leaves the weights (and Adam state) alone
                limit = train.max_grad_norm if train.max_grad_norm > 0 else float("inf")
                grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, limit)))
                optimizer.step()
            with warnings.catch_warnings():  # the schedule follows RL steps, stepped or not
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                scheduler.step()
            sums["loss"] += step_loss

    steps = algo.update_epochs * train.mini_batches
    tokens = max(sums["tokens"], 1.0)
    return UpdateStats(
        loss=sums["loss"] / steps,
        policy_loss=sums["policy"] / tokens,
        entropy=sums["entropy"] / tokens,
        kl=sums["kl"] / tokens if algo.kl_coef > 0 else None,
        clip_ratio=sums["clipped"] / tokens,
        grad_norm=sum(grad_norms) / len(grad_norms) if grad_norms else 0.0,
        optimizer_steps=len(grad_norms),
        trained_sequences=trained // algo.update_epochs,
        **_mismatch_stats(mismatch),
    )


def _sampler_weights(
    old_B_T: torch.Tensor,
    sampled: list[tuple[float, ...] | None],
    mask_B_T: torch.Tensor,
    algo: AlgoConfig,
    mismatch: dict[str, float],
) -> torch.Tensor:
    """Correction weights for rows whose engine reported its log-probs (1 for the others),
    adding the rows' mismatch to `mismatch` for the step's metrics."""
    sampler_B_T = old_B_T.detach().clone()  # a row without the engine's log-probs: ratio 1
    reported_B_T = torch.zeros_like(mask_B_T, dtype=torch.bool)
    for b, logprobs in enumerate(sampled):
        if logprobs is not None:
            sampler_B_T[b, : len(logprobs)] = torch.tensor(logprobs, dtype=sampler_B_T.dtype)
            reported_B_T[b, : len(logprobs)] = True
    reported_B_T &= mask_B_T.bool()
    weights_B_T = sampler_correction_weights(
        old_B_T, sampler_B_T, algo.sampler_correction, algo.sampler_correction_cap
    )
    raw_B_T = torch.exp(old_B_T.detach() - sampler_B_T)  # the ratio before bounding
    mismatch["kl"] += float((sampler_B_T - old_B_T.detach())[reported_B_T].sum())
    mismatch["weight"] += float(weights_B_T[reported_B_T].sum())
    if algo.sampler_correction != "off":  # tokens truncated (w > cap) or masked (w set to 0)
        mismatch["corrected"] += float((weights_B_T != raw_B_T)[reported_B_T].sum())
    mismatch["tokens"] += float(reported_B_T.sum())
    return weights_B_T


def _mismatch_stats(mismatch: dict[str, float]) -> dict[str, float | None]:
    tokens = mismatch["tokens"]
    if not tokens:
        return {}
    return {
        "sampler_kl": mismatch["kl"] / tokens,
        "sampler_weight": mismatch["weight"] / tokens,
        "sampler_corrected": mismatch["corrected"] / tokens,
    }


def sequence_logprobs(
    causal_lm: torch.nn.Module, rows: list[TrainRow], chunk_tokens: int, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs and entropy of each row's completion, as (B, T) with a mask.

    Rows that share a prompt (a GRPO group) are packed into one segment, the prompt once and
    its completions after it, so the prompt is computed once for the group and gradients from
    every completion flow through it; segments follow each other without padding (see
    `openrft.train.packed_forward`). Only hidden states that predict completion tokens reach
    the LM head, in chunks, so full-vocabulary logits for the batch never exist at once.
    """
    device = next(causal_lm.parameters()).device
    packed = pack_rows(rows)
    hidden_N_H = packed_hidden_states(causal_lm, packed)[packed.predictor_N.to(device)]

    completions = [r.token_ids[r.prompt_length :] for r in rows]
    width = max(len(c) for c in completions)
    lengths_B = torch.tensor([len(c) for c in completions], device=device)
    mask_B_T = (torch.arange(width, device=device)[None, :] < lengths_B[:, None]).float()
    targets_N = torch.tensor([t for c in completions for t in c], dtype=torch.long, device=device)
    logprobs_N, entropy_N = lm_head_logprobs(
        causal_lm, hidden_N_H, targets_N, chunk_tokens, with_entropy
    )
    selected = mask_B_T.bool()
    logprobs_B_T = torch.zeros(mask_B_T.shape, device=device, dtype=logprobs_N.dtype)
    logprobs_B_T = logprobs_B_T.masked_scatter(selected, logprobs_N)
    entropy_B_T = torch.zeros_like(logprobs_B_T)
    if entropy_N is not None:
        entropy_B_T = entropy_B_T.masked_scatter(selected, entropy_N.to(entropy_B_T.dtype))
    return logprobs_B_T, entropy_B_T, mask_B_T


@torch.no_grad()
def _logprobs_no_grad(
    model: torch.nn.Module, rows: list[TrainRow], train: TrainConfig, chunk: int
) -> dict[int, torch.Tensor]:
    """Per-row log-probs (1-D, completion length) before any update, keyed by row index."""
    result = {}
    for start in range(0, len(rows), train.micro_batch_size):
        indices = list(range(start, min(start + train.micro_batch_size, len(rows))))
        logprobs_B_T, _, mask_B_T = sequence_logprobs(
            model, [rows[i] for i in indices], chunk, with_entropy=False
        )
        for b, i in enumerate(indices):
            result[i] = logprobs_B_T[b, : int(mask_B_T[b].sum())]
    return result


def _stack(
    per_row: dict[int, torch.Tensor], indices: list[int], mask_B_T: torch.Tensor
) -> torch.Tensor:
    out_B_T = torch.zeros(mask_B_T.shape, dtype=torch.float32, device=mask_B_T.device)
    for b, i in enumerate(indices):
        out_B_T[b, : len(per_row[i])] = per_row[i]
    return out_B_T


def _split(items: list[int], parts: int) -> list[list[int]]:
    size = math.ceil(len(items) / parts) if items else 0
    return (
        [items[i * size : (i + 1) * size] for i in range(parts)]
        if size
        else [[] for _ in range(parts)]
    )
