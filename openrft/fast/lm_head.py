"""The LM head's log-probs and entropies straight from hidden states, in chunks, with a
hand-written backward: the training forward's fast path for the LM head.

Full-vocabulary logits for a batch are gigabytes (V ~ 150k); this computes them one chunk of
rows at a time, in float32, and keeps for backward only what its own gradient formula needs.
Its plain twin is the model's own forward (logits for every position, then
`openrft.algo.logprobs.logprobs_and_entropy`): tests/fast/test_lm_head.py checks values and
gradients against it.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import PreTrainedModel

from openrft.compat import torch as torch_internals

# Final-logit settings some architectures apply after the LM head that this head does not
# (Gemma 2's final_logit_softcapping it does apply): a model with one of them is trained by
# the plain path.
LOGIT_SETTINGS = ("logit_scale", "logits_scaling", "output_logits_scale")


def unsupported_reason(causal_lm: PreTrainedModel) -> str | None:
    """Why the chunked LM head cannot compute `causal_lm`'s log-probs (None: it can)."""
    head = causal_lm.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        return f"its output embeddings are a {type(head).__name__}, not a linear layer"
    for name in LOGIT_SETTINGS:
        value = getattr(causal_lm.config, name, None)
        if value is not None and value != 1:
            return f"its config's {name} = {value} transforms the logits"
    return None


def lm_head_logprobs(
    causal_lm: PreTrainedModel,
    hidden_N_H: torch.Tensor,
    targets_N: torch.Tensor,
    chunk_tokens: int,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropies) of `targets_N` under the model's LM head, in chunks, with the
    model's final-logit soft cap where it has one (Gemma 2)."""
    head = causal_lm.get_output_embeddings()
    return chunked_logprobs_and_entropy(
        hidden_N_H,
        head.weight,
        targets_N,
        chunk_tokens,
        head.bias,
        with_entropy=with_entropy,
        softcap=getattr(causal_lm.config, "final_logit_softcapping", None),
    )


# With gradients on, the log-probs of all chunks are kept for backward while they fit in this
# many bytes (float32); above it each chunk's logits are recomputed in backward instead, so
# memory stays at one chunk's. Recomputing is a second LM-head matmul per chunk.
KEEP_FOR_BACKWARD_BYTES = 256 * 2**20


def _bf16_products(
    hidden_C_H: torch.Tensor, weight_V_H: torch.Tensor
) -> contextlib.AbstractContextManager[None]:
    """Let oneDNN run a float32 matmul on bf16 tiles (AMX, AVX-512 BF16) when both operands
    are bf16 values: the products of two bf16 numbers are exact in float32 and the sums stay
    float32, so the logits are float32 logits, not rounded ones (a bf16 head, 538 x 576 by
    49152: 209 -> 125 ms). Where the CPU has no bf16 units PyTorch does the plain float32
    matmul."""
    exact = hidden_C_H.dtype == weight_V_H.dtype == torch.bfloat16
    if not exact or hidden_C_H.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return contextlib.nullcontext()
    if torch_internals.PROBLEM is not None:
        return contextlib.nullcontext()
    return torch_internals.float32_matmul_on_bf16_tiles()


def _chunk_logits(
    hidden_C_H: torch.Tensor,
    weight_V_H: torch.Tensor,
    bias_V: torch.Tensor | None,
    softcap: float | None,
) -> torch.Tensor:
    """(C, V) logits of one chunk, in at least float32: the only place logits exist. Upcast
    here, not outside, so a float32 copy of a bf16 LM head lives one chunk at a time (and
    bf16-rounded logits, off by up to ~0.1 at typical magnitudes, never do). `softcap` is
    Gemma 2's final-logit soft cap: c * tanh(z / c)."""
    dtype = torch.promote_types(
        torch.promote_types(hidden_C_H.dtype, weight_V_H.dtype), torch.float32
    )
    with _bf16_products(hidden_C_H, weight_V_H):
        logits_C_V = hidden_C_H.to(dtype) @ weight_V_H.to(dtype).T
    if bias_V is not None:
        logits_C_V = logits_C_V + bias_V.to(dtype)
    if softcap is not None:
        logits_C_V = torch.tanh(logits_C_V / softcap) * softcap
    return logits_C_V


def _chunk_log_probs(logits_C_V: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature != 1.0:
        logits_C_V = logits_C_V / temperature
    return torch.log_softmax(logits_C_V, dim=-1)


def _entropy(log_probs_C_V: torch.Tensor) -> torch.Tensor:
    """-sum p log p per row, the sum as a batched dot product: no (C, V) product is written."""
    probs_C_1_V = log_probs_C_V.exp()[:, None, :]
    return -(probs_C_1_V @ log_probs_C_V[:, :, None]).flatten()


class _ChunkLogprobs(torch.autograd.Function):
    """One chunk's target log-probs (and entropies) with a hand-written backward:

        d logprob_t / d z = onehot_t - p        d entropy / d z = -p * (log p + entropy)

    so backward needs only the log-probs (kept, or recomputed from the hidden states), never
    autograd's saved intermediates. The two backward matmuls run in the LM head's own dtype
    (bf16 on AMX instead of a float32 copy): the gradient is rounded there, the logits never.
    """

    @staticmethod
    def forward(
        ctx, hidden_C_H, weight_V_H, bias_V, targets_C, temperature, with_entropy, keep, softcap
    ):
        logits_C_V = _chunk_logits(hidden_C_H, weight_V_H, bias_V, softcap)
        log_probs_C_V = _chunk_log_probs(logits_C_V, temperature)
        logprobs_C = log_probs_C_V.gather(-1, targets_C.unsqueeze(-1)).squeeze(-1)
        entropy_C = _entropy(log_probs_C_V) if with_entropy else None
        ctx.temperature, ctx.with_entropy, ctx.softcap = temperature, with_entropy, softcap
        kept = log_probs_C_V if keep and softcap is None else None  # the cap needs the logits
        ctx.save_for_backward(hidden_C_H, weight_V_H, bias_V, targets_C, entropy_C, kept)
        return (logprobs_C, entropy_C) if with_entropy else logprobs_C

    @staticmethod
    def backward(ctx, grad_logprobs_C, grad_entropy_C=None):
        hidden_C_H, weight_V_H, bias_V, targets_C, entropy_C, log_probs_C_V = ctx.saved_tensors
        if log_probs_C_V is None:
            logits_C_V = _chunk_logits(hidden_C_H, weight_V_H, bias_V, ctx.softcap)
            log_probs_C_V = _chunk_log_probs(logits_C_V, ctx.temperature)
        # With g and e a row's incoming gradients (log-prob and entropy), the tempered
        # logits' gradient is g onehot - p (g + e (log p + H)), over T: p times a coefficient
        # made of two numbers per row and log p. Three passes over (C, V) (the coefficient,
        # exp, the product) instead of one per term.
        g_C = grad_logprobs_C / ctx.temperature
        coefficient = -g_C[:, None]
        if ctx.with_entropy and grad_entropy_C is not None:
            e_C = grad_entropy_C / ctx.temperature
            shift_C_1 = coefficient - (e_C * entropy_C)[:, None]
            coefficient = torch.addcmul(shift_C_1, log_probs_C_V, -e_C[:, None])
        grad_C_V = log_probs_C_V.exp().mul_(coefficient)
        grad_C_V.scatter_add_(1, targets_C[:, None], g_C[:, None])
        if ctx.softcap is not None:  # d/dz c tanh(z / c) = 1 - tanh(z / c)^2
            grad_C_V *= 1 - (logits_C_V / ctx.softcap) ** 2
        half = weight_V_H.dtype in (torch.bfloat16, torch.float16)
        matmul_dtype = weight_V_H.dtype if half else grad_C_V.dtype
        grad_low_C_V = grad_C_V.to(matmul_dtype)
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_hidden = (grad_low_C_V @ weight_V_H.to(matmul_dtype)).to(hidden_C_H.dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = (grad_low_C_V.T @ hidden_C_H.to(matmul_dtype)).to(weight_V_H.dtype)
        if bias_V is not None and ctx.needs_input_grad[2]:
            grad_bias = grad_C_V.sum(0).to(bias_V.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


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


def chunked_logprobs_and_entropy(
    hidden_N_H: torch.Tensor,
    lm_head_weight_V_H: torch.Tensor,
    targets_N: torch.Tensor,
    chunk_tokens: int = 1024,
    lm_head_bias_V: torch.Tensor | None = None,
    temperature: float = 1.0,
    with_entropy: bool = True,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each target token and entropy of each next-token distribution.

    Rows are processed `chunk_tokens` at a time, so peak memory holds one (chunk, V) block of
    float32 logits instead of (N, V) (V ~ 150k makes the latter gigabytes). With gradients on,
    backward is written by hand (`_ChunkLogprobs`): it keeps each chunk's log-probs while all
    of them fit in `KEEP_FOR_BACKWARD_BYTES`, and recomputes them from the hidden states
    otherwise. Logits are divided by `temperature` to score the distribution the sampler
    drew from, after the model's final-logit `softcap` if it has one (Gemma 2). Entropy is
    returned with its graph; detach it when it is only logged.
    """
    _check_arguments(hidden_N_H, targets_N, chunk_tokens, temperature)
    # The kept log-probs of every chunk together, float32 at least. (Without a graph to build,
    # nothing is kept: a chunk's context goes as soon as its outputs are made.)
    keep = hidden_N_H.shape[0] * lm_head_weight_V_H.shape[0] * 4 <= KEEP_FOR_BACKWARD_BYTES
    logprob_chunks: list[torch.Tensor] = []
    entropy_chunks: list[torch.Tensor] = []
    for start in range(0, hidden_N_H.shape[0], chunk_tokens):
        hidden_C_H = hidden_N_H[start : start + chunk_tokens]
        targets_C = targets_N[start : start + chunk_tokens]
        outputs = _ChunkLogprobs.apply(
            hidden_C_H,
            lm_head_weight_V_H,
            lm_head_bias_V,
            targets_C,
            temperature,
            with_entropy,
            keep,
            softcap,
        )
        logprobs_C, entropy_C = outputs if with_entropy else (outputs, None)
        logprob_chunks.append(logprobs_C)
        if entropy_C is not None:
            entropy_chunks.append(entropy_C)

    if not logprob_chunks:  # N == 0
        dtype = torch.promote_types(hidden_N_H.dtype, lm_head_weight_V_H.dtype)
        empty_N = hidden_N_H.new_zeros((0,), dtype=torch.promote_types(dtype, torch.float32))
        return empty_N, (empty_N.clone() if with_entropy else None)
    logprobs_N = torch.cat(logprob_chunks)
    entropy_N = torch.cat(entropy_chunks) if with_entropy else None
    return logprobs_N, entropy_N
