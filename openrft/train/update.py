"""The policy update of one RL step: per-token log-probs of the trained tokens, the policy
loss the config names (PPO-clip, GSPO, CISPO, importance sampling), optional KL and entropy
terms, the sampler correction, gradient accumulation over micro-batches, clipping and the
optimizer step. Metrics come back as `UpdateStats`.

Rows (`openrft.types.TrainRow`) carry per-token loss masks and advantages, so a single-turn
completion and a multi-turn episode go through the same code: only tokens the policy sampled
count in the loss, the KL, the entropy and the normalisers.

With a `DataParallel` group (openrft.train.data_parallel) every rank passes the same rows and
runs the forward and backward of its own shard of each mini-batch only; the normalisers come
from the whole mini-batch, gradients and metric sums are summed over the ranks, so every rank
takes the step one process would.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING

import torch

from openrft.algo import (
    KL_ESTIMATORS,
    POLICY_LOSSES,
    aggregate_loss,
    lookup,
    sampler_correction_weights,
)
from openrft.config import AlgoConfig, TrainConfig
from openrft.train.forward import RowForward, RowLogprobs
from openrft.train.policy import Policy
from openrft.types import TrainRow

if TYPE_CHECKING:  # data_parallel imports this module (its follower loop calls update_policy)
    from openrft.train.data_parallel import DataParallel


@dataclass(frozen=True)
class UpdateStats:
    loss: float  # mean aggregated loss over optimizer steps
    policy_loss: float  # token mean of the policy-gradient term
    entropy: float  # token mean entropy of the policy on the trained tokens
    kl: float | None  # token mean KL to the reference; None when kl_coef is 0 (not computed)
    clip_ratio: float  # fraction of trained tokens whose term was clipped or truncated
    grad_norm: float  # mean pre-clip gradient norm over optimizer steps
    optimizer_steps: int
    trained_sequences: int  # rows that needed a forward (non-zero advantage or KL/entropy on)
    trained_tokens: int  # tokens in the loss (sampled by the policy), per pass over the batch
    # Rollout/trainer mismatch, over tokens whose engine reported log-probs (None: no such token)
    sampler_kl: float | None = None  # mean of log pi_sampler - log pi_trainer: KL(sampler||trainer)
    sampler_weight: float | None = None  # mean correction weight applied to the policy term
    sampler_corrected: float | None = None  # share of tokens truncated or masked out


@dataclass
class _Sums:
    """Running token sums for the step's metrics."""

    policy: float = 0.0
    entropy: float = 0.0
    kl: float = 0.0
    clipped: float = 0.0
    tokens: float = 0.0
    loss: float = 0.0
    mismatch_kl: float = 0.0
    mismatch_weight: float = 0.0
    mismatch_corrected: float = 0.0
    mismatch_tokens: float = 0.0


def update_policy(
    policy: Policy,
    rows: Sequence[TrainRow],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    algo: AlgoConfig,
    train: TrainConfig,
    max_completion_tokens: int,
    forward: RowForward,
    *,
    data_parallel: DataParallel | None = None,
) -> UpdateStats:
    """One RL step's optimisation: `algo.update_epochs` passes over `rows`, each split into
    `train.mini_batches` optimizer steps, each accumulated over micro-batches. With
    `data_parallel`, every rank passes the same `rows` and gets the same weights and stats."""
    policy_loss_fn = lookup(POLICY_LOSSES, algo.policy_loss, "policy loss")
    kl_fn = lookup(KL_ESTIMATORS, algo.kl_estimator, "KL estimator")
    # With no KL or entropy term, a row whose advantages are all 0 contributes exactly zero
    # gradient: it counts in the normaliser but needs no forward pass.
    needs_forward = algo.kl_coef != 0 or algo.entropy_coef != 0
    chunk = algo.logprob_chunk_tokens
    reuse_old = algo.update_epochs == 1 and train.mini_batches == 1  # ratio is exactly 1
    minis = _split(list(range(len(rows))), train.mini_batches)
    forward_minis = [
        [i for i in mini if needs_forward or any(rows[i].advantages)] for mini in minis
    ]
    scored = list(range(len(rows)))
    own_minis = forward_minis
    if data_parallel is not None:  # this rank's shard of each mini-batch, and nothing else
        own_minis = [data_parallel.shard(forward_rows) for forward_rows in forward_minis]
        scored = sorted({i for own in own_minis for i in own})
    model = policy.causal_lm()
    old = {} if reuse_old else _logprobs_no_grad(forward, model, rows, scored, train, chunk)
    reference = {}
    if algo.kl_coef > 0:
        with policy.reference() as reference_model:
            reference = _logprobs_no_grad(forward, reference_model, rows, scored, train, chunk)

    sums, grad_norms, trained = _Sums(), [], 0
    params = policy.trainable_parameters()
    for _ in range(algo.update_epochs):
        for mini, forward_rows, own in zip(minis, forward_minis, own_minis, strict=True):
            # Whole-mini-batch counts on every rank: the ranks' gradients add up to one's.
            total_tokens = sum(sum(rows[i].loss_mask) for i in mini)
            optimizer.zero_grad(set_to_none=True)
            for start in range(0, len(own), train.micro_batch_size):
                micro = own[start : start + train.micro_batch_size]
                batch = [rows[i] for i in micro]
                out = forward(model, batch, chunk, True)
                mask_B_T = out.mask_B_T
                old_B_T = _stack(old, micro, mask_B_T) if old else out.logprobs_B_T.detach()
                advantages_B_T = _per_token([r.advantages for r in batch], mask_B_T)
                loss_B_T, clipped_B_T = policy_loss_fn(
                    out.logprobs_B_T,
                    old_B_T,
                    advantages_B_T,
                    mask_B_T,
                    algo.clip_low,
                    algo.clip_high,
                )
                if any(r.sampler_logprobs is not None for r in batch):
                    loss_B_T = loss_B_T * _sampler_weights(old_B_T, batch, mask_B_T, algo, sums)
                sums.policy += float((loss_B_T.detach() * mask_B_T).sum())
                if algo.kl_coef > 0:
                    kl_B_T = kl_fn(out.logprobs_B_T, _stack(reference, micro, mask_B_T))
                    loss_B_T = loss_B_T + algo.kl_coef * kl_B_T
                    sums.kl += float((kl_B_T.detach() * mask_B_T).sum())
                if algo.entropy_coef != 0:
                    loss_B_T = loss_B_T - algo.entropy_coef * out.entropy_B_T
                loss = aggregate_loss(
                    loss_B_T,
                    mask_B_T,
                    algo.loss_aggregation,
                    total_tokens=total_tokens,
                    total_sequences=len(mini),
                    max_completion_tokens=max_completion_tokens,
                )
                loss.backward()
                sums.loss += float(loss.detach())
                _add_token_sums(sums, out, clipped_B_T)
                trained += len(micro)
            if forward_rows:  # a mini-batch without signal leaves the weights and Adam alone
                if data_parallel is not None:  # before clipping: the norm is the whole batch's
                    data_parallel.all_reduce_gradients(params)
                limit = train.max_grad_norm if train.max_grad_norm > 0 else float("inf")
                grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, limit)))
                optimizer.step()
            with warnings.catch_warnings():  # the schedule follows RL steps, stepped or not
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                scheduler.step()
    if data_parallel is not None:  # every rank reports the whole batch's metrics
        *totals, trained = data_parallel.all_reduce_sums([*astuple(sums), trained])
        sums, trained = _Sums(*totals), round(trained)
    return _stats(sums, grad_norms, trained, rows, algo, train)


def _add_token_sums(sums: _Sums, out: RowLogprobs, clipped_B_T: torch.Tensor) -> None:
    mask_B_T = out.mask_B_T
    sums.entropy += float((out.entropy_B_T.detach() * mask_B_T).sum())
    sums.clipped += float((clipped_B_T * mask_B_T).sum())
    sums.tokens += float(mask_B_T.sum())


def _stats(
    sums: _Sums,
    grad_norms: list[float],
    trained: int,
    rows: Sequence[TrainRow],
    algo: AlgoConfig,
    train: TrainConfig,
) -> UpdateStats:
    tokens = max(sums.tokens, 1.0)
    mismatch = {}
    if sums.mismatch_tokens:
        mismatch = {
            "sampler_kl": sums.mismatch_kl / sums.mismatch_tokens,
            "sampler_weight": sums.mismatch_weight / sums.mismatch_tokens,
            "sampler_corrected": sums.mismatch_corrected / sums.mismatch_tokens,
        }
    return UpdateStats(
        loss=sums.loss / (algo.update_epochs * train.mini_batches),
        policy_loss=sums.policy / tokens,
        entropy=sums.entropy / tokens,
        kl=sums.kl / tokens if algo.kl_coef > 0 else None,
        clip_ratio=sums.clipped / tokens,
        grad_norm=sum(grad_norms) / len(grad_norms) if grad_norms else 0.0,
        optimizer_steps=len(grad_norms),
        trained_sequences=trained // algo.update_epochs,
        trained_tokens=sum(sum(row.loss_mask) for row in rows),
        **mismatch,
    )


def _sampler_weights(
    old_B_T: torch.Tensor,
    batch: Sequence[TrainRow],
    mask_B_T: torch.Tensor,
    algo: AlgoConfig,
    sums: _Sums,
) -> torch.Tensor:
    """Correction weights pi_old / pi_sampler for tokens whose engine reported a log-prob (1
    for the others), adding the mismatch to `sums` for the step's metrics."""
    reported_B_T = torch.zeros_like(mask_B_T, dtype=torch.bool)
    sampler_B_T = old_B_T.detach().clone()  # a token without the engine's log-prob: ratio 1
    for b, row in enumerate(batch):
        if row.sampler_logprobs is not None:
            values = torch.tensor(row.sampler_logprobs, dtype=sampler_B_T.dtype)
            known = ~values.isnan()
            width = len(values)
            sampler_B_T[b, :width] = torch.where(known, values, sampler_B_T[b, :width])
            reported_B_T[b, :width] = known
    reported_B_T &= mask_B_T.bool()
    weights_B_T = sampler_correction_weights(
        old_B_T, sampler_B_T, algo.sampler_correction, algo.sampler_correction_cap
    )
    raw_B_T = torch.exp(old_B_T.detach() - sampler_B_T)  # the ratio before bounding
    sums.mismatch_kl += float((sampler_B_T - old_B_T.detach())[reported_B_T].sum())
    sums.mismatch_weight += float(weights_B_T[reported_B_T].sum())
    if algo.sampler_correction != "off":  # tokens truncated (w > cap) or masked (w set to 0)
        sums.mismatch_corrected += float((weights_B_T != raw_B_T)[reported_B_T].sum())
    sums.mismatch_tokens += float(reported_B_T.sum())
    return weights_B_T


def _per_token(values: Sequence[Sequence[float]], mask_B_T: torch.Tensor) -> torch.Tensor:
    """One per-response-token value sequence per row as (B, T), zero-padded."""
    out_B_T = torch.zeros(mask_B_T.shape, dtype=torch.float32, device=mask_B_T.device)
    for b, row_values in enumerate(values):
        out_B_T[b, : len(row_values)] = torch.tensor(row_values, dtype=torch.float32)
    return out_B_T


@torch.no_grad()
def _logprobs_no_grad(
    forward: RowForward,
    model: torch.nn.Module,
    rows: Sequence[TrainRow],
    scored: list[int],
    train: TrainConfig,
    chunk: int,
) -> dict[int, torch.Tensor]:
    """Log-probs (1-D, response length) of the rows `scored` names before any update, keyed
    by row index."""
    result = {}
    for start in range(0, len(scored), train.micro_batch_size):
        indices = scored[start : start + train.micro_batch_size]
        out = forward(model, [rows[i] for i in indices], chunk, False)
        for b, i in enumerate(indices):
            result[i] = out.logprobs_B_T[b, : len(rows[i].loss_mask)]
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
