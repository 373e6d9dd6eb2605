"""The rollout engine interface: token-id prompts in, G completions per prompt out.

The training loop only talks to this protocol, so a vLLM engine (its own weights, synced
after each update) slots in beside the transformers engine without changing the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import torch
from torch import nn

from openrft.types import Completion, FinishReason, SamplingParams

# Called with a prompt's index and its finished group as soon as all its samples are done
# (graders start on it while the rest generate); in the engine's thread, so it must be quick.
OnGroup = Callable[[int, list[Completion]], None]


class RolloutEngine(Protocol):
    policy_version: int  # the trainer's update count of the weights it samples from now
    description: str  # how it samples, for the job's log ("compact decoder, bf16", "vLLM at ...")

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        on_group: OnGroup | None = None,
    ) -> list[list[Completion]]:
        """`params.n` completions for each prompt (token ids of the rendered chat prompt);
        each group is also handed to `on_group`, once, as soon as it is finished."""
        ...

    def sync_weights(self, policy: nn.Module, version: int) -> dict[str, float]:
        """Make the engine sample from `policy`'s current weights, the trainer's `version`-th
        update (nothing to copy when it shares them); a copy is checked with the weight-sync
        probe (openrft.rollout.probe). Returns metrics of the sync for the step's record."""
        ...

    def close(self) -> None:
        """Release what the engine holds (a server it started)."""
        ...


class Decoder(Protocol):
    """How an in-process engine computes tokens, one chunk of prompts at a time:
    CompactDecoder (openrft.fast.compact) or TransformersDecoder (openrft.rollout.hf_engine).
    Rows are samples: prompt p's `repeats` samples are rows p * repeats ... (p + 1) * repeats."""

    device: torch.device  # where its weights and caches live
    holds_copy: bool  # samples from a copy of the weights (which sync() refreshes)
    dtype: torch.dtype  # the dtype of the weights it samples with

    def sync(self, policy: nn.Module) -> None:
        """Sample from `policy`'s current weights from now on."""
        ...

    def inference(self) -> AbstractContextManager[None]:
        """Held while generating: the state sampling needs (eval mode), restored after."""
        ...

    def prefill(
        self,
        input_ids_P_L: torch.Tensor,
        attention_P_L: torch.Tensor,
        positions_P_L: torch.Tensor,
        repeats: int,
        room: int,
    ) -> torch.Tensor:
        """Left-padded prompts in; every row's next-token logits (P * repeats, V) out; room
        for `room` generated tokens per row."""
        ...

    def step(
        self, tokens_B: torch.Tensor, positions_B: torch.Tensor, idle_B: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One token per live row in; next-token logits (B, V) out. Rows marked in `idle_B`
        (episodes waiting for their environment) are fed a filler whose cache column is
        masked for them."""
        ...

    def extend(
        self, tokens_B_K: torch.Tensor, real_B_K: torch.Tensor, positions_B_K: torch.Tensor
    ) -> torch.Tensor:
        """Append up to K tokens to every row's cache in one pass (left-padded within the
        chunk; padding, where `real_B_K` is False, is masked); next-token logits (B, V) after
        each row's last token. How an episode continues after its environment's answer."""
        ...

    def drop_finished(self, batch: int, live: int) -> bool:
        """Whether to shrink a batch with `live` unfinished rows of `batch` now."""
        ...

    def keep(self, rows_B: torch.Tensor) -> None:
        """Keep only these rows of the batch."""
        ...


def completion_from_tokens(
    tokenizer,
    token_ids: Sequence[int],
    reason: FinishReason,
    stop: Sequence[str],
    logprobs: Sequence[float] | None = None,
) -> Completion:
    """A Completion from generated token ids: the text decoded without special tokens and cut
    before the first stop string; the tokens are kept whole (they are what was sampled)."""
    text = cut_at_stop(tokenizer.decode(list(token_ids), skip_special_tokens=True), stop)
    return Completion(
        token_ids=tuple(token_ids),
        text=text,
        finish_reason=reason,
        logprobs=None if logprobs is None else tuple(logprobs),
    )


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first stop string it holds (whichever comes first)."""
    for marker in stop:
        cut = text.find(marker)
        if cut >= 0:
            text = text[:cut]
    return text


def raw_turn_text(
    tokenizer, token_ids: Sequence[int], end_token_ids: frozenset[int], stop: Sequence[str]
) -> str:
    """A turn's text with special tokens kept (Qwen's <tool_call> can be one) and its end of
    turn dropped, cut before a stop string as the completion's text is: what a tool-call
    parser reads."""
    ids = [t for t in token_ids if t not in end_token_ids]
    return cut_at_stop(tokenizer.decode(ids, skip_special_tokens=False), stop)
