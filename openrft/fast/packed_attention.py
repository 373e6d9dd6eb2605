"""The trainer's forward pass over rows packed by prompt, without padding.

Rows that share a prompt (a GRPO group) share one computation of it: each distinct prompt
appears once. All tokens are concatenated into a single sequence of N tokens, so the
projections and MLPs (most of the compute) see no padding at all. Only attention needs the
pieces apart; the attention function registered here lays them out in one of two ways:
- **segments**: a group is one segment, its prompt then its completions, under a group mask
  (a completion token sees its prompt and its own earlier tokens), the segments of a
  micro-batch a padded (U, S) batch. The completions' scores against each other are computed
  and masked out, so its cost grows with (G x completion length)^2;
- **apart**: the prompts alone as segments, and the completions as a second padded batch,
  each attending to its prompt's keys and its own earlier tokens: the attention the mask
  allows and little more, but twice the calls, and many short query blocks.
For short completions the first is faster on the CPU (8 groups of 8 completions of 8 tokens
after 60-token prompts: 19 vs 24 ms a layer, forward and backward); for long ones the second
(8 completions of 256 tokens after a 150-token prompt: 387 vs 72 ms). pack_rows picks by the
attention scores each would compute (`APART_COST_RATIO`).

During this forward, plain LoRA adapters add their output with one addmm (installed through
peft's per-layer variant hook and taken out after: openrft.compat.peft). On the CPU, a bf16 base
model with float32 LoRA adapters runs the decoder under bf16 autocast (the adapters' matmuls
in bf16 like the base's, no float32 copies of the activations per layer), and attention
computes in float32, where PyTorch's CPU kernels are faster than in bf16.

A row's response may interleave sampled and environment tokens (a multi-turn episode): all of
them are context, only the sampled ones (`TrainRow.loss_mask`) are targets, and tokens after
the last sampled one are left out. The plain twin is openrft.train.forward's padded forward
through the model as transformers and peft run it; tests/fast/test_packed_attention.py checks
log-probs and gradients against it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from openrft.compat import peft as peft_internals
from openrft.compat import transformers as transformers_internals
from openrft.errors import ModelError
from openrft.types import TrainRow

ATTENTION_NAME = "openrft_packed"
LAYOUT_KWARG = "openrft_layout"  # the model forward passes extra keyword arguments on to attention
# Where attention computes in float32 for bf16/fp16 models: PyTorch's CPU attention backward
# in bf16 took 5x as long as in float32 (SmolLM2, 8 segments of ~150 tokens: 20 vs 3.7 ms).
FLOAT32_ATTENTION_DEVICES = {"cpu"}
# Where SDPA takes grouped key/value heads with a mask (enable_gqa; 14 vs 17 ms per layer on
# the CPU); elsewhere the heads are repeated, as transformers does for CUDA with a mask.
GROUPED_HEADS_DEVICES = {"cpu"}
# Completions go apart from their prompt's segment when that computes fewer than this share
# of the segments' attention scores, counting queries in blocks of QUERY_BLOCK (the CPU
# kernel's unit: a 4-token completion costs a block). Measured (9 query and 3 key heads of
# 64, float32 SDPA, forward and backward, 8 rows a prompt): a share of 0.65 took 0.91x the
# time, 0.85 1.06x, 1.34 1.27x; 0.42-0.48 took 0.62-0.79x, 0.18-0.30 0.19-0.51x.
APART_COST_RATIO = 0.6
QUERY_BLOCK = 32
PROMPT = -1  # the segment id of a prompt token; a completion token's is its row's index


def unsupported_reason(causal_lm: PreTrainedModel) -> str | None:
    """Why the packed forward cannot train `causal_lm` (None: it can, as far as can be told
    without running it; the training set-up then compares it with the plain forward on a
    probe, openrft.train.forward.choose_forward)."""
    for problem in (transformers_internals.PROBLEM, peft_internals.PROBLEM):
        if problem is not None:
            return problem
    if getattr(causal_lm.config, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    if not hasattr(causal_lm, "set_attn_implementation"):
        return f"{type(causal_lm).__name__} cannot switch its attention implementation"
    return None


@dataclass(frozen=True)
class PackedRows:
    """N real tokens and how attention lays them out: first the segments' tokens, a padded
    (U, S) batch, one segment per distinct prompt (the prompt, then its completions unless
    they go apart); then, when they go apart, the completions' tokens as a padded (R, C)
    batch, R = U x G (G slots per prompt for its rows), whose keys are their segment's S
    slots (the prompt) followed by their own C. Without it R x C is empty."""

    ids_1_N: torch.Tensor  # token ids, segments first
    positions_1_N: torch.Tensor  # position ids: a completion restarts where its prompt ends
    segment_slots_Ns: torch.Tensor  # flat (u * S + s) slot of each segment token (the first Ns)
    completion_slots_Nc: torch.Tensor  # flat (r * C + s) slot of each completion token (the rest)
    segment_allowed_U_S_S: torch.Tensor  # [u, query, key]: the attention each token may do
    completion_allowed_R_C_K: torch.Tensor  # [r, query, key], K = S + C: prompt, own past
    segment_positions_U_S: torch.Tensor  # position of each slot (0 in the padding)
    completion_positions_R_C: torch.Tensor
    predictor_N: torch.Tensor  # index (into N) of the state predicting each target, row by row

    def to(self, device: torch.device) -> PackedRows:
        return PackedRows(*(getattr(self, f.name).to(device) for f in fields(self)))


def pack_rows(rows: list[TrainRow]) -> PackedRows:
    """Lay out rows for one forward pass. Here a row's "completion" is its response: every
    token after the prompt, sampled or not.

    A completion token attends to its prompt and to the tokens of its own completion before
    it; a prompt token attends causally within the prompt. Positions restart at the prompt
    length for every completion, so each token sees exactly what it saw when it was sampled
    and its log-prob equals a plain forward of prompt + completion. Targets are the trained
    tokens (`loss_mask`), listed row by row: row b's completion token j is predicted by the
    state before it (the prompt's last token for j = 0). The tokens from a row's last trained
    one on predict nothing trained and are left out. No real token attends to padding, and a
    padding slot attends to itself, so no softmax row is empty.
    """
    members: dict[tuple[int, ...], list[int]] = {}  # prompt -> its rows, in order
    for b, row in enumerate(rows):
        members.setdefault(tuple(row.token_ids[: row.prompt_length]), []).append(b)
    # Each row's completion tokens that go into the sequence: those before its last trained
    # token (which itself predicts nothing trained).
    completions = [row.response[: max(row.trained_length - 1, 0)] for row in rows]
    apart = _completions_apart(members, completions)
    ids: list[int] = []
    positions: list[int] = []
    segments: list[list[int]] = []  # per segment, the segment id of each of its tokens
    predictor: dict[int, list[int]] = {}  # row -> indices into N

    def add_completion(b: int, prompt_length: int, prompt_end: int) -> None:
        every = [prompt_end - 1, *range(len(ids), len(ids) + len(completions[b]))]
        predictor[b] = [p for p, trained in zip(every, rows[b].loss_mask, strict=False) if trained]
        ids.extend(completions[b])
        positions.extend(range(prompt_length, prompt_length + len(completions[b])))

    prompt_ends = []
    for prompt, bs in members.items():
        ids.extend(prompt)
        positions.extend(range(len(prompt)))
        prompt_ends.append(len(ids))
        segments.append([PROMPT] * len(prompt))
        for b in [] if apart else bs:
            add_completion(b, len(prompt), prompt_ends[-1])
            segments[-1].extend([b] * len(completions[b]))
    # The completions' batch has a slot (u, g) for the g-th row of prompt u.
    group = max(len(bs) for bs in members.values()) if apart else 0
    lengths_R = torch.zeros(len(members) * group, dtype=torch.long)
    prompt_lengths_R = torch.zeros(len(members) * group, dtype=torch.long)
    for u, (prompt, bs) in enumerate(members.items() if apart else ()):
        for g, b in enumerate(bs):
            add_completion(b, len(prompt), prompt_ends[u])
            lengths_R[u * group + g] = len(completions[b])
        prompt_lengths_R[u * group : (u + 1) * group] = len(prompt)

    width_S = max(len(s) for s in segments)
    width_C = int(lengths_R.max()) if apart else 0
    segment_ids_U_S = torch.full((len(segments), width_S), PROMPT, dtype=torch.long)
    real_U_S = torch.zeros((len(segments), width_S), dtype=torch.bool)
    for u, segment in enumerate(segments):
        segment_ids_U_S[u, : len(segment)] = torch.tensor(segment)
        real_U_S[u, : len(segment)] = True
    segment_slots_Ns = real_U_S.flatten().nonzero().squeeze(1)
    positions_U_S = torch.zeros((len(segments), width_S), dtype=torch.long)
    positions_U_S.view(-1)[segment_slots_Ns] = torch.tensor(positions[: len(segment_slots_Ns)])
    # [batch, query, key]: a real query sees real keys at or before it of its prompt or its
    # own row; a padding slot only itself.
    same_row = segment_ids_U_S[:, None, :] == segment_ids_U_S[:, :, None]
    visible = (segment_ids_U_S[:, None, :] == PROMPT) | same_row
    segment_allowed = _causal(width_S) & visible & real_U_S[:, :, None] & real_U_S[:, None, :]
    segment_allowed |= torch.eye(width_S, dtype=torch.bool)
    slot_C = torch.arange(width_C)
    real_R_C = slot_C < lengths_R[:, None]
    own_allowed = _causal(width_C) & real_R_C[:, :, None] | torch.eye(width_C, dtype=torch.bool)
    prompt_seen = real_U_S.repeat_interleave(group, dim=0)[:, None, :] & real_R_C[:, :, None]
    return PackedRows(
        ids_1_N=torch.tensor([ids], dtype=torch.long),
        positions_1_N=torch.tensor([positions], dtype=torch.long),
        segment_slots_Ns=segment_slots_Ns,
        completion_slots_Nc=real_R_C.flatten().nonzero().squeeze(1),
        segment_allowed_U_S_S=segment_allowed,
        completion_allowed_R_C_K=torch.cat([prompt_seen, own_allowed], dim=2),
        segment_positions_U_S=positions_U_S,
        completion_positions_R_C=torch.where(real_R_C, prompt_lengths_R[:, None] + slot_C, 0),
        predictor_N=torch.tensor(
            [i for b in range(len(rows)) for i in predictor[b]], dtype=torch.long
        ),
    )


def _completions_apart(members: dict[tuple[int, ...], list[int]], completions: list) -> bool:
    """Whether the completions attend as a batch of their own: when that computes fewer than
    APART_COST_RATIO of the attention scores the one-segment-per-group layout would."""
    width_P = max(len(prompt) for prompt in members)
    width_C = max(len(c) for c in completions)
    width_S = max(len(p) + sum(len(completions[b]) for b in bs) for p, bs in members.items())
    group = max(len(bs) for bs in members.values())

    def blocks(queries: int) -> int:
        return -(-queries // QUERY_BLOCK) * QUERY_BLOCK

    together = blocks(width_S) * width_S
    apart = blocks(width_P) * width_P + group * blocks(width_C) * (width_P + width_C)
    return apart < APART_COST_RATIO * together


def _causal(width: int) -> torch.Tensor:
    """(width, width): key at or before query."""
    return torch.ones(width, width, dtype=torch.bool).tril()


def packed_hidden_states(causal_lm: PreTrainedModel, packed: PackedRows) -> torch.Tensor:
    """The decoder's last hidden state of each of the N packed tokens, as (N, H)."""
    device = next(causal_lm.parameters()).device
    packed = packed.to(device)
    transformers_internals.register_attention(ATTENTION_NAME, packed_attention_forward)
    with (
        transformers_internals.use_attention(causal_lm, ATTENTION_NAME),
        _mixed_precision(causal_lm),
        peft_internals.one_addmm_lora(causal_lm),
    ):
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
    """Attention over the packed sequence (1, heads, N, head_dim): the segments, then the
    completions that went apart, against their prompt's keys and their own.

    Follows transformers' attention-function contract: returns (1, N, heads, head_dim).
    """
    packed: PackedRows | None = kwargs.get(LAYOUT_KWARG)
    if packed is None or query.shape[0] != 1:
        raise ModelError(f"the {ATTENTION_NAME!r} attention runs only inside packed_hidden_states")
    if kwargs.get("s_aux") is not None:
        raise ModelError("packed training does not support attention sinks (s_aux)")
    dtype, device = query.dtype, query.device.type
    half = dtype in (torch.bfloat16, torch.float16)
    compute = torch.float32 if half and device in FLOAT32_ATTENTION_DEVICES else dtype
    segment_tokens = packed.segment_slots_Ns.shape[0]
    segments, width_S = packed.segment_positions_U_S.shape
    rows, width_C = packed.completion_positions_R_C.shape

    def batch(t_1_H_N_D: torch.Tensor, completions: bool) -> torch.Tensor:
        """The segments' (U, H, S, D) or the completions' (R, H, C, D) padded batch."""
        part = slice(segment_tokens, None) if completions else slice(0, segment_tokens)
        slots = packed.completion_slots_Nc if completions else packed.segment_slots_Ns
        count, width = (rows, width_C) if completions else (segments, width_S)
        padded = _padded(t_1_H_N_D[0, :, part].to(compute), slots, count * width)
        return padded.unflatten(1, (count, width)).transpose(0, 1)

    attend = _Attention(module, query, key, scaling, dropout, sliding_window, kwargs)
    with torch.autocast(query.device.type, enabled=False):
        segment_k, segment_v = batch(key, False), batch(value, False)
        positions_U_S = packed.segment_positions_U_S
        out_U_H_S_D = attend(
            batch(query, False),
            segment_k,
            segment_v,
            packed.segment_allowed_U_S_S,
            positions_U_S,
            positions_U_S,
        )
        outputs = [_real(out_U_H_S_D, packed.segment_slots_Ns)]
        if packed.completion_slots_Nc.numel():
            # Each completion's keys: its prompt's (its segment's) slots, then its own. The
            # prompt's are repeated for the G slots of its group (backward sums them).
            group = rows // segments
            keys, values = (
                torch.cat(
                    [
                        prompt[:, None].expand(-1, group, -1, -1, -1),
                        batch(own, True).unflatten(0, (segments, group)),
                    ],
                    dim=3,
                ).flatten(0, 1)
                for prompt, own in ((segment_k, key), (segment_v, value))
            )
            key_positions_R_K = None  # only a sliding window needs them
            if sliding_window is not None:
                prompt_positions_R_S = positions_U_S.repeat_interleave(group, dim=0)
                key_positions_R_K = torch.cat(
                    [prompt_positions_R_S, packed.completion_positions_R_C], dim=1
                )
            out_R_H_C_D = attend(
                batch(query, True),
                keys,
                values,
                packed.completion_allowed_R_C_K,
                packed.completion_positions_R_C,
                key_positions_R_K,
            )
            outputs.append(_real(out_R_H_C_D, packed.completion_slots_Nc))
    out_N_H_D = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return out_N_H_D.to(dtype)[None], None


class _Attention:
    """Masked attention of one padded batch with the model's settings: its scaling, dropout,
    sliding window, grouped key/value heads and Gemma 2's score soft cap (SDPA has none)."""

    def __init__(self, module, query, key, scaling, dropout, sliding_window, kwargs):
        self.scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
        self.dropout = dropout if module.training else 0.0
        self.sliding_window = sliding_window
        self.softcap = kwargs.get("softcap")
        self.groups = query.shape[1] // key.shape[1]
        self.grouped_sdpa = (
            self.groups > 1 and query.device.type in GROUPED_HEADS_DEVICES and self.softcap is None
        )

    def __call__(self, query_B_H_Q_D, key_B_K_S_D, value_B_K_S_D, allowed_B_Q_S, q_pos, k_pos):
        if self.sliding_window is not None:  # a key further back than the window is unseen
            distance_B_Q_S = q_pos[:, :, None] - k_pos[:, None, :]
            allowed_B_Q_S = allowed_B_Q_S & (distance_B_Q_S < self.sliding_window)
        allowed_B_1_Q_S = allowed_B_Q_S[:, None]
        if self.groups > 1 and not self.grouped_sdpa:
            key_B_K_S_D, value_B_K_S_D = (
                t.repeat_interleave(self.groups, dim=1) for t in (key_B_K_S_D, value_B_K_S_D)
            )
        if self.softcap is None:
            return F.scaled_dot_product_attention(
                query_B_H_Q_D,
                key_B_K_S_D,
                value_B_K_S_D,
                attn_mask=allowed_B_1_Q_S,
                dropout_p=self.dropout,
                scale=self.scaling,
                enable_gqa=self.grouped_sdpa,
            )
        scores_B_H_Q_S = query_B_H_Q_D @ key_B_K_S_D.transpose(-1, -2) * self.scaling
        scores_B_H_Q_S = torch.tanh(scores_B_H_Q_S / self.softcap) * self.softcap
        scores_B_H_Q_S = scores_B_H_Q_S.masked_fill(~allowed_B_1_Q_S, float("-inf"))
        probs_B_H_Q_S = torch.softmax(scores_B_H_Q_S, dim=-1, dtype=torch.float32)
        probs_B_H_Q_S = F.dropout(probs_B_H_Q_S, self.dropout).to(value_B_K_S_D.dtype)
        return probs_B_H_Q_S @ value_B_K_S_D


def _padded(x_H_N_D: torch.Tensor, slots: torch.Tensor, count: int) -> torch.Tensor:
    """(H, count, D) with the real tokens at `slots` and zeros in the padding. index_copy, not
    a gather with repeated indices: its backward is a plain index_select, no accumulation."""
    heads, _, head_dim = x_H_N_D.shape
    return x_H_N_D.new_zeros((heads, count, head_dim)).index_copy(1, slots, x_H_N_D)


def _real(out_B_H_Q_D: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The real tokens' outputs of a padded batch, as (tokens, H, D)."""
    return out_B_H_Q_D.transpose(1, 2).flatten(0, 1).index_select(0, slots)


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
    with torch.autocast(device, dtype=base), peft_internals.input_casting_off(causal_lm):
        yield
