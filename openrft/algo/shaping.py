"""Reward shaping and group filtering that DAPO adds around the advantage estimators.

Owns `overlong_penalty` (a length penalty added to the rewards before the advantages) and
`flat_groups` (which groups dynamic sampling drops because they carry no GRPO signal).
"""

from __future__ import annotations

import torch

from openrft.algo.advantages import _checked, _flat


def overlong_penalty(
    lengths_N: torch.Tensor, max_tokens: int, buffer_tokens: int, penalty: float
) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), float64 and <= 0, per sample.

    With L the completion length in tokens: 0 when L <= max_tokens - buffer_tokens; then a
    linear ramp -penalty * (L - (max_tokens - buffer_tokens)) / buffer_tokens reaching
    -penalty at L = max_tokens; -penalty beyond. A hard penalty at the cut would punish sound
    reasoning merely for its length (reward noise); the ramp warns as the limit nears.
    buffer_tokens = 0 turns it off (all zeros).
    """
    if not 0 <= buffer_tokens <= max_tokens:
        raise ValueError(f"need 0 <= buffer_tokens ({buffer_tokens}) <= max_tokens ({max_tokens})")
    if penalty < 0:
        raise ValueError(f"penalty must be >= 0 (it is subtracted), got {penalty}")
    lengths_N = lengths_N.to(torch.float64)
    if buffer_tokens == 0:
        return torch.zeros_like(lengths_N)
    overshoot_N = (lengths_N - (max_tokens - buffer_tokens)).clamp(min=0)
    return -penalty * (overshoot_N / buffer_tokens).clamp(max=1.0)


def flat_groups(rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor) -> torch.Tensor:
    """(P,) bool: True for groups with no GRPO signal, i.e. fewer than two valid samples or
    all valid rewards equal (exactly the groups `grpo` gives all-zero advantages).

    DAPO's dynamic sampling (Yu et al. 2025, sec. 3.2) drops these and samples more prompts,
    so every group in a batch contributes gradient. Invalid rewards may be NaN.
    """
    rewards_P_G, valid_P_G = _checked(rewards_P_G, valid_P_G, 2, "(P, G)")
    return _flat(rewards_P_G, valid_P_G, (-1,)).squeeze(-1)
