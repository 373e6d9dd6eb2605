"""Name -> function tables for every algorithm variant a config can pick by string, and the
only place that dispatches on those names.

The variant functions live in advantages.py / losses.py / shaping.py, which never import this
module (so there is no cycle). `lookup` turns an unknown name into an error that lists every
valid choice; `aggregate_loss` and `sampler_correction_weights` are the by-name entry points.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch

from openrft.algo.advantages import (
    drgrpo,
    grpo,
    grpo_per_turn,
    reinforce_pp,
    reinforce_pp_baseline,
    rloo,
)
from openrft.algo.losses import (
    aggregate_constant,
    aggregate_sequence_mean,
    aggregate_token_mean,
    cispo,
    gspo,
    importance_sampling,
    kl_k1,
    kl_k3,
    ppo,
    sampler_weights_mask,
    sampler_weights_off,
    sampler_weights_truncate,
)

Tensor = torch.Tensor
Entry = TypeVar("Entry")

# fn(rewards, valid, eps) -> advantages, same shape as rewards
AdvantageFn = Callable[[Tensor, Tensor, float], Tensor]
# fn(logprobs_B_T, old_logprobs_B_T, advantages_B_T, mask_B_T, clip_low, clip_high)
#   -> (loss_B_T, clipped_B_T)
PolicyLossFn = Callable[[Tensor, Tensor, Tensor, Tensor, float, float], tuple[Tensor, Tensor]]
# fn(loss_B_T, mask_B_T, total_tokens, total_sequences, max_completion_tokens) -> scalar
AggregationFn = Callable[[Tensor, Tensor, float, float, int], Tensor]
# fn(logprobs_B_T, ref_logprobs_B_T) -> per-token KL estimate
KLFn = Callable[[Tensor, Tensor], Tensor]
# fn(old_logprobs_B_T, sampler_logprobs_B_T, cap) -> per-token weights
SamplerCorrectionFn = Callable[[Tensor, Tensor, float], Tensor]


@dataclass(frozen=True)
class AdvantageEstimator:
    """An advantage estimator and what the caller must know to feed it."""

    fn: AdvantageFn
    per_turn: bool  # True: rewards are (P, G, K) per turn; False: (P, G) per episode
    reference: str  # the paper it implements


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "grpo": AdvantageEstimator(grpo, False, "Shao et al. 2024, DeepSeekMath"),
    "drgrpo": AdvantageEstimator(drgrpo, False, "Liu et al. 2025, Dr. GRPO"),
    "rloo": AdvantageEstimator(rloo, False, "Ahmadian et al. 2024; Kool et al. 2019"),
    "reinforce_pp": AdvantageEstimator(reinforce_pp, False, "Hu 2025, REINFORCE++"),
    "reinforce_pp_baseline": AdvantageEstimator(
        reinforce_pp_baseline, False, "Hu 2025, REINFORCE++-baseline"
    ),
    "grpo_per_turn": AdvantageEstimator(
        grpo_per_turn, True, "GRPO (Shao et al. 2024) on per-turn returns-to-go"
    ),
}

POLICY_LOSSES: dict[str, PolicyLossFn] = {
    "ppo": ppo,
    "gspo": gspo,
    "cispo": cispo,
    "importance_sampling": importance_sampling,
}

LOSS_AGGREGATIONS: dict[str, AggregationFn] = {
    "token_mean": aggregate_token_mean,
    "sequence_mean": aggregate_sequence_mean,
    "constant": aggregate_constant,
}

KL_ESTIMATORS: dict[str, KLFn] = {
    "k1": kl_k1,
    "k3": kl_k3,
}

SAMPLER_CORRECTIONS: dict[str, SamplerCorrectionFn] = {
    "truncate": sampler_weights_truncate,
    "mask": sampler_weights_mask,
    "off": sampler_weights_off,
}


def lookup(table: Mapping[str, Entry], name: str, what: str) -> Entry:
    """`table[name]`, or a ValueError that names the bad value and every valid choice."""
    try:
        return table[name]
    except KeyError:
        choices = ", ".join(table)
        raise ValueError(f"unknown {what} '{name}'; choose one of: {choices}") from None


def aggregate_loss(
    loss_B_T: Tensor,
    mask_B_T: Tensor,
    mode: str,
    total_tokens: float,
    total_sequences: float,
    max_completion_tokens: int,
) -> Tensor:
    """Scalar loss of one micro-batch, normalised by the counts of the WHOLE batch.

    Every mode is linear in the micro-batch's tokens with batch-wide denominators, so summing
    this over the micro-batches of a step (gradient accumulation) gives exactly the loss and
    gradient of the full batch, whatever the split.
    """
    aggregate_fn = lookup(LOSS_AGGREGATIONS, mode, "loss aggregation")
    return aggregate_fn(loss_B_T, mask_B_T, total_tokens, total_sequences, max_completion_tokens)


def sampler_correction_weights(
    old_logprobs_B_T: Tensor, sampler_logprobs_B_T: Tensor, mode: str, cap: float
) -> Tensor:
    """Per-token weights w = pi_old / pi_sampler for rollouts sampled by another engine than
    the trainer, bounded by `mode` ("truncate": min(w, cap); "mask": w inside [1/cap, cap],
    else 0; "off": 1). No gradient flows through them."""
    correction_fn = lookup(SAMPLER_CORRECTIONS, mode, "sampler correction")
    return correction_fn(old_logprobs_B_T, sampler_logprobs_B_T, cap)
