"""The trainer's forward pass over rows packed by prompt, without padding.

Rows that share a prompt (a GRPO group) are laid out as one segment: the prompt once, then
each row's completion. Every segment's tokens are concatenated into a single sequence of N
tokens, so the projections and MLPs (most of the compute) see no padding at all. Only
attention needs the segments apart: the attention function registered here gathers them
into a padded (U, S) batch, applies the group mask (a completion token sees its prompt and
its own completion; a prompt token sees its prompt causally), and scatters the result back.

On the CPU, a bf16 base model with float32 LoRA adapters runs the decoder under bf16 autocast
(the adapters' matmuls in bf16 like the base's, no float32 copies of the activations per
layer), and attention computes in float32, where PyTorch's CPU kernels are faster than in bf16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import peft.helpers
import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel

from openrft.errors import ModelError

ATTENTION_NAME = "openrft_packed"
LAYOUT_KWARG = "openrft_layout"  # the model forward passes extra keyword arguments on to attention
# Where attention computes in float32 for bf16/fp16 models: PyTorch's CPU attention backward
# in bf16 took 5x as long as in float32 (SmolLM2, 8 segments of ~150 tokens: 20 vs 3.7 ms).
FLOAT32_ATTENTION_DEVICES = {"cpu"}
# Where SDPA takes grouped key/value heads with a mask (enable_gqa; 14 vs 17 ms per layer on
# the CPU); elsewhere the heads are repeated, as transformers does for CUDA with a mask.
GROUPED_HEADS_DEVICES = {"cpu"}
# Segment ids in the layout: the prompt, padding, or (>= 0) the row a completion token is of.
PROMPT_SEGMENT, PADDING_SEGMENT = -1, -2


@dataclass(frozen=True)
class PackedRows:
    """N real tokens of U segments (one per distinct prompt), and how attention lays them out
    as a padded (U, S) batch."""

    ids_1_N: torch.Tensor  # token ids, segment after segment
    positions_1_N: torch.Tensor  # position ids: a completion restarts where its prompt ends
    gather_U_S: torch.Tensor  # which of the N tokens sits at (u, s); 0 in the padding
    real_M: torch.Tensor  # flat (u * S + s) index of each of the N tokens, in order
    allowed_U_S_S: torch.Tensor  # allowed[u, query, key]: the attention each token may do
    predictor_N: torch.Tensor  # index (into N) of the state predicting each target, row by row

    def to(self, device: torch.device) -> PackedRows:
        return PackedRows(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def pack_rows(rows: list) -> PackedRows:
    """Lay out rows (`TrainRow`s: token_ids, prompt_length) for one forward pass.

    A completion token attends to its prompt and to the tokens of its own completion before
    it; a prompt token attends causally within the prompt. Positions restart at the prompt
    length for every completion, so each token sees exactly what it saw when it was sampled
    and its log-prob equals a plain forward of prompt + completion. Targets are listed row by
    row: row b's completion token j is predicted by the state before it (the prompt's last
    token for j = 0). A completion's last token predicts nothing and is left out. Padding is a
    segment of its own: no real token attends to it, and it attends at least to itself, so no
    softmax row is empty.
    """
    prompt_rows: dict[tuple[int, ...], list[int]] = {}
    for b, row in enumerate(rows):
        prompt_rows.setdefault(tuple(row.token_ids[: row.prompt_length]), []).append(b)
    ids: list[int] = []
    positions: list[int] = []
    segments: list[list[int]] = []  # per segment, the segment id of each of its tokens
    predictor: dict[int, list[int]] = {}  # row -> indices into N
    for prompt, members in prompt_rows.items():
        start = len(ids)
        ids.extend(prompt)
        positions.extend(range(len(prompt)))
        segment = [PROMPT_SEGMENT] * len(prompt)
        for b in members:
            completion = rows[b].token_ids[rows[b].prompt_length :]
            first = len(ids)
            predictor[b] = [start + len(prompt) - 1, *range(first, first + len(completion) - 1)]
            ids.extend(completion[:-1])
            positions.extend(range(len(prompt), len(prompt) + len(completion) - 1))
            segment.extend([b] * (len(completion) - 1))
        segments.append(segment)

    length = max(len(s) for s in segments)
    gather_U_S = torch.zeros((len(segments), length), dtype=torch.long)
    segments_U_S = torch.full((len(segments), length), PADDING_SEGMENT, dtype=torch.long)
    start = 0
    for u, segment in enumerate(segments):
        gather_U_S[u, : len(segment)] = torch.arange(start, start + len(segment))
        segments_U_S[u, : len(segment)] = torch.tensor(segment)
        start += len(segment)
    real_M = (segments_U_S != PADDING_SEGMENT).flatten().nonzero().squeeze(1)
    query_1_S_1 = torch.arange(length)[None, :, None]
    key_1_1_S = torch.arange(length)[None, None, :]
    key_segment_U_1_S = segments_U_S[:, None, :]
    same_or_prompt = (key_segment_U_1_S == PROMPT_SEGMENT) | (
        key_segment_U_1_S == segments_U_S[:, :, None]
    )
    allowed_U_S_S = (key_1_1_S <= query_1_S_1) & same_or_prompt
    return PackedRows(
        ids_1_N=torch.tensor([ids]),
        positions_1_N=torch.tensor([positions]),
        gather_U_S=gather_U_S,
        real_M=real_M,
        allowed_U_S_S=allowed_U_S_S,
        predictor_N=torch.tensor([i for b in range(len(rows)) for i in predictor[b]]),
    )


def packed_hidden_states(causal_lm: PreTrainedModel, packed: PackedRows) -> torch.Tensor:
    """The decoder's last hidden state of each of the N packed tokens, as (N, H)."""
    device = next(causal_lm.parameters()).device
    packed = packed.to(device)
    with _packed_attention(causal_lm), _mixed_precision(causal_lm):
        hidden_1_N_H = causal_lm.get_decoder()(
            input_ids=packed.ids_1_N,
            position_ids=packed.positions_1_N,
            use_cache=False,
            **{LAYOUT_KWARG: packed},
        ).last_hidden_state
    return hidden_1_N_H[0]


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention over the packed sequence (1, heads, N, head_dim), segment by segment.

    Follows transformers' attention-function contract: returns (1, N, heads, head_dim).
    """
    packed: PackedRows | None = kwargs.get(LAYOUT_KWARG)
    if packed is None or query.shape[0] != 1:
        raise ModelError(f"the {ATTENTION_NAME!r} attention runs only inside packed_hidden_states")
    if kwargs.get("s_aux") is not None:
        raise ModelError("packed training does not support attention sinks (s_aux)")
    softcap = kwargs.get("softcap")
    dtype, device = query.dtype, query.device.type
    half = dtype in (torch.bfloat16, torch.float16)
    compute = torch.float32 if half and device in FLOAT32_ATTENTION_DEVICES else dtype
    segments, length = packed.gather_U_S.shape
    query_U_H_S_D, key_U_K_S_D, value_U_K_S_D = (
        _padded(t[0].to(compute), packed.real_M, segments * length)
        .unflatten(1, (segments, length))
        .transpose(0, 1)
        for t in (query, key, value)
    )
    allowed_U_1_S_S = packed.allowed_U_S_S[:, None]
    if sliding_window is not None:  # a key further back than the window is out of sight
        positions_U_S = packed.positions_1_N[0][packed.gather_U_S]
        distance_U_S_S = positions_U_S[:, :, None] - positions_U_S[:, None, :]
        allowed_U_1_S_S = allowed_U_1_S_S & (distance_U_S_S < sliding_window)[:, None]
    groups = query.shape[1] // key.shape[1]
    gqa = {}
    if groups > 1 and device in GROUPED_HEADS_DEVICES and softcap is None:
        gqa["enable_gqa"] = True
    elif groups > 1:
        key_U_K_S_D, value_U_K_S_D = (
            t.repeat_interleave(groups, dim=1) for t in (key_U_K_S_D, value_U_K_S_D)
        )
    dropout = dropout if module.training else 0.0
    with torch.autocast(query.device.type, enabled=False):
        if softcap is None:
            out_U_H_S_D = F.scaled_dot_product_attention(
                query_U_H_S_D,
                key_U_K_S_D,
                value_U_K_S_D,
                attn_mask=allowed_U_1_S_S,
                dropout_p=dropout,
                scale=scaling,
                **gqa,
            )
        else:  # Gemma 2's capped scores, which SDPA does not do
            scale = query.shape[-1] ** -0.5 if scaling is None else scaling
            scores_U_H_S_S = query_U_H_S_D @ key_U_K_S_D.transpose(-1, -2) * scale
            scores_U_H_S_S = torch.tanh(scores_U_H_S_S / softcap) * softcap
            scores_U_H_S_S = scores_U_H_S_S.masked_fill(~allowed_U_1_S_S, float("-inf"))
            probs_U_H_S_S = torch.softmax(scores_U_H_S_S, dim=-1, dtype=torch.float32)
            probs_U_H_S_S = F.dropout(probs_U_H_S_S, dropout).to(value_U_K_S_D.dtype)
            out_U_H_S_D = probs_U_H_S_S @ value_U_K_S_D
    out_M_H_D = out_U_H_S_D.to(dtype).transpose(1, 2).flatten(0, 1)
    return out_M_H_D.index_select(0, packed.real_M)[None], None


def _padded(x_H_N_D: torch.Tensor, real_M: torch.Tensor, slots: int) -> torch.Tensor:
    """(H, M, D) with the N real tokens at `real_M` and zeros in the padding. index_copy, not
    a gather with repeated indices: its backward is a plain index_select, no accumulation."""
    heads, _, head_dim = x_H_N_D.shape
    return x_H_N_D.new_zeros((heads, slots, head_dim)).index_copy(1, real_M, x_H_N_D)


AttentionInterface.register(ATTENTION_NAME, packed_attention_forward)


@contextlib.contextmanager
def _packed_attention(causal_lm: PreTrainedModel) -> Iterator[None]:
    previous = causal_lm.config._attn_implementation
    causal_lm.set_attn_implementation(ATTENTION_NAME)
    try:
        if causal_lm.get_decoder().config._attn_implementation != ATTENTION_NAME:
            raise ModelError(
                f"{type(causal_lm).__name__} cannot switch its attention implementation "
                "(transformers' AttentionInterface), which packed training needs"
            )
        yield
    finally:
        causal_lm.set_attn_implementation(previous)


@contextlib.contextmanager
def _mixed_precision(causal_lm: PreTrainedModel) -> Iterator[None]:
    """bf16/fp16 autocast when a half-precision base carries float32 trainable weights (LoRA
    adapters): their matmuls then run in the base's precision instead of casting every
    activation to float32 and back. Gradients still land in the float32 weights."""
    base = causal_lm.get_input_embeddings().weight.dtype
    trainable = {p.dtype for p in causal_lm.parameters() if p.requires_grad}
    if base not in (torch.bfloat16, torch.float16) or torch.float32 not in trainable:
        yield
        return
    device = causal_lm.get_input_embeddings().weight.device.type
    with torch.autocast(device, dtype=base), peft.helpers.disable_input_dtype_casting(causal_lm):
        yield
