"""Per-token policy losses, sampler corrections, KL estimators and loss aggregation.

Owns the four policy losses `registry.POLICY_LOSSES` names (ppo, gspo, cispo,
importance_sampling), all `fn(logprobs_B_T, old_logprobs_B_T, advantages_B_T, mask_B_T,
clip_low, clip_high) -> (loss_B_T, clipped_B_T)`; the rollout/trainer mismatch weights; the
k1/k3 KL estimators; and the three aggregations, which normalise by whole-batch counts so
micro-batches add up exactly. `registry.aggregate_loss` picks one by name.
"""

from __future__ import annotations

import torch


def _ratio(logprobs_B_T: torch.Tensor, old_logprobs_B_T: torch.Tensor) -> torch.Tensor:
    """r = pi / pi_old per token, from log-probabilities."""
    return torch.exp(logprobs_B_T - old_logprobs_B_T)


def _pessimistic(
    ratio_B_T: torch.Tensor, advantages_B_T: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """-min(r A, clip(r, 1 - clip_low, 1 + clip_high) A) and where the clipped term won."""
    unclipped_B_T = ratio_B_T * advantages_B_T
    clipped_B_T = torch.clamp(ratio_B_T, 1.0 - clip_low, 1.0 + clip_high) * advantages_B_T
    loss_B_T = -torch.minimum(unclipped_B_T, clipped_B_T)
    # Strictly smaller means min() picked the constant clipped branch: zero gradient there.
    return loss_B_T, (clipped_B_T < unclipped_B_T).to(loss_B_T.dtype)


def ppo(
    logprobs_B_T: torch.Tensor,
    old_logprobs_B_T: torch.Tensor,
    advantages_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017), per token, and a 0/1 float indicator
    of the tokens silenced by clipping (no gradient there).

    loss = -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A), r = exp(logp - old_logp).
    A larger clip_high than clip_low is DAPO's "clip-higher" (Yu et al. 2025): it lets
    low-probability tokens grow further and keeps entropy up. Every token stands alone, so
    `mask_B_T` is not needed (the caller's aggregation applies it).
    """
    ratio_B_T = _ratio(logprobs_B_T, old_logprobs_B_T)
    return _pessimistic(ratio_B_T, advantages_B_T, clip_low, clip_high)


def gspo(
    logprobs_B_T: torch.Tensor,
    old_logprobs_B_T: torch.Tensor,
    advantages_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"), in its GSPO-token form,
    per token, and a 0/1 float indicator of the clipped tokens.

    The ratio is the sequence's, s_b = exp(mean over masked-in t of (logp - old_logp)), the
    geometric mean of its token ratios: the reward is given to the whole sequence, so the
    importance weight and the clip act on sequences too, instead of on single-sample,
    high-variance token ratios. Token form:
    s_bt = sg(s_b) * exp(logp_bt - sg(logp_bt)), whose value is s_b on every token and whose
    gradient is s_b * d logp_bt; loss = -min(s_bt A_bt, clip(s_bt, 1 - clip_low, 1 + clip_high)
    A_bt). With one advantage per sequence and a sequence-mean aggregation this is GSPO's
    gradient exactly. The paper's clip range is far narrower than PPO's (3e-4, 4e-4), since
    a sequence ratio strays less. A row with no masked-in token has s_b = 1.
    """
    keep_B_T = mask_B_T.to(torch.bool)
    # where() rather than a product: junk log-probs on padding must not reach the mean.
    log_ratio_B_T = torch.where(
        keep_B_T, logprobs_B_T - old_logprobs_B_T, torch.zeros_like(logprobs_B_T)
    )
    tokens_B_1 = keep_B_T.sum(dim=-1, keepdim=True).clamp(min=1).to(logprobs_B_T.dtype)
    sequence_ratio_B_1 = torch.exp(log_ratio_B_T.sum(dim=-1, keepdim=True) / tokens_B_1)
    token_ratio_B_T = sequence_ratio_B_1.detach() * torch.exp(logprobs_B_T - logprobs_B_T.detach())
    return _pessimistic(token_ratio_B_T, advantages_B_T, clip_low, clip_high)


def cispo(
    logprobs_B_T: torch.Tensor,
    old_logprobs_B_T: torch.Tensor,
    advantages_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1, 2025): loss = -sg(clip(r, 1 - clip_low, 1 + clip_high)) A logp, per
    token, and a 0/1 float indicator of the tokens whose weight was clipped.

    PPO drops the gradient of clipped tokens, which are often the rare "reflective" tokens
    (However, Wait) that matter most; CISPO clips the importance weight instead and keeps
    every token's gradient, -w A d logp. The paper (and SageMaker's recipe) use a wide range:
    clip_low = 1.0 (no lower bound) and clip_high = 5.0 (upper bound 6.0). Every token stands
    alone, so `mask_B_T` is not needed.
    """
    ratio_B_T = _ratio(logprobs_B_T, old_logprobs_B_T).detach()
    low, high = 1.0 - clip_low, 1.0 + clip_high
    weight_B_T = ratio_B_T.clamp(min=low, max=high)
    loss_B_T = -weight_B_T * advantages_B_T * logprobs_B_T
    clipped_B_T = ((ratio_B_T < low) | (ratio_B_T > high)).to(loss_B_T.dtype)
    return loss_B_T, clipped_B_T


def importance_sampling(
    logprobs_B_T: torch.Tensor,
    old_logprobs_B_T: torch.Tensor,
    advantages_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE with truncated importance weights: loss = -sg(min(r, 1 + clip_high)) A logp,
    per token, and a 0/1 float indicator of the tokens whose weight was truncated.

    No trust region and no lower bound (`clip_low` is unused): the weight only corrects for
    sampling from pi_old, and truncating it bounds its variance (truncated IS, Ionides 2008).
    Every token stands alone, so `mask_B_T` is not needed.
    """
    ratio_B_T = _ratio(logprobs_B_T, old_logprobs_B_T).detach()
    cap = 1.0 + clip_high
    loss_B_T = -ratio_B_T.clamp(max=cap) * advantages_B_T * logprobs_B_T
    return loss_B_T, (ratio_B_T > cap).to(loss_B_T.dtype)


def _importance_ratio(
    old_logprobs_B_T: torch.Tensor, sampler_logprobs_B_T: torch.Tensor
) -> torch.Tensor:
    # w = pi_old / pi_sampler; detached because the weight corrects the data, not the policy.
    return torch.exp(old_logprobs_B_T.detach() - sampler_logprobs_B_T)


def sampler_weights_truncate(
    old_logprobs_B_T: torch.Tensor, sampler_logprobs_B_T: torch.Tensor, cap: float
) -> torch.Tensor:
    """Truncated importance sampling (TIS, Yao et al. 2025): min(pi_old / pi_sampler, cap).

    Rollouts sampled by another engine (vLLM) than the trainer that scores them are silently
    off-policy: the two compute the "same" policy with other kernels, dtypes and batching
    ("Your efficient RL framework secretly brings you off-policy RL training"). Weighting by
    the raw ratio corrects it but has unbounded variance, so the weight is capped.
    """
    return _importance_ratio(old_logprobs_B_T, sampler_logprobs_B_T).clamp(max=cap)


def sampler_weights_mask(
    old_logprobs_B_T: torch.Tensor, sampler_logprobs_B_T: torch.Tensor, cap: float
) -> torch.Tensor:
    """pi_old / pi_sampler where 1/cap <= it <= cap, else 0: a token on which the engines
    disagree that much leaves the loss instead of being down-weighted (see the TIS note in
    `sampler_weights_truncate`)."""
    ratio_B_T = _importance_ratio(old_logprobs_B_T, sampler_logprobs_B_T)
    inside_B_T = (ratio_B_T <= cap) & (ratio_B_T >= 1.0 / cap)
    return torch.where(inside_B_T, ratio_B_T, torch.zeros_like(ratio_B_T))


def sampler_weights_off(
    old_logprobs_B_T: torch.Tensor, sampler_logprobs_B_T: torch.Tensor, cap: float
) -> torch.Tensor:
    """No correction: weight 1 on every token (`cap` is unused)."""
    return torch.ones_like(old_logprobs_B_T.detach())


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


def masked_mean(values_B_T: torch.Tensor, mask_B_T: torch.Tensor) -> torch.Tensor:
    """Mean of `values_B_T` over the masked-in positions; 0 when the mask is empty (metrics)."""
    count = mask_B_T.to(torch.bool).sum()
    total = _masked_losses(values_B_T, mask_B_T).sum()
    return total / count.clamp(min=1).to(total.dtype)
