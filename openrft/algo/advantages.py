"""Group-relative advantages: the "G" in GRPO.

Owns `group_advantages` (centre each prompt's rewards on the group mean, then scale) and the
three scaling variants it dispatches to through `registry.ADVANTAGE_SCALINGS`.
"""

from __future__ import annotations

import torch


def _masked_population_std(
    values_P_G: torch.Tensor, valid_P_G: torch.Tensor, dim: int | None
) -> torch.Tensor:
    """Population std (correction=0) of the valid entries along `dim` (None: all entries).

    Population rather than sample std because GRPO normalises a finite, fully observed group;
    it also stays defined for two-sample groups without the 1/(n-1) blow-up.
    """
    zeros = torch.zeros_like(values_P_G)
    dims = () if dim is None else (dim,)
    keep = dim is not None
    count = valid_P_G.sum(dim=dims, keepdim=keep).clamp(min=1).to(values_P_G.dtype)
    mean = torch.where(valid_P_G, values_P_G, zeros).sum(dim=dims, keepdim=keep) / count
    squared = torch.where(valid_P_G, (values_P_G - mean) ** 2, zeros)
    return (squared.sum(dim=dims, keepdim=keep) / count).sqrt()


def scale_by_group_std(
    rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor, eps: float
) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath eq. 3): divide by each group's own std."""
    return _masked_population_std(rewards_P_G, valid_P_G, dim=-1) + eps


def scale_by_batch_std(
    rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor, eps: float
) -> torch.Tensor:
    """Divide every group by the std of all valid rewards in the batch.

    Keeps the relative size of advantages across prompts, so an easy prompt whose rewards
    barely differ does not get its tiny differences inflated to unit scale.
    """
    return _masked_population_std(rewards_P_G, valid_P_G, dim=None) + eps


def scale_none(rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor, eps: float) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025): no std division, which removes the question-difficulty bias."""
    return torch.ones((), dtype=rewards_P_G.dtype, device=rewards_P_G.device)


def group_advantages(
    rewards_P_G: torch.Tensor,
    scaling: str = "group",
    eps: float = 1e-6,
    valid_P_G: torch.Tensor | None = None,
) -> torch.Tensor:
    """Advantages of G samples for each of P prompts: (reward - group mean) / scale.

    `valid_P_G` (bool) marks samples whose grading succeeded; invalid ones are left out of
    every mean and std and get advantage exactly 0, whatever their reward (even NaN).
    Groups with fewer than two valid samples or identical valid rewards carry no
    learning signal and get exactly 0 (not NaN, and not the amplified float noise that
    dividing ~1e-17 by ~1e-17 would give).
    """
    from openrft.algo.registry import ADVANTAGE_SCALINGS, lookup  # lazy: registry imports us

    scale_fn = lookup(ADVANTAGE_SCALINGS, scaling, "advantage scaling")
    if rewards_P_G.dim() != 2:
        raise ValueError(f"rewards must have shape (P, G), got {tuple(rewards_P_G.shape)}")
    rewards = rewards_P_G if rewards_P_G.is_floating_point() else rewards_P_G.double()
    if valid_P_G is None:
        valid = torch.ones_like(rewards, dtype=torch.bool)
    else:
        if valid_P_G.shape != rewards.shape:
            raise ValueError(
                f"valid mask shape {tuple(valid_P_G.shape)} != rewards {tuple(rewards.shape)}"
            )
        valid = valid_P_G.to(torch.bool)
    zeros = torch.zeros_like(rewards)
    # Replace invalid rewards first so a NaN from a failed grader cannot leak into any sum.
    rewards = torch.where(valid, rewards, zeros)

    count_P_1 = valid.sum(dim=-1, keepdim=True)
    mean_P_1 = rewards.sum(dim=-1, keepdim=True) / count_P_1.clamp(min=1).to(rewards.dtype)
    centred_P_G = rewards - mean_P_1

    # Exact test for "no signal": max == min over the valid entries (also true for one sample).
    max_P_1 = torch.where(valid, rewards, torch.full_like(rewards, -torch.inf)).amax(-1, True)
    min_P_1 = torch.where(valid, rewards, torch.full_like(rewards, torch.inf)).amin(-1, True)
    degenerate_P_1 = (count_P_1 < 2) | (max_P_1 == min_P_1)

    advantages_P_G = centred_P_G / scale_fn(rewards, valid, eps)
    return torch.where(valid & ~degenerate_P_1, advantages_P_G, zeros)
