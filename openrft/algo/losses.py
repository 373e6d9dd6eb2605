"""Per-token policy loss, KL estimators and loss aggregation for GRPO-family objectives.

Owns the PPO-style clipped surrogate (asymmetric clip, DAPO), the k1/k3 KL estimators and the
three aggregation modes, which normalise by whole-batch counts so micro-batches add up exactly.
"""

from __future__ import annotations

import torch


def clipped_policy_loss(
    logprobs_B_T: torch.Tensor,
    old_logprobs_B_T: torch.Tensor,
    advantages_B: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate loss and a 0/1 indicator of tokens silenced by clipping.

    loss = -min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A), r = exp(logp - old_logp)
    (PPO, Schulman et al. 2017). A larger clip_high than clip_low is DAPO's "clip-higher"
    (Yu et al. 2025): it lets low-probability tokens grow further and keeps entropy up.
    `advantages_B` holds one advantage per sequence, broadcast over its tokens.
    """
    advantages = advantages_B.unsqueeze(-1) if advantages_B.dim() == 1 else advantages_B
    ratio_B_T = torch.exp(logprobs_B_T - old_logprobs_B_T)
    unclipped_B_T = ratio_B_T * advantages
    clipped_B_T = torch.clamp(ratio_B_T, 1.0 - clip_low, 1.0 + clip_high) * advantages
    loss_B_T = -torch.minimum(unclipped_B_T, clipped_B_T)
    # Strictly smaller means min() picked the constant clipped branch: zero gradient there.
    was_clipped_B_T = (clipped_B_T < unclipped_B_T).to(loss_B_T.dtype)
    return loss_B_T, was_clipped_B_T


def sampler_correction_weights(
    old_logprobs_B_T: torch.Tensor,
    sampler_logprobs_B_T: torch.Tensor,
    mode: str,
    cap: float,
) -> torch.Tensor:
    """Per-token importance weights w = pi_old / pi_sampler for rollouts sampled by another
    engine (vLLM) than the trainer that scores them, with w bounded (no gradient flows).

    The two compute the "same" policy with other kernels, dtypes and batching, so a sampled
    token's probability differs between them and the policy gradient is silently off-policy
    (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
    training"). Correcting with the raw ratio has unbounded variance; `mode` bounds it:
    - "truncate": min(w, cap), truncated importance sampling (TIS);
    - "mask": w where 1/cap <= w <= cap, else 0 (the token leaves the loss);
    - "off": 1 everywhere.
    """
    if mode == "off":
        return torch.ones_like(old_logprobs_B_T)
    ratio_B_T = torch.exp(old_logprobs_B_T.detach() - sampler_logprobs_B_T)
    if mode == "truncate":
        return ratio_B_T.clamp(max=cap)
    if mode == "mask":
        inside_B_T = (ratio_B_T <= cap) & (ratio_B_T >= 1.0 / cap)
        return torch.where(inside_B_T, ratio_B_T, torch.zeros_like(ratio_B_T))
    raise ValueError(f"unknown sampler correction {mode!r}: choose truncate, mask or off")


def kl_k1(logprobs_B_T: torch.Tensor, ref_logprobs_B_T: torch.Tensor) -> torch.Tensor:
    """k1 = log(pi / pi_ref): unbiased for KL(pi || pi_ref) under samples from pi, but
    high-variance and negative per token (Schulman 2020, "Approximating KL divergence")."""
    return logprobs_B_T - ref_logprobs_B_T


def kl_k3(logprobs_B_T: torch.Tensor, ref_logprobs_B_T: torch.Tensor) -> torch.Tensor:
    """k3 = r - log r - 1 with r = pi_ref / pi: unbiased, low-variance and always >= 0
    (Schulman 2020); the estimator GRPO uses (Shao et al. 2024, eq. 4)."""
    log_ratio_B_T = ref_logprobs_B_T - logprobs_B_T
    return torch.exp(log_ratio_B_T) - log_ratio_B_T - 1.0


def _masked_losses(loss_B_T: torch.Tensor, mask_B_T: torch.Tensor) -> torch.Tensor:
    # where() rather than loss * mask: a NaN/inf on a padded position would survive 0 * x.
    return torch.where(mask_B_T.to(torch.bool), loss_B_T, torch.zeros_like(loss_B_T))


def _positive(denominator: float) -> float:
    # An all-padding batch has a zero sum; dividing by 1 keeps it 0 instead of NaN.
    return denominator if denominator > 0 else 1.0


def aggregate_token_mean(
    loss_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    total_tokens: float,
    total_sequences: float,
    max_completion_tokens: int,
) -> torch.Tensor:
    """DAPO token-level mean (Yu et al. 2025): every token of the batch weighs the same,
    so long answers are not down-weighted per token."""
    return _masked_losses(loss_B_T, mask_B_T).sum() / _positive(float(total_tokens))


def aggregate_sequence_mean(
    loss_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    total_tokens: float,
    total_sequences: float,
    max_completion_tokens: int,
) -> torch.Tensor:
    """Original GRPO (Shao et al. 2024, eq. 3): mean over each sequence's tokens, then mean
    over sequences. Sequences with no tokens contribute 0."""
    tokens_B = mask_B_T.to(torch.bool).sum(dim=-1).clamp(min=1).to(loss_B_T.dtype)
    per_sequence_B = _masked_losses(loss_B_T, mask_B_T).sum(dim=-1) / tokens_B
    return per_sequence_B.sum() / _positive(float(total_sequences))


def aggregate_constant(
    loss_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    total_tokens: float,
    total_sequences: float,
    max_completion_tokens: int,
) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025): divide by a constant (sequences x max completion length)
    instead of each sequence's length, which removes GRPO's length bias."""
    denominator = float(total_sequences) * float(max_completion_tokens)
    return _masked_losses(loss_B_T, mask_B_T).sum() / _positive(denominator)


def aggregate_loss(
    loss_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    mode: str,
    total_tokens: float,
    total_sequences: float,
    max_completion_tokens: int,
) -> torch.Tensor:
    """Scalar loss of one micro-batch, normalised by the counts of the WHOLE batch.

    Every mode is linear in the micro-batch's tokens with batch-wide denominators, so summing
    this over the micro-batches of a step (gradient accumulation) gives exactly the loss and
    gradient of the full batch, whatever the split.
    """
    from openrft.algo.registry import LOSS_AGGREGATIONS, lookup  # lazy: registry imports us

    aggregate_fn = lookup(LOSS_AGGREGATIONS, mode, "loss aggregation")
    return aggregate_fn(loss_B_T, mask_B_T, total_tokens, total_sequences, max_completion_tokens)


def masked_mean(values_B_T: torch.Tensor, mask_B_T: torch.Tensor) -> torch.Tensor:
    """Mean of `values_B_T` over the masked-in positions; 0 when the mask is empty (metrics)."""
    count = mask_B_T.to(torch.bool).sum()
    total = _masked_losses(values_B_T, mask_B_T).sum()
    return total / count.clamp(min=1).to(total.dtype)
