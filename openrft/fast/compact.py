"""A lean decode path for Llama-family models (Llama, SmolLM, Qwen2): the rollout engine's
default where the architecture allows it.

At rollout batch sizes the transformers forward spends a third of each decoding step outside
its matrix multiplies (measured on SmolLM2-135M, fp32, batch 64: 171 ms a step of which 108
ms are matmuls): dozens of small ops per layer, separate q/k/v and gate/up projections, and a
flash-attention kernel that is slow for a single query. This module keeps its own copy of the
weights with q/k/v and gate/up fused into one matrix each and LoRA merged in; each prompt's
KV cache once, read once per step for all G of its samples (their queries are stacked into
one matmul); the generated tokens' cache allocated once per chunk at its final size; plain
matmul attention for the one query token a step has (float32 on the CPU); and, for bf16,
oneDNN-packed weights with the elementwise ops that follow a matmul fused into it
(openrft.fast.packed_weights). What each of these bought is in the comments where it is done;
a SmolLM2 bf16 step at batch 64 takes ~61 ms, ~31 ms of it matmuls whose weights arrive from
memory, not cache (docs/performance.md). Its plain twin is the transformers model's own
forward: it computes what that computes (tests/fast/test_compact.py checks logits and samples
against it) and is re-synced from the policy after each update.

    decoder = CompactDecoder(policy, torch.float32)   # once; its own fused weight copy
    logits_B_V = decoder.prefill(ids_P_L, attention_P_L, positions_P_L, repeats=G, room=64)
    logits_B_V = decoder.step(next_B, positions_B)     # one token per row
    decoder.keep(rows)                                 # drop finished rows
    decoder.sync(policy)                               # after each optimizer step
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from openrft.compat import peft as peft_internals
from openrft.compat import transformers as transformers_internals
from openrft.compat.peft import current_weights, plain_model
from openrft.errors import WeightSyncError
from openrft.fast.compact_episodes import EpisodeCache
from openrft.fast.packed_weights import Projection, can_pack, pack_weight, packed_matmul

SUPPORTED_TYPES = ("llama", "qwen2")  # config.model_type values this decoder implements


def unsupported_reason(model: nn.Module) -> str | None:
    """Why `model` (plain or peft-wrapped) cannot use the compact decoder, or None if it can.
    Its weight names are transformers' and its merge reads peft's LoRA layers: a version of
    either it was not written for turns it off."""
    for problem in (transformers_internals.PROBLEM, peft_internals.PROBLEM):
        if problem is not None:
            return problem
    config = plain_model(model).config
    if config.model_type not in SUPPORTED_TYPES:
        return f"model type {config.model_type!r} is not one of {', '.join(SUPPORTED_TYPES)}"
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return f"rope type {rope.get('rope_type')!r} (only the default rotary embedding is)"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} (only silu is)"
    if getattr(config, "mlp_bias", False) or getattr(config, "pretraining_tp", 1) != 1:
        return "MLP biases or tensor-parallel pretraining slices"
    if getattr(config, "use_sliding_window", False):
        return "sliding-window attention"
    return None


@dataclass
class _Layer:
    """One decoder layer's weights, each projection stored transposed, (in, out), because
    `x @ W_t` on a contiguous (in, out) matrix is 2-4x faster than `F.linear(x, W)` for the
    4-60 rows a shrinking decode batch has (MKL repacks a transposed operand on every call).
    Where oneDNN packs bf16 weights, a projection's packed form is its only copy (see
    CompactDecoder.packed_only)."""

    input_norm: torch.Tensor
    qkv: Projection  # (hidden, (q_heads + 2 * kv_heads) * head_dim): q, k, v fused
    qkv_bias: torch.Tensor | None
    out: Projection
    post_norm: torch.Tensor
    gate_up: Projection | None  # (hidden, 2 * intermediate): gate, then up; None if packed-only
    down: Projection
    # gate_up's two halves, packed on their own where oneDNN fuses silu into the gate's
    # matmul and the product with it into the up's (bfloat16), instead of gate_up.
    gate: Projection
    up: Projection

    def packing(self) -> list[tuple[Projection, tuple[str, ...]]]:
        """The projections packed from their buffers after a sync, each with the parameters
        (names within the layer) it is made of. Packed-only layers pack every other
        projection from its weight as it arrives."""
        qkv = tuple(
            f"self_attn.{name}_proj.{kind}" for name in "qkv" for kind in ("weight", "bias")
        )
        if self.gate_up is None:
            return [(self.qkv, qkv)]
        return [
            (self.qkv, qkv),
            (self.out, ("self_attn.o_proj.weight",)),
            (self.gate_up, ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
            (self.down, ("mlp.down_proj.weight",)),
        ]

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """silu(x @ gate) * (x @ up)."""
        if self.gate_up is None:
            return self.up.times(x, self.gate.silu(x))
        gate, up = self.gate_up(x).chunk(2, -1)
        return F.silu(gate) * up


class CompactDecoder(EpisodeCache):
    """Fused-weight decoding for one chunk of prompts at a time (prefill, step, keep)."""

    holds_copy = True  # its own fused copy of the weights, refreshed by sync()

    def __init__(self, policy: nn.Module, dtype: torch.dtype, packed_rows: int = 0):
        reason = unsupported_reason(policy)
        if reason is not None:
            raise ValueError(f"the compact decoder does not support this model: {reason}")
        config = plain_model(policy).config
        self.dtype = dtype
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta") or getattr(
            config, "rope_theta", 10_000.0
        )
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim
        self.inverse_frequency = 1.0 / (theta**exponents)
        self.num_layers = config.num_hidden_layers
        self.device = next(policy.parameters()).device
        # Decode steps with this many rows use MKL-packed weights (0 or no MKL: never).
        self.packed_rows = packed_rows if can_pack(dtype) and self.device.type == "cpu" else 0
        # oneDNN's packed bf16 weights serve any row count, so a projection needs no plain
        # copy beside its packed form: o, gate, up and down are packed straight from the
        # weights sync() brings (no transposed copy of 180 MB a sync for SmolLM2, and that
        # much less memory), and q, k, v from one (out, in) buffer they are gathered in.
        self.packed_only = bool(self.packed_rows) and dtype == torch.bfloat16
        self.head_packed: torch.Tensor | None = None
        # The KV cache and the decode step's attention run in float32 on the CPU whatever the
        # weights' dtype: the many small per-row matmuls of one-query attention are 3-6x
        # slower in bfloat16 there (SmolLM2 bf16, batch 64, one process alternating the two:
        # 90 -> 84 ms a step, median of 4), and the cache is a few MB a layer.
        self.attention_dtype = torch.float32 if self.device.type == "cpu" else dtype
        self._allocate(policy)
        self.sync(policy)

    # -- weights ---------------------------------------------------------------------------

    def _allocate(self, policy: nn.Module) -> None:
        """Fused buffers for the projections; the others are filled in by sync()."""
        shapes = {name: weight.shape for name, weight in current_weights(policy)}
        q_rows = self.heads * self.head_dim
        kv_rows = self.kv_heads * self.head_dim
        self._slots: dict[str, torch.Tensor] = {}  # plain parameter name -> where it goes
        self._packed_from: dict[str, Projection] = {}  # name -> projection packed from it
        self.layers = []
        for i in range(self.num_layers):
            prefix = f"model.layers.{i}."
            hidden = shapes[prefix + "self_attn.q_proj.weight"][1]
            intermediate = shapes[prefix + "mlp.gate_proj.weight"][0]
            bias = None
            if prefix + "self_attn.q_proj.bias" in shapes:
                bias = self._empty(q_rows + 2 * kv_rows)
                for name, part in zip("qkv", _split_rows(bias, q_rows, kv_rows), strict=True):
                    self._slots[f"{prefix}self_attn.{name}_proj.bias"] = part
            # A slot for a (out, in) weight: rows of an (out, in) buffer where the weights
            # are only packed, else a transposed view into its (in, out) buffer.
            qkv_t = (
                self._empty(q_rows + 2 * kv_rows, hidden).T
                if self.packed_only
                else self._empty(hidden, q_rows + 2 * kv_rows)
            )
            for name, part in zip("qkv", _split_rows(qkv_t.T, q_rows, kv_rows), strict=True):
                self._slots[f"{prefix}self_attn.{name}_proj.weight"] = part
            if self.packed_only:
                gate_up = None
                out, gate, up, down = (Projection(None) for _ in range(4))
                for name, projection in (
                    ("self_attn.o_proj", out),
                    ("mlp.gate_proj", gate),
                    ("mlp.up_proj", up),
                    ("mlp.down_proj", down),
                ):
                    self._packed_from[f"{prefix}{name}.weight"] = projection
            else:
                gate_up_t = self._empty(hidden, 2 * intermediate)
                gate_up = Projection(gate_up_t)
                out = Projection(self._empty(q_rows, hidden))
                down = Projection(self._empty(intermediate, hidden))
                gate = Projection(gate_up_t[:, :intermediate])
                up = Projection(gate_up_t[:, intermediate:])
                self._slots[prefix + "mlp.gate_proj.weight"] = gate_up_t.T[:intermediate]
                self._slots[prefix + "mlp.up_proj.weight"] = gate_up_t.T[intermediate:]
                self._slots[prefix + "self_attn.o_proj.weight"] = out.weight_t.T
                self._slots[prefix + "mlp.down_proj.weight"] = down.weight_t.T
            layer = _Layer(
                input_norm=self._empty(hidden),
                qkv=Projection(qkv_t),
                qkv_bias=bias,
                out=out,
                post_norm=self._empty(hidden),
                gate_up=gate_up,
                down=down,
                gate=gate,
                up=up,
            )
            self._slots[prefix + "input_layernorm.weight"] = layer.input_norm
            self._slots[prefix + "post_attention_layernorm.weight"] = layer.post_norm
            self.layers.append(layer)
        self.tied = "lm_head.weight" not in shapes  # tied weights are listed once
        self._synced_once = False

    def _empty(self, *shape: int, attention: bool = False) -> torch.Tensor:
        dtype = self.attention_dtype if attention else self.dtype
        return torch.empty(shape, dtype=dtype, device=self.device)

    @torch.no_grad()
    def sync(self, policy: nn.Module) -> None:
        """Take the policy's current weights (LoRA merged). Unfused weights already in this
        dtype are held by reference, so the optimizer's in-place updates reach them; packed
        forms are rebuilt for what changed. A weight with no place here, or (on the first
        sync) a place no weight filled, is a WeightSyncError: after a rename upstream the
        decoder would otherwise sample from stale weights."""
        changed: set[str] = set()
        # The (out, in) weights of a projection packed from its buffer, as they arrive: once
        # all of them have, it packs from them (MKL reorders a contiguous (out, in) weight
        # 3x faster than the transposed view its buffer is: SmolLM2 float32 sync 230 ->
        # 160 ms), a layer at a time, so at most a layer's weights are held.
        pending = self._packing_sources() if self.packed_rows else {}
        arrived: dict[Projection, dict[str, torch.Tensor]] = {}
        for name, weight in current_weights(policy, only_changing=self._synced_once):
            if name in self._slots:
                self._slots[name].copy_(weight)
                projection = pending.get(name)
                if projection is not None:
                    parts = arrived.setdefault(projection, {})
                    parts[name] = weight
                    if len(parts) == len(self._weight_sources[projection]):
                        sources = self._weight_sources[projection]
                        joined = torch.cat([parts[s].to(self.dtype) for s in sources])
                        projection.pack(self.packed_rows, joined)
                        arrived[projection] = {}  # packed: nothing left to hold
            elif name in self._packed_from:
                self._packed_from[name].pack(self.packed_rows, weight.to(self.dtype))
            elif name in _UNFUSED:
                setattr(self, _UNFUSED[name], weight.to(self.dtype))
            else:
                raise WeightSyncError(
                    f"the compact decoder has no place for the policy's weight {name!r}: "
                    "its names no longer match the decoder's (a library upgrade?)"
                )
            changed.add(name)
        if not self._synced_once:
            self._check_every_weight_arrived(changed)
        if self.tied:
            self.lm_head = self.embed
        if self.packed_rows:
            packed_now = {p for p, parts in arrived.items() if not parts}
            for index, layer in enumerate(self.layers):
                for projection, sources in layer.packing():
                    if projection in packed_now:
                        continue
                    if changed.intersection(f"model.layers.{index}.{s}" for s in sources):
                        projection.pack(self.packed_rows)  # some of it unchanged: the buffer
            if changed & {"lm_head.weight", "model.embed_tokens.weight"}:
                self.head_packed = pack_weight(self.lm_head, self.packed_rows)
        self._synced_once = True

    def _packing_sources(self) -> dict[str, Projection]:
        """Weight name -> the projection packed from its buffer that it is part of (and, in
        `_weight_sources`, each such projection's weight names in buffer order)."""
        if not hasattr(self, "_weight_sources"):
            self._weight_sources: dict[Projection, tuple[str, ...]] = {}
            for index, layer in enumerate(self.layers):
                for projection, sources in layer.packing():
                    if projection.weight_t.T.is_contiguous():
                        continue  # its buffer is (out, in) already: packed from it as fast
                    names = tuple(
                        f"model.layers.{index}.{s}" for s in sources if s.endswith(".weight")
                    )
                    self._weight_sources[projection] = names
        return {name: p for p, names in self._weight_sources.items() for name in names}

    def _check_every_weight_arrived(self, arrived: set[str]) -> None:
        expected = set(self._slots) | set(self._packed_from)
        expected |= {name for name in _UNFUSED if name != "lm_head.weight" or not self.tied}
        missing = sorted(expected - arrived)
        if missing:
            raise WeightSyncError(
                f"the policy did not provide {len(missing)} weight(s) the compact decoder "
                f"needs, e.g. {missing[:3]}: it would sample from uninitialised weights"
            )

    def inference(self) -> AbstractContextManager[None]:
        return nullcontext()  # no modules of its own to switch to eval mode

    def drop_finished(self, batch: int, live: int) -> bool:
        """Whether to shrink the batch to its live rows now. Finished rows stay (their tokens
        computed and discarded) until a quarter of the batch has finished: dropping rows
        copies every layer's generated-token cache, and the matmuls, bound by reading the
        weights, cost little more at 64 rows than at 48 (an MKL-packed float32 matmul at 64
        costs what a plain one costs at 48). SmolLM2 bf16, 64 samples of up to 256 tokens:
        dropping at once made 18-21 copies, 1.5-1.9 s of a 27.3-28.5 s chunk; this rule, one
        copy and 26.0-26.5 s."""
        return live < batch and 4 * live <= 3 * batch

    # -- decoding --------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(
        self,
        input_ids_P_L: torch.Tensor,
        attention_P_L: torch.Tensor,
        positions_P_L: torch.Tensor,
        repeats: int,
        room: int,
    ) -> torch.Tensor:
        """Run left-padded prompts and keep their KV cache once per prompt; the `repeats`
        samples of each prompt (rows p * repeats ...) share it and get `room` columns of
        their own for the tokens they generate. Returns every row's next-token logits,
        (P * repeats, V)."""
        prompts, length = input_ids_P_L.shape
        real_P_L = attention_P_L.bool()
        causal_L_L = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
        diagonal_L_L = torch.eye(length, dtype=torch.bool, device=self.device)
        # A padding query sees only itself, so no softmax row is empty; real ones skip padding.
        allowed_P_1_L_L = (causal_L_L & (real_P_L[:, None, :] | diagonal_L_L))[:, None]
        cos_P_1_L_D, sin_P_1_L_D = self._rotary(positions_P_L)
        x_P_L_H = self.embed[input_ids_P_L]
        self.prompt_keys, self.prompt_values = [], []
        for layer in self.layers:
            q, k, v = self._project(layer, x_P_L_H, cos_P_1_L_D, sin_P_1_L_D)  # (P, heads, L, D)
            attended = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed_P_1_L_L, enable_gqa=True
            )
            x_P_L_H = self._finish_layer(layer, x_P_L_H, attended.transpose(1, 2).flatten(2))
            keys_P_K_D_L = k.transpose(-1, -2).to(self.attention_dtype).contiguous()
            self.prompt_keys.append(keys_P_K_D_L)
            self.prompt_values.append(v.to(self.attention_dtype).contiguous())
        rows = prompts * repeats
        # Column-major, (columns, rows, kv, D): a step writes one contiguous block per layer
        # instead of a strided one per row and head (the caches are out of the CPU's caches
        # by then), and the batched matmuls read a column's rows with a stride, at no extra
        # cost. Write plus attention: 480 -> 360 us a layer at batch 64 (SmolLM2, fp32 cache).
        shape = (room, rows, self.kv_heads, self.head_dim)
        self.generated_keys = [self._empty(*shape, attention=True) for _ in self.layers]
        self.generated_values = [self._empty(*shape, attention=True) for _ in self.layers]
        self.generated = 0  # columns of the generated-token cache in use
        # -inf-like scores for generated-cache columns a row must not see (an episode's
        # filler while it waited for its environment, chunk padding); None until one exists.
        self.own_blocked_B_T: torch.Tensor | None = None
        self.prompts, self.repeats = prompts, repeats
        self.sequence_B = torch.arange(rows, device=self.device)  # the sample of each row
        # -inf-like scores for left padding, added to the prompt part; None without padding.
        self.prompt_blocked_B_1_1_L: torch.Tensor | None = None
        if not real_P_L.all():
            blocked_P_L = self._empty(prompts, length, attention=True).zero_()
            blocked_P_L.masked_fill_(~real_P_L, torch.finfo(self.attention_dtype).min)
            blocked_B_L = blocked_P_L.repeat_interleave(repeats, dim=0)
            self.prompt_blocked_B_1_1_L = blocked_B_L[:, None, None]
        logits_P_V = self._logits(x_P_L_H[:, -1])
        return logits_P_V.repeat_interleave(repeats, dim=0)

    @torch.no_grad()
    def step(
        self, tokens_B: torch.Tensor, positions_B: torch.Tensor, idle_B: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Feed one token per row (cached in the row's next free column); next-token logits.
        The column of a row in `idle_B` is masked for that row from now on."""
        column = self.generated
        self._ensure_room(column + 1)
        if idle_B is not None and bool(idle_B.any()):
            self._block(column, idle_B[:, None])
        cos_B_1_1_D, sin_B_1_1_D = self._rotary(positions_B[:, None], self.attention_dtype)
        x_B_1_H = self.embed[tokens_B][:, None]
        batch = tokens_B.shape[0]
        for index, layer in enumerate(self.layers):
            q, k, v = self._project(layer, x_B_1_H, cos_B_1_1_D, sin_B_1_1_D)  # (B, heads, 1, D)
            keys, values = self.generated_keys[index], self.generated_values[index]
            keys[column] = k[:, :, 0]
            values[column] = v[:, :, 0]
            attended = self._attend(
                q.view(batch, self.kv_heads, -1, self.head_dim),
                index,
                keys[: column + 1].permute(1, 2, 0, 3),
                values[: column + 1].permute(1, 2, 0, 3),
            )
            attended_B_1_A = attended.reshape(batch, 1, -1).to(self.dtype)
            x_B_1_H = self._finish_layer(layer, x_B_1_H, attended_B_1_A)
        self.generated = column + 1
        return self._logits(x_B_1_H[:, 0])

    def _attend(
        self,
        q_B_K_G_D: torch.Tensor,
        layer: int,
        keys_B_K_T_D: torch.Tensor,
        values_B_K_T_D: torch.Tensor,
        own_mask_G_T: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention of each row's queries (one token's heads of a group, or a chunk's) over
        its prompt's cache (read once for all the samples of a prompt: their queries are
        stacked into one matmul) and its own generated tokens, under one softmax.
        (B, kv_heads, G, D) in and out; `own_mask_G_T` is added to the generated part's
        scores (a chunk's causal mask)."""
        q_B_K_G_D = q_B_K_G_D * self.head_dim**-0.5  # scaled once, not both score parts
        prompt_keys_P_K_D_L = self.prompt_keys[layer]
        length = prompt_keys_P_K_D_L.shape[3]
        prompt_scores = self._by_row(self._by_prompt(q_B_K_G_D) @ prompt_keys_P_K_D_L)
        if self.prompt_blocked_B_1_1_L is not None:
            prompt_scores = prompt_scores + self.prompt_blocked_B_1_1_L
        own_scores = q_B_K_G_D @ keys_B_K_T_D.transpose(-1, -2)
        if own_mask_G_T is not None:
            own_scores = own_scores + own_mask_G_T
        if self.own_blocked_B_T is not None:
            columns = own_scores.shape[-1]
            own_scores = own_scores + self.own_blocked_B_T[:, None, None, :columns]
        weights = torch.cat([prompt_scores, own_scores], dim=-1).softmax(dim=-1)
        prompt_weights_P_K_Q_L = self._by_prompt(weights[..., :length])
        from_prompt = self._by_row(prompt_weights_P_K_Q_L @ self.prompt_values[layer])
        return from_prompt + weights[..., length:] @ values_B_K_T_D

    def _by_prompt(self, rows_B_K_G_X: torch.Tensor) -> torch.Tensor:
        """(B, kv, group, X) per live row -> (P, kv, repeats * group, X) per prompt; the rows
        of finished samples are zeros."""
        samples = self.prompts * self.repeats
        if rows_B_K_G_X.shape[0] < samples:
            full = rows_B_K_G_X.new_zeros((samples, *rows_B_K_G_X.shape[1:]))
            full[self.sequence_B] = rows_B_K_G_X
            rows_B_K_G_X = full
        _, heads, group, width = rows_B_K_G_X.shape
        stacked = rows_B_K_G_X.view(self.prompts, self.repeats, heads, group, width)
        return stacked.transpose(1, 2).reshape(self.prompts, heads, self.repeats * group, width)

    def _by_row(self, prompts_P_K_Q_X: torch.Tensor) -> torch.Tensor:
        """The inverse of _by_prompt, keeping only the live rows."""
        _, heads, stacked, width = prompts_P_K_Q_X.shape
        group = stacked // self.repeats
        rows = prompts_P_K_Q_X.view(self.prompts, heads, self.repeats, group, width)
        rows = rows.transpose(1, 2).reshape(self.prompts * self.repeats, heads, group, width)
        if self.sequence_B.shape[0] < rows.shape[0]:
            rows = rows[self.sequence_B]
        return rows

    def keep(self, rows_B: torch.Tensor) -> None:
        """Keep only these batch rows (finished sequences leave the batch; the prompt caches
        they shared stay until the chunk ends)."""
        self.generated_keys = [self._kept(cache, rows_B) for cache in self.generated_keys]
        self.generated_values = [self._kept(cache, rows_B) for cache in self.generated_values]
        self.sequence_B = self.sequence_B[rows_B]
        if self.own_blocked_B_T is not None:
            self.own_blocked_B_T = self.own_blocked_B_T[rows_B]
        if self.prompt_blocked_B_1_1_L is not None:
            self.prompt_blocked_B_1_1_L = self.prompt_blocked_B_1_1_L[rows_B]

    def _kept(self, cache_T_B_K_D: torch.Tensor, rows_B: torch.Tensor) -> torch.Tensor:
        """A generated-token cache with only these rows, at full room; only the columns in
        use are copied (a long generation drops rows often, with most of its room unused)."""
        room, _, heads, width = cache_T_B_K_D.shape
        kept = cache_T_B_K_D.new_empty((room, rows_B.shape[0], heads, width))
        torch.index_select(cache_T_B_K_D[: self.generated], 1, rows_B, out=kept[: self.generated])
        return kept

    # -- pieces ----------------------------------------------------------------------------

    def _project(
        self, layer: _Layer, x_B_L_H: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q and k (rotary embedding applied) and v as (B, heads, L, head_dim) from one fused
        matmul, in the dtype of `cos`."""
        qkv = layer.qkv(_rms_norm(x_B_L_H, layer.input_norm, self.eps))
        if layer.qkv_bias is not None:
            qkv = qkv + layer.qkv_bias
        qkv = qkv.to(cos.dtype)
        batch, length = x_B_L_H.shape[:2]
        qk_heads = self.heads + self.kv_heads
        qk, v = qkv.split((qk_heads * self.head_dim, self.kv_heads * self.head_dim), dim=-1)
        # q and k rotated together: one set of elementwise ops instead of two.
        qk = _rotate(qk.view(batch, length, qk_heads, self.head_dim).transpose(1, 2), cos, sin)
        q, k = qk.split((self.heads, self.kv_heads), dim=1)
        return q, k, v.view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)

    def _finish_layer(
        self, layer: _Layer, x_B_L_H: torch.Tensor, attended_B_L_A: torch.Tensor
    ) -> torch.Tensor:
        """Output projection and residual, then the gated MLP and its residual."""
        x_B_L_H = layer.out.plus(attended_B_L_A, x_B_L_H)
        hidden_B_L_I = layer.feed_forward(_rms_norm(x_B_L_H, layer.post_norm, self.eps))
        return layer.down.plus(hidden_B_L_I, x_B_L_H)

    def _logits(self, x_B_H: torch.Tensor) -> torch.Tensor:
        normed_B_H = _rms_norm(x_B_H, self.norm, self.eps)
        logits = packed_matmul(normed_B_H, self.head_packed, self.lm_head, self.packed_rows)
        return F.linear(normed_B_H, self.lm_head) if logits is None else logits

    def _rotary(
        self, positions: torch.Tensor, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for these positions, shaped to broadcast over the head dimension."""
        angles = positions.float()[..., None] * self.inverse_frequency.to(positions.device)
        angles = torch.cat([angles, angles], dim=-1)[..., None, :, :]  # (..., 1, L, D)
        dtype = dtype or self.dtype
        return angles.cos().to(dtype), angles.sin().to(dtype)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm: normalise in float32, cast back, then scale."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps=eps)  # the same, in one kernel
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding in its rotate-half form (the layout Llama checkpoints use)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


# Parameters used as they are, by the attribute that holds them.
_UNFUSED = {
    "model.embed_tokens.weight": "embed",
    "model.norm.weight": "norm",
    "lm_head.weight": "lm_head",
}


def _split_rows(tensor: torch.Tensor, q_rows: int, kv_rows: int) -> tuple[torch.Tensor, ...]:
    return tensor[:q_rows], tensor[q_rows : q_rows + kv_rows], tensor[q_rows + kv_rows :]
