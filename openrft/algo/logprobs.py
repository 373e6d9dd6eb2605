"""Per-token log-probabilities and entropies straight from hidden states, in chunks.

Owns `token_logprobs_and_entropy`, which never materialises the full (N, V) logits (nor keeps
them for backward), and `selective_log_softmax` for small logits already in memory.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint


def selective_log_softmax(logits_N_V: torch.Tensor, targets_N: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per row, as logit[target] - logsumexp(logits).

    Computed in at least float32: logsumexp in bfloat16 is off by ~1e-2.
    """
    dtype = torch.promote_types(logits_N_V.dtype, torch.float32)
    logits = logits_N_V.to(dtype)
    target_logits_N = logits.gather(-1, targets_N.unsqueeze(-1)).squeeze(-1)
    return target_logits_N - torch.logsumexp(logits, dim=-1)


def _chunk_logprobs_entropy(
    hidden_C_H: torch.Tensor,
    weight_V_H: torch.Tensor,
    bias_V: torch.Tensor | None,
    targets_C: torch.Tensor,
    temperature: float,
    with_entropy: bool,
) -> tuple[torch.Tensor, ...]:
    """(logprobs_C,) or (logprobs_C, entropy_C) for one chunk; the only place logits exist."""
    # Upcast here, not outside, so a float32 copy of a bf16 lm_head lives one chunk at a time.
    dtype = torch.promote_types(
        torch.promote_types(hidden_C_H.dtype, weight_V_H.dtype), torch.float32
    )
    logits_C_V = hidden_C_H.to(dtype) @ weight_V_H.to(dtype).T
    if bias_V is not None:
        logits_C_V = logits_C_V + bias_V.to(dtype)
    if temperature != 1.0:
        logits_C_V = logits_C_V / temperature
    if not with_entropy:
        return (selective_log_softmax(logits_C_V, targets_C),)
    log_probs_C_V = torch.log_softmax(logits_C_V, dim=-1)
    logprobs_C = log_probs_C_V.gather(-1, targets_C.unsqueeze(-1)).squeeze(-1)
    entropy_C = -(log_probs_C_V.exp() * log_probs_C_V).sum(dim=-1)
    return logprobs_C, entropy_C


def _check_arguments(
    hidden_N_H: torch.Tensor, targets_N: torch.Tensor, chunk_tokens: int, temperature: float
) -> None:
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if hidden_N_H.dim() != 2 or targets_N.shape != hidden_N_H.shape[:1]:
        raise ValueError(
            f"expected hidden (N, H) and targets (N,), got {tuple(hidden_N_H.shape)} "
            f"and {tuple(targets_N.shape)}"
        )


def token_logprobs_and_entropy(
    hidden_N_H: torch.Tensor,
    lm_head_weight_V_H: torch.Tensor,
    targets_N: torch.Tensor,
    chunk_tokens: int = 1024,
    lm_head_bias_V: torch.Tensor | None = None,
    temperature: float = 1.0,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each target token and entropy of each next-token distribution.

    Rows are processed `chunk_tokens` at a time, so peak memory holds one (chunk, V) block of
    float32 logits instead of (N, V) (V ~ 150k makes the latter gigabytes). With gradients on,
    each chunk is checkpointed (non-reentrant): backward recomputes its logits instead of
    keeping them. Logits are divided by `temperature` to score the distribution the sampler
    drew from. Entropy is returned with its graph; detach it when it is only logged.
    """
    _check_arguments(hidden_N_H, targets_N, chunk_tokens, temperature)
    inputs = (hidden_N_H, lm_head_weight_V_H, lm_head_bias_V)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    logprob_chunks: list[torch.Tensor] = []
    entropy_chunks: list[torch.Tensor] = []
    for start in range(0, hidden_N_H.shape[0], chunk_tokens):
        args = (
            hidden_N_H[start : start + chunk_tokens],
            lm_head_weight_V_H,
            lm_head_bias_V,
            targets_N[start : start + chunk_tokens],
            temperature,
            with_entropy,
        )
        if needs_grad:
            outputs = torch.utils.checkpoint.checkpoint(
                _chunk_logprobs_entropy, *args, use_reentrant=False
            )
        else:
            outputs = _chunk_logprobs_entropy(*args)
        logprob_chunks.append(outputs[0])
        if with_entropy:
            entropy_chunks.append(outputs[1])

    if not logprob_chunks:  # N == 0
        dtype = torch.promote_types(hidden_N_H.dtype, lm_head_weight_V_H.dtype)
        empty_N = hidden_N_H.new_zeros((0,), dtype=torch.promote_types(dtype, torch.float32))
        return empty_N, (empty_N.clone() if with_entropy else None)
    logprobs_N = torch.cat(logprob_chunks)
    entropy_N = torch.cat(entropy_chunks) if with_entropy else None
    return logprobs_N, entropy_N
