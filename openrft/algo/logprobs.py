"""Per-token log-probabilities and entropies from logits already in memory, by plain autograd.

The training forward's fast path computes them straight from hidden states in chunks, with a
hand-written backward (openrft.fast.lm_head); these are its plain twin.
"""

from __future__ import annotations

import torch


def selective_log_softmax(logits_N_V: torch.Tensor, targets_N: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per row, as logit[target] - logsumexp(logits).

    Computed in at least float32: logsumexp in bfloat16 is off by ~1e-2.
    """
    dtype = torch.promote_types(logits_N_V.dtype, torch.float32)
    logits = logits_N_V.to(dtype)
    target_logits_N = logits.gather(-1, targets_N.unsqueeze(-1)).squeeze(-1)
    return target_logits_N - torch.logsumexp(logits, dim=-1)


def logprobs_and_entropy(
    logits_N_V: torch.Tensor, targets_N: torch.Tensor, with_entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each target and entropy of each row's distribution, from logits already in
    memory, by plain autograd: the twin the chunked LM head (openrft.fast.lm_head) is tested
    against. In at least float32."""
    dtype = torch.promote_types(logits_N_V.dtype, torch.float32)
    log_probs_N_V = torch.log_softmax(logits_N_V.to(dtype), dim=-1)
    logprobs_N = log_probs_N_V.gather(-1, targets_N.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logprobs_N, None
    return logprobs_N, -(log_probs_N_V.exp() * log_probs_N_V).sum(-1)
