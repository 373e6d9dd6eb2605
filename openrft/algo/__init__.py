"""The GRPO algorithm math as pure tensor functions: advantages, losses, KL, log-probs.

No I/O, no config objects: the trainer passes tensors and plain numbers in and gets tensors
back. String-selected variants are resolved through `openrft.algo.registry`.
"""

from openrft.algo.advantages import group_advantages
from openrft.algo.logprobs import selective_log_softmax, token_logprobs_and_entropy
from openrft.algo.losses import (
    aggregate_loss,
    clipped_policy_loss,
    kl_k1,
    kl_k3,
    masked_mean,
    sampler_correction_weights,
)
from openrft.algo.registry import (
    ADVANTAGE_SCALINGS,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    lookup,
)

__all__ = [
    "ADVANTAGE_SCALINGS",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "aggregate_loss",
    "clipped_policy_loss",
    "group_advantages",
    "kl_k1",
    "kl_k3",
    "lookup",
    "masked_mean",
    "sampler_correction_weights",
    "selective_log_softmax",
    "token_logprobs_and_entropy",
]
