"""Rollouts with a transformers model in this process (the CPU default engine).

A hand-written decode loop rather than `model.generate`, for three reasons: each prompt is
prefilled once and its KV cache shared by its G samples; finished sequences leave the batch
(their cache rows are dropped); and finish reasons, stop strings and the sampling RNG are ours.

Tokens come from a decoder: the compact decoder (openrft.fast.compact: its own fused copy of
the weights) where the model allows and fast paths are on, else the model's own forward
(`TransformersDecoder`: on the policy itself, the plain path, or on a merged low-precision
copy). A decoder that holds a copy is checked after every sync with the weight-sync probe.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from openrft.errors import WeightSyncError
from openrft.fast import compact, kv_cache, shadow
from openrft.fast.compact import CompactDecoder
from openrft.fast.shadow import ShadowModel
from openrft.rollout.engine import Decoder, OnGroup, completion_from_tokens
from openrft.rollout.episodes import Respond
from openrft.rollout.hf_episodes import decode_episodes
from openrft.rollout.probe import TrainerLogprobs, WeightSyncProbe
from openrft.rollout.sampling import sample_next_tokens
from openrft.types import Completion, FinishReason, SamplingParams

DecoderChoice = Literal["auto", "compact", "transformers"]
PROBE_TOKENS = 8  # tokens of the weight-sync probe (the start of the first training prompt)
PROBE_ROWS = 4  # prefixes of the probe scored together in one prefill
# The largest mean |log-prob| gap between a sampling copy and the trainer on the probe, by the
# copy's dtype, when rollout.probe_tolerance is 0. A float32 copy of SmolLM2 differs by ~1e-5;
# a bf16 one by 0.03-0.11 over a LoRA run at lr 2e-4 (its merged weights are rounded to bf16,
# the trainer's base + adapter are not). A copy of another model is off by nats.
PROBE_TOLERANCE = {torch.float32: 0.01, torch.float64: 0.01}
HALF_PROBE_TOLERANCE = 0.3


class HFEngine:
    """Samples from a live transformers model, re-synced by `sync_weights` after each update.

    `decoder` picks how tokens are computed: "compact" (openrft.fast.compact: fused weights
    with LoRA merged, in `sample_dtype` or the model's dtype; Llama and Qwen2 models),
    "transformers" (the model's own forward: the trainer's model itself, or with `sample_dtype`
    a merged copy in that dtype, openrft.fast.shadow), or "auto": compact where supported.
    `fast_paths=False` uses the plain path only: the model's own forward on the policy itself,
    with transformers' own KV cache. With `probe_ids`, a decoder holding a copy is probed
    after every sync against `trainer_logprobs` (the trainer's own scoring), and an "auto"
    compact decoder that fails its first probe is replaced by the transformers decoder.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 64,
        sample_dtype: torch.dtype | None = None,
        decoder: DecoderChoice = "auto",
        fast_paths: bool = True,
        probe_ids: Sequence[int] = (),
        trainer_logprobs: TrainerLogprobs | None = None,
        probe_tolerance: float = 0.0,
    ):
        self.tokenizer = tokenizer
        self.batch_size = batch_size  # sequences decoded together
        self.end_token_ids = end_of_turn_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.policy_version = 0
        self.probe_ids = list(probe_ids)[:PROBE_TOKENS] if trainer_logprobs else []
        self.trainer_logprobs = trainer_logprobs
        self.probe_tolerance = probe_tolerance
        self.decoder, self.description = self._choose_decoder(
            model, sample_dtype, decoder, fast_paths
        )
        self.probe: WeightSyncProbe | None = None
        if len(self.probe_ids) >= 2 and self.decoder.holds_copy:
            try:
                self._check_probe(model, version=0)
            except WeightSyncError as error:
                if decoder != "auto" or not isinstance(self.decoder, CompactDecoder):
                    raise
                self.decoder = self._transformers_decoder(model, sample_dtype, fast_paths)
                self.description = f"transformers decoder (the compact decoder failed: {error})"
                self.probe = None
                if self.decoder.holds_copy:
                    self._check_probe(model, version=0)

    def _choose_decoder(
        self,
        model: nn.Module,
        sample_dtype: torch.dtype | None,
        choice: DecoderChoice,
        fast_paths: bool,
    ) -> tuple[Decoder, str]:
        if not fast_paths:
            if choice == "compact":
                raise ValueError("rollout.decoder = 'compact' is a fast path: fast paths are off")
            note = " (rollout.dtype needs a merged copy, a fast path)" if sample_dtype else ""
            return self._transformers_decoder(model, None, False), f"plain decoder{note}"
        reason = compact.unsupported_reason(model) if choice != "transformers" else None
        if choice == "compact" and reason is not None:
            raise ValueError(f"rollout.decoder = 'compact': {reason}")
        if choice != "transformers" and reason is None:
            dtype = sample_dtype or next(model.parameters()).dtype
            decoder = CompactDecoder(model, dtype, packed_rows=self.batch_size)
            name = str(dtype).removeprefix("torch.")
            packed = ", packed weights" if decoder.packed_rows else ""
            return decoder, f"compact decoder ({name}{packed})"
        transformers_decoder = self._transformers_decoder(model, sample_dtype, True)
        why = f" (compact decoder: {reason})" if reason else ""
        return transformers_decoder, transformers_decoder.describe() + why

    @staticmethod
    def _transformers_decoder(
        model: nn.Module, sample_dtype: torch.dtype | None, fast_paths: bool
    ) -> TransformersDecoder:
        in_place = fast_paths and kv_cache.unsupported_reason() is None
        copy_dtype = sample_dtype if fast_paths and shadow.unsupported_reason() is None else None
        return TransformersDecoder(model, copy_dtype, in_place_cache=in_place)

    def sync_weights(self, policy: nn.Module, version: int) -> dict[str, float]:
        self.decoder.sync(policy)
        self.policy_version = version
        if self.probe is None:
            return {}
        return self._check_probe(policy, version)

    def _check_probe(self, policy: nn.Module, version: int) -> dict[str, float]:
        if self.probe is None:
            compact_copy = isinstance(self.decoder, CompactDecoder)
            sampler = "the compact decoder" if compact_copy else "the merged sampling copy"
            dtype = self.decoder.dtype
            tolerance = self.probe_tolerance or PROBE_TOLERANCE.get(dtype, HALF_PROBE_TOLERANCE)
            self.probe = WeightSyncProbe(sampler, tolerance, 0.0, "rollout.probe_tolerance")
        assert self.trainer_logprobs is not None  # a probe exists only with it
        scored = self.trainer_logprobs(policy, self.probe_ids)
        # scored[i] is token i + 1 given the ones before it.
        trainer = scored[[end - 1 for end in self.probe_positions(len(self.probe_ids))]]
        return self.probe.check(trainer, self.sampler_logprobs(self.probe_ids), version)

    @torch.no_grad()
    def sampler_logprobs(self, token_ids: Sequence[int]) -> torch.Tensor:
        """The decoder's log-probs of the probe's last PROBE_ROWS tokens: that many prefixes
        of the probe (ending one token apart) prefilled as one left-padded batch, each
        predicting the token after it. Float64 on the CPU, ordered as `probe_positions` says.
        One prefill reads every weight once: the decode step's attention is the tests'
        business (tests/fast/test_compact.py), the weights are the probe's."""
        ends = self.probe_positions(len(token_ids))  # prefix lengths
        device = self.decoder.device
        ids_R_L, attention_R_L = left_pad([token_ids[:end] for end in ends], self.pad_id, device)
        positions_R_L = (attention_R_L.cumsum(-1) - 1).clamp(min=0)
        next_R = torch.tensor([token_ids[end] for end in ends], device=device)
        with self.decoder.inference():
            logits_R_V = self.decoder.prefill(ids_R_L, attention_R_L, positions_R_L, 1, room=1)
        return logits_R_V.double().log_softmax(-1).gather(-1, next_R[:, None])[:, 0].cpu()

    @staticmethod
    def probe_positions(length: int) -> list[int]:
        """The prefix lengths the probe's log-probs are taken at: token `end` given the
        `end` tokens before it, for the last PROBE_ROWS tokens of a probe of `length`."""
        return list(range(max(length - PROBE_ROWS, 1), length))

    def close(self) -> None:
        """Nothing to release: the engine lives in this process."""

    def generate_episodes(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, respond: Respond
    ) -> None:
        """Multi-turn episodes, each continued from its own KV cache (openrft.rollout.
        hf_episodes); `respond` answers each finished turn (openrft.rollout.episodes)."""
        decode_episodes(self, prompts, params, respond)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        on_group: OnGroup | None = None,
    ) -> list[list[Completion]]:
        generator = torch.Generator(device=self.decoder.device).manual_seed(params.seed)
        prompts_per_chunk = max(1, self.batch_size // params.n)
        results: list[list[Completion]] = []
        with self.decoder.inference():
            for start in range(0, len(prompts), prompts_per_chunk):
                chunk = prompts[start : start + prompts_per_chunk]
                emit = None if on_group is None else partial(_shifted, on_group, start)
                results.extend(self._generate_chunk(chunk, params, generator, emit))
        return results

    def _generate_chunk(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        generator: torch.Generator,
        on_group: OnGroup | None = None,
    ) -> list[list[Completion]]:
        device = self.decoder.device
        logits_B_V, next_position_B = self.prefill_samples(prompts, params)

        total = len(prompts) * params.n
        tokens: list[list[int]] = [[] for _ in range(total)]
        logprobs: list[list[float]] | None = [[] for _ in range(total)] if params.logprobs else None
        finished: list[FinishReason | None] = [None] * total
        active = list(range(total))  # sequence index of each batch row
        unfinished = [params.n] * len(prompts)  # samples of each prompt still decoding
        groups: list[list[Completion] | None] = [None] * len(prompts)

        def complete(prompt: int) -> None:
            """Prompt `prompt`'s group is done: decode it, and hand it on at once."""
            rows = range(prompt * params.n, (prompt + 1) * params.n)
            groups[prompt] = [
                completion_from_tokens(
                    self.tokenizer,
                    tokens[i],
                    finished[i] or "length",
                    params.stop,
                    None if logprobs is None else logprobs[i],
                )
                for i in rows
            ]
            if on_group is not None:
                on_group(prompt, groups[prompt])

        workspace = torch.empty(logits_B_V.numel(), dtype=torch.float32, device=device)
        for _ in range(params.max_new_tokens):
            next_B = sample_next_tokens(
                logits_B_V, params.temperature, params.top_p, params.top_k, generator, workspace
            )
            chosen = _chosen_logprobs(logits_B_V, next_B) if logprobs is not None else None
            keep_rows = []
            for row, (seq, token) in enumerate(zip(active, next_B.tolist(), strict=True)):
                if finished[seq] is not None:  # finished earlier, still in the batch: ignored
                    continue
                tokens[seq].append(token)
                if logprobs is not None and chosen is not None:
                    logprobs[seq].append(chosen[row])
                if token in self.end_token_ids or self._hit_stop_string(tokens[seq], params):
                    finished[seq] = "stop"
                    unfinished[seq // params.n] -= 1
                    if on_group is not None and unfinished[seq // params.n] == 0:
                        complete(seq // params.n)
                else:
                    keep_rows.append(row)
            if not keep_rows or len(tokens[active[keep_rows[0]]]) >= params.max_new_tokens:
                break
            if self.decoder.drop_finished(len(active), len(keep_rows)):
                index = torch.tensor(keep_rows, device=device)
                self.decoder.keep(index)
                next_position_B, next_B = next_position_B[index], next_B[index]
                active = [active[row] for row in keep_rows]
            logits_B_V = self.decoder.step(next_B, next_position_B)
            next_position_B = next_position_B + 1

        for prompt, group in enumerate(groups):
            if group is None:  # cut by max_new_tokens (or every sample stopped, no on_group)
                complete(prompt)
        return [group for group in groups if group is not None]

    def prefill_samples(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill left-padded prompts once each, their cache shared by `params.n` samples
        (rows p * n ...): every row's next-token logits (B, V) and next position (B,)."""
        input_ids_P_L, attention_P_L = left_pad(prompts, self.pad_id, self.decoder.device)
        positions_P_L = (attention_P_L.cumsum(-1) - 1).clamp(min=0)
        logits_B_V = self.decoder.prefill(
            input_ids_P_L, attention_P_L, positions_P_L, params.n, room=params.max_new_tokens
        )
        return logits_B_V, positions_P_L[:, -1].repeat_interleave(params.n, dim=0) + 1

    def _hit_stop_string(self, token_ids: list[int], params: SamplingParams) -> bool:
        if not params.stop:
            return False
        # Every token decodes to at least one character, so this window holds any stop string.
        window = max(len(stop) for stop in params.stop) + 8
        tail = self.tokenizer.decode(token_ids[-window:], skip_special_tokens=True)
        return any(stop in tail for stop in params.stop)


def _shifted(on_group: OnGroup, offset: int, index: int, group: list[Completion]) -> None:
    on_group(offset + index, group)


def _chosen_logprobs(logits_B_V: torch.Tensor, next_B: torch.Tensor) -> list[float]:
    """Each row's log-prob of the token it drew, under the raw model (temperature 1): what a
    token-level client (verifiers' training client) is sent and the trainer corrects for."""
    chosen_B = logits_B_V.gather(-1, next_B[:, None])[:, 0].float()
    return (chosen_B - logits_B_V.float().logsumexp(-1)).tolist()


class TransformersDecoder:
    """Decoding through a transformers model's own forward pass: any architecture (the
    Decoder protocol of openrft.rollout.engine). It samples from the trainer's model itself
    (weights shared: the plain path) or, with `sample_dtype`, from a merged copy in that dtype
    (openrft.fast.shadow) that sync() refreshes. `in_place_cache` writes each token into
    spare room of the KV cache (openrft.fast.kv_cache) instead of transformers' concatenating
    DynamicCache."""

    def __init__(
        self,
        model: nn.Module,
        sample_dtype: torch.dtype | None = None,
        in_place_cache: bool = True,
    ):
        self.shadow = None
        self.in_place_cache = in_place_cache
        lora = hasattr(model, "peft_config")  # a merged copy also drops the LoRA side branches
        if sample_dtype is not None and (lora or sample_dtype != next(model.parameters()).dtype):
            self.shadow = ShadowModel(model, sample_dtype)
        self.model = self.shadow.model if self.shadow is not None else model

    @property
    def holds_copy(self) -> bool:
        return self.shadow is not None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def describe(self) -> str:
        copy = (
            f", merged {str(self.shadow.dtype).removeprefix('torch.')} copy" if self.shadow else ""
        )
        cache = ", in-place KV cache" if self.in_place_cache else ""
        return f"transformers decoder{copy}{cache}"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def sync(self, policy: nn.Module) -> None:
        if self.shadow is not None:
            self.shadow.sync(policy)  # copy the updated weights into the sampling copy
        else:
            self.model = policy  # same weights: nothing to copy

    @contextmanager
    def inference(self) -> Iterator[None]:
        """Eval mode while sampling (no dropout), the model's own mode restored after."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    def prefill(
        self,
        input_ids_P_L: torch.Tensor,
        attention_P_L: torch.Tensor,
        positions_P_L: torch.Tensor,
        repeats: int,
        room: int,
    ) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids_P_L,
            attention_mask=attention_P_L,
            position_ids=positions_P_L,
            past_key_values=kv_cache.decoding_cache(self.in_place_cache),
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = out.past_key_values
        self.cache.batch_repeat_interleave(repeats)
        self.attention_B_L = attention_P_L.repeat_interleave(repeats, dim=0)
        return out.logits[:, -1, :].repeat_interleave(repeats, dim=0)

    def step(
        self, tokens_B: torch.Tensor, positions_B: torch.Tensor, idle_B: torch.Tensor | None = None
    ) -> torch.Tensor:
        column_B_1 = self.attention_B_L.new_ones(len(tokens_B), 1)
        if idle_B is not None:
            column_B_1 = (~idle_B).long()[:, None]
        self.attention_B_L = torch.cat([self.attention_B_L, column_B_1], dim=1)
        out = self.model(
            input_ids=tokens_B[:, None],
            attention_mask=self.attention_B_L,
            position_ids=positions_B[:, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        return out.logits[:, -1, :]

    def extend(
        self, tokens_B_K: torch.Tensor, real_B_K: torch.Tensor, positions_B_K: torch.Tensor
    ) -> torch.Tensor:
        self.attention_B_L = torch.cat([self.attention_B_L, real_B_K.long()], dim=1)
        out = self.model(
            input_ids=tokens_B_K,
            attention_mask=self.attention_B_L,
            position_ids=positions_B_K,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :]

    def drop_finished(self, batch: int, live: int) -> bool:
        return live < batch  # always: a smaller batch is cheaper through this forward

    def keep(self, rows_B: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows_B)
        self.attention_B_L = self.attention_B_L[rows_B]


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, L) token ids padded on the left, and the matching attention mask."""
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), length), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, length - len(prompt) :] = 1
    return ids, mask


def end_of_turn_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Every token that ends an assistant turn: the tokenizer's and the model's EOS ids,
    plus chat end markers such as <|im_end|> and <|endoftext|> when the vocabulary has them."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    generation_config = getattr(model, "generation_config", None)
    eos = getattr(generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    vocab = tokenizer.get_vocab()
    ids.update(
        vocab[marker] for marker in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>") if marker in vocab
    )
    return frozenset(ids)
