"""Advantage estimators: how a reward becomes the weight of a sample's policy gradient.

Owns the six estimators that `registry.ADVANTAGE_ESTIMATORS` names (grpo, drgrpo, rloo,
reinforce_pp, reinforce_pp_baseline, grpo_per_turn), all `fn(rewards, valid, eps) -> advantages`.
"""

from __future__ import annotations

import torch


def _checked(
    rewards: torch.Tensor, valid: torch.Tensor, rank: int, layout: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float rewards with every invalid entry replaced by 0, and the mask as bool.

    The replacement comes before any arithmetic, so a NaN from a failed grader (or an absent
    turn) cannot leak into a sum: 0 * NaN and NaN - NaN are still NaN.
    """
    if rewards.dim() != rank:
        raise ValueError(f"rewards must have shape {layout}, got {tuple(rewards.shape)}")
    if valid.shape != rewards.shape:
        raise ValueError(f"valid mask shape {tuple(valid.shape)} != rewards {tuple(rewards.shape)}")
    rewards = rewards if rewards.is_floating_point() else rewards.double()
    valid = valid.to(torch.bool)
    return torch.where(valid, rewards, torch.zeros_like(rewards)), valid


def _masked_mean(values: torch.Tensor, valid: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Mean of the valid entries over `dims` (kept as size-1 dims); 0 where none is valid.
    `values` must already be 0 at invalid entries (see `_checked`)."""
    count = valid.sum(dim=dims, keepdim=True).clamp(min=1).to(values.dtype)
    return values.sum(dim=dims, keepdim=True) / count


def _masked_std(values: torch.Tensor, valid: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Population std (correction=0) of the valid entries over `dims`, kept as size-1 dims.

    Population rather than sample std because GRPO normalises a finite, fully observed group;
    it also stays defined for two-sample groups without the 1/(n-1) blow-up.
    """
    deviation = values - _masked_mean(values, valid, dims)
    squared = torch.where(valid, deviation**2, torch.zeros_like(values))
    return _masked_mean(squared, valid, dims).sqrt()


def _flat(values: torch.Tensor, valid: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """True (kept as size-1 dims) where fewer than 2 entries over `dims` are valid or all valid
    values are equal: such a set has no learning signal.

    An exact max == min test, not std < eps: float32 [0.9, 0.9, 0.9] has a mean off by 6e-8,
    so (r - mean) / (std + eps) would turn rounding noise into advantages of 0.06 (eps 1e-6)
    or 1.0 (eps 0) instead of 0.
    """
    high = torch.where(valid, values, torch.full_like(values, -torch.inf))
    low = torch.where(valid, values, torch.full_like(values, torch.inf))
    count = valid.sum(dim=dims, keepdim=True)
    return (count < 2) | (high.amax(dim=dims, keepdim=True) == low.amin(dim=dims, keepdim=True))


def _keep(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # where() rather than a product: a degenerate group's 0/0 = NaN must become exactly 0.
    return torch.where(keep, values, torch.zeros_like(values))


def _group_signal(rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor) -> torch.Tensor:
    """Valid samples of groups that carry signal (at least two valid, not all equal)."""
    return valid_P_G & ~_flat(rewards_P_G, valid_P_G, (-1,))


def _group_centred(rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor) -> torch.Tensor:
    """r - group mean, exactly 0 on invalid samples and on groups without signal."""
    centred_P_G = rewards_P_G - _masked_mean(rewards_P_G, valid_P_G, (-1,))
    return _keep(centred_P_G, _group_signal(rewards_P_G, valid_P_G))


def _group_scaled(rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor, eps: float) -> torch.Tensor:
    """(r - group mean) / (group std + eps), 0 on invalid samples and flat groups."""
    centred_P_G = rewards_P_G - _masked_mean(rewards_P_G, valid_P_G, (-1,))
    scaled_P_G = centred_P_G / (_masked_std(rewards_P_G, valid_P_G, (-1,)) + eps)
    return _keep(scaled_P_G, _group_signal(rewards_P_G, valid_P_G))


def _whitened(values: torch.Tensor, valid: torch.Tensor, eps: float) -> torch.Tensor:
    """(v - batch mean) / (batch std + eps) over every valid entry; 0 if they are all equal."""
    dims = tuple(range(values.dim()))
    centred = values - _masked_mean(values, valid, dims)
    whitened = centred / (_masked_std(values, valid, dims) + eps)
    return _keep(whitened, valid & ~_flat(values, valid, dims))


def grpo(rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath sec. 4.1.2): (r - group mean) / (group std + eps).

    (P, G) rewards of G samples for each of P prompts; `valid_P_G` (bool) marks the graded
    ones. Invalid samples are left out of every mean and std and get exactly 0; groups with
    fewer than two valid samples or identical valid rewards carry no signal and get 0.
    """
    rewards_P_G, valid_P_G = _checked(rewards_P_G, valid_P_G, 2, "(P, G)")
    return _group_scaled(rewards_P_G, valid_P_G, eps)


def drgrpo(rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025): r - group mean, without GRPO's division by the group std,
    which up-weights prompts that are almost always (or never) solved. `eps` is unused; masks
    and degenerate groups as in `grpo`."""
    rewards_P_G, valid_P_G = _checked(rewards_P_G, valid_P_G, 2, "(P, G)")
    return _group_centred(rewards_P_G, valid_P_G)


def rloo(rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024; Kool et al. 2019): r_i minus the mean of the OTHER valid
    samples of its group, = G_v / (G_v - 1) * (r_i - group mean) with G_v valid samples.

    Leaving r_i out of its own baseline keeps the estimator unbiased. `eps` is unused; groups
    with fewer than two valid samples (no "other" sample) or all-equal rewards get exactly 0.
    """
    rewards_P_G, valid_P_G = _checked(rewards_P_G, valid_P_G, 2, "(P, G)")
    count_P_1 = valid_P_G.sum(dim=-1, keepdim=True).to(rewards_P_G.dtype)
    # Flat groups are already 0, so clamping G_v - 1 only avoids 1/0 for G_v = 1.
    return _group_centred(rewards_P_G, valid_P_G) * count_P_1 / (count_P_1 - 1).clamp(min=1)


def reinforce_pp(
    rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """REINFORCE++ (Hu 2025): (r - batch mean) / (batch std + eps) over every valid sample.

    No per-group baseline: a prompt whose samples all got the same reward still gets a
    non-zero advantage (its distance from the batch mean). Only a batch whose valid rewards
    are all equal gets 0.
    """
    rewards_P_G, valid_P_G = _checked(rewards_P_G, valid_P_G, 2, "(P, G)")
    return _whitened(rewards_P_G, valid_P_G, eps)


def reinforce_pp_baseline(
    rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """REINFORCE++-baseline (Hu 2025): c = r - group mean (as `drgrpo`), then whitened over the
    batch: (c - batch mean of c) / (batch std of c + eps) over every valid sample.

    Scaling by the batch's std rather than each group's keeps the relative size of
    advantages across prompts. A batch whose c are all equal gets 0. Each group's c sum to
    0, so the batch mean is 0 up to rounding; degenerate groups are kept at exactly 0.
    """
    rewards_P_G, valid_P_G = _checked(rewards_P_G, valid_P_G, 2, "(P, G)")
    centred_P_G = _group_centred(rewards_P_G, valid_P_G)
    return _keep(_whitened(centred_P_G, valid_P_G, eps), _group_signal(rewards_P_G, valid_P_G))


def grpo_per_turn(
    rewards_P_G_K: torch.Tensor, valid_P_G_K: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Per-turn GRPO for multi-turn episodes: `grpo` on each turn's return-to-go.

    `rewards_P_G_K[p, g, k]` is the reward of turn k of episode g of prompt p (K = the most
    turns of any episode); `valid_P_G_K` is False where an episode has no turn k or it failed.
    R_k = sum of the valid r_j with j >= k (undiscounted, so an episode's final outcome
    credits every earlier turn); then, for each k separately, (R_k - mean_k) / (std_k + eps)
    over the group's episodes that have a valid turn k, 0 when fewer than two do or their R_k
    are all equal. With K = 1 this is exactly `grpo`.
    """
    rewards_P_G_K, valid_P_G_K = _checked(rewards_P_G_K, valid_P_G_K, 3, "(P, G, K)")
    returns_P_G_K = rewards_P_G_K.flip(-1).cumsum(-1).flip(-1)  # invalid turns are already 0
    P, G, K = returns_P_G_K.shape
    # One (P*K, G) row per (prompt, turn): the very same computation as grpo's (P, G) rows.
    returns_PK_G = returns_P_G_K.permute(0, 2, 1).reshape(P * K, G)
    valid_PK_G = valid_P_G_K.permute(0, 2, 1).reshape(P * K, G)
    advantages_PK_G = _group_scaled(returns_PK_G, valid_PK_G, eps)
    return advantages_PK_G.reshape(P, K, G).permute(0, 2, 1).contiguous()
