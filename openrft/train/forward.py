"""Per-token log-probs (and entropies) of training rows under the policy: the update's forward.

Two implementations with one contract, `(causal_lm, rows, chunk_tokens, with_entropy) ->
RowLogprobs`:
- `plain_row_logprobs`: the rows right-padded into one batch and run through the model as
  transformers and peft run it (its own attention, its own LM head), then a log-softmax of
  the logits that predict trained tokens. Works for any causal LM transformers loads.
- `packed_row_logprobs`: the fast path (openrft.fast.packed_attention and .lm_head): each
  group's prompt once, no padding, the LM head in chunks with a hand-written backward.
`choose_forward` picks one at job start (`train.fast_paths`): the packed forward where its
capability checks pass and it agrees with the plain one on a probe, else the plain one, with
the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from openrft.algo.logprobs import logprobs_and_entropy
from openrft.errors import ModelError
from openrft.fast import lm_head, packed_attention
from openrft.fast.lm_head import lm_head_logprobs
from openrft.types import TrainRow

# The packed forward may differ from the plain one on the probe by at most this many nats
# per token (mean): float32 sums in another order differ by ~1e-6; bf16 models by ~1e-2
# (the plain forward rounds its logits to bf16, the packed one does not); a packed forward
# that computes something else differs by tenths.
AGREEMENT = {torch.float32: 1e-3, torch.float64: 1e-6}
HALF_AGREEMENT = 0.1


@dataclass(frozen=True)
class RowLogprobs:
    """Per response token of each row, (B, T) with T the longest response; zeros where
    `mask_B_T` (the rows' loss masks) is 0."""

    logprobs_B_T: torch.Tensor
    entropy_B_T: torch.Tensor  # zeros when not asked for
    mask_B_T: torch.Tensor  # float 0/1: trained tokens


RowForward = Callable[[PreTrainedModel, Sequence[TrainRow], int, bool], RowLogprobs]


def _trained_targets(rows: Sequence[TrainRow], device: torch.device) -> tuple:
    """(mask_B_T, targets_N): the loss masks as one padded float tensor and the trained
    tokens, row by row, in mask order."""
    width = max(len(row.response) for row in rows)
    mask_B_T = torch.zeros((len(rows), width), device=device)
    for b, row in enumerate(rows):
        mask_B_T[b, : len(row.loss_mask)] = torch.tensor(row.loss_mask, dtype=torch.float32)
    targets = [t for row in rows for t, m in zip(row.response, row.loss_mask, strict=True) if m]
    return mask_B_T, torch.tensor(targets, dtype=torch.long, device=device)


def _scatter(
    mask_B_T: torch.Tensor, logprobs_N: torch.Tensor, entropy_N: torch.Tensor | None
) -> RowLogprobs:
    selected = mask_B_T.bool()
    logprobs_B_T = torch.zeros(mask_B_T.shape, device=mask_B_T.device, dtype=logprobs_N.dtype)
    logprobs_B_T = logprobs_B_T.masked_scatter(selected, logprobs_N)
    entropy_B_T = torch.zeros_like(logprobs_B_T)
    if entropy_N is not None:
        entropy_B_T = entropy_B_T.masked_scatter(selected, entropy_N.to(entropy_B_T.dtype))
    return RowLogprobs(logprobs_B_T, entropy_B_T, mask_B_T)


def packed_row_logprobs(
    causal_lm: PreTrainedModel, rows: Sequence[TrainRow], chunk_tokens: int, with_entropy: bool
) -> RowLogprobs:
    """The fast path: rows that share a prompt (a GRPO group) are packed into one segment,
    the prompt once and the responses after it, so the prompt is computed once for the group
    and gradients from every response flow through it; segments follow each other without
    padding. Only hidden states that predict trained tokens reach the LM head, in chunks, so
    full-vocabulary logits for the batch never exist at once."""
    device = next(causal_lm.parameters()).device
    packed = packed_attention.pack_rows(list(rows))
    hidden_N_H = packed_attention.packed_hidden_states(causal_lm, packed)
    mask_B_T, targets_N = _trained_targets(rows, device)
    logprobs_N, entropy_N = lm_head_logprobs(
        causal_lm, hidden_N_H[packed.predictor_N.to(device)], targets_N, chunk_tokens, with_entropy
    )
    return _scatter(mask_B_T, logprobs_N, entropy_N)


def plain_row_logprobs(
    causal_lm: PreTrainedModel, rows: Sequence[TrainRow], chunk_tokens: int, with_entropy: bool
) -> RowLogprobs:
    """The plain path: every row whole (prompt recomputed per row) in one padded batch
    through the model's own forward. Prompts are left-padded so they all end at one column
    and responses right-padded after it (position ids count real tokens only): the logits
    are kept (`logits_to_keep`) only from the last prompt column on. `chunk_tokens` is
    unused: the model makes the logits."""
    device = next(causal_lm.parameters()).device
    prompt_width = max(row.prompt_length for row in rows)
    response_width = max(len(row.response) for row in rows)
    ids_B_L = torch.zeros((len(rows), prompt_width + response_width), dtype=torch.long)
    attention_B_L = torch.zeros_like(ids_B_L)
    for b, row in enumerate(rows):
        start = prompt_width - row.prompt_length
        ids_B_L[b, start : start + len(row.token_ids)] = torch.tensor(row.token_ids)
        attention_B_L[b, start : start + len(row.token_ids)] = 1
    positions_B_L = (attention_B_L.cumsum(-1) - 1).clamp(min=0)
    # Kept logits: column k predicts response token k of every row.
    logits_B_K_V = causal_lm(
        input_ids=ids_B_L.to(device),
        attention_mask=attention_B_L.to(device),
        position_ids=positions_B_L.to(device),
        use_cache=False,
        logits_to_keep=response_width + 1,
    ).logits[:, :-1]
    mask_B_T, targets_N = _trained_targets(rows, device)
    logits_N_V = logits_B_K_V[mask_B_T.bool()]
    logprobs_N, entropy_N = logprobs_and_entropy(logits_N_V, targets_N, with_entropy)
    return _scatter(mask_B_T, logprobs_N, entropy_N)


@torch.no_grad()
def sequence_logprobs(model: torch.nn.Module, token_ids: Sequence[int]) -> torch.Tensor:
    """The model's log-prob of each token after the first by the plain forward, in eval mode
    (no dropout), float64 on the CPU: what the weight-sync probe compares a sampler with. A
    peft wrapper is looked through."""
    ids = tuple(token_ids)
    row = TrainRow(ids, 1, (True,) * (len(ids) - 1), (0.0,) * (len(ids) - 1))
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    was_training = causal_lm.training
    causal_lm.eval()
    try:
        out = plain_row_logprobs(causal_lm, [row], 0, with_entropy=False)
    finally:
        causal_lm.train(was_training)
    return out.logprobs_B_T[0].double().cpu()


def probe_rows(token_ids: Sequence[int]) -> list[TrainRow]:
    """Rows the two forwards are compared on at job start: two responses to one prompt made
    of the probe's tokens, one of them interleaving trained and untrained tokens."""
    ids = tuple(token_ids)
    if not ids:
        raise ValueError("the forward probe needs at least one token")
    ids = (ids * (12 // len(ids) + 1))[: max(len(ids), 12)]  # a short prompt, repeated
    prompt, rest = ids[: len(ids) // 2], ids[len(ids) // 2 :]
    short = rest[: max(2, len(rest) // 2)]
    mask = tuple(j % 3 != 1 for j in range(len(rest)))
    return [
        TrainRow(prompt + rest, len(prompt), mask, (1.0,) * len(rest)),
        TrainRow(prompt + short, len(prompt), (True,) * len(short), (1.0,) * len(short)),
    ]


@torch.no_grad()
def choose_forward(
    causal_lm: PreTrainedModel, fast_paths: bool, probe_ids: Sequence[int], chunk_tokens: int
) -> tuple[RowForward, str]:
    """The forward the update uses and a phrase saying which and why, for the job's log."""
    if not fast_paths:
        return plain_row_logprobs, "plain forward (train.fast_paths = off)"
    reason = packed_attention.unsupported_reason(causal_lm) or lm_head.unsupported_reason(causal_lm)
    if reason is not None:
        return plain_row_logprobs, f"plain forward ({reason})"
    rows = probe_rows(probe_ids)
    was_training = causal_lm.training
    causal_lm.eval()
    try:
        fast = packed_row_logprobs(causal_lm, rows, chunk_tokens, with_entropy=False)
    except ModelError as error:
        return plain_row_logprobs, f"plain forward (packed forward: {error})"
    finally:
        causal_lm.train(was_training)
    causal_lm.eval()
    try:
        plain = plain_row_logprobs(causal_lm, rows, chunk_tokens, with_entropy=False)
    finally:
        causal_lm.train(was_training)
    difference_B_T = (fast.logprobs_B_T - plain.logprobs_B_T).abs() * plain.mask_B_T
    gap = float(difference_B_T.sum() / plain.mask_B_T.sum())
    dtype = causal_lm.get_input_embeddings().weight.dtype
    if gap > AGREEMENT.get(dtype, HALF_AGREEMENT):
        return plain_row_logprobs, (
            f"plain forward (the packed forward differs from it by {gap:.3g} nats per token "
            "on a probe)"
        )
    return packed_row_logprobs, "packed forward (prompts once per group, chunked LM head)"
