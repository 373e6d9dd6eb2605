"""The RL algorithm math as pure tensor functions: advantages, policy losses, shaping, KL,
log-probs.

No I/O, no config objects: the trainer passes tensors and plain numbers in and gets tensors
back. String-selected variants are resolved through the tables of `openrft.algo.registry`.
"""

from openrft.algo.advantages import (
    drgrpo,
    grpo,
    grpo_per_turn,
    reinforce_pp,
    reinforce_pp_baseline,
    rloo,
)
from openrft.algo.logprobs import logprobs_and_entropy, selective_log_softmax
from openrft.algo.losses import (
    cispo,
    gspo,
    importance_sampling,
    kl_k1,
    kl_k3,
    masked_mean,
    ppo,
    sampler_weights_mask,
    sampler_weights_off,
    sampler_weights_truncate,
)
from openrft.algo.registry import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    SAMPLER_CORRECTIONS,
    AdvantageEstimator,
    aggregate_loss,
    lookup,
    sampler_correction_weights,
)
from openrft.algo.shaping import flat_groups, overlong_penalty

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "POLICY_LOSSES",
    "SAMPLER_CORRECTIONS",
    "AdvantageEstimator",
    "aggregate_loss",
    "cispo",
    "drgrpo",
    "flat_groups",
    "grpo",
    "grpo_per_turn",
    "gspo",
    "importance_sampling",
    "kl_k1",
    "kl_k3",
    "logprobs_and_entropy",
    "lookup",
    "masked_mean",
    "overlong_penalty",
    "ppo",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "rloo",
    "sampler_correction_weights",
    "sampler_weights_mask",
    "sampler_weights_off",
    "sampler_weights_truncate",
    "selective_log_softmax",
]
