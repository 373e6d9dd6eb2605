"""The in-place KV cache: the transformers decoder's fast path for rollouts.

transformers' DynamicLayer appends with `torch.cat`, which copies the whole cache of every
layer at every decoding step: O(length^2) memory traffic, measured as 29% of the time of a
GRPO rollout (SmolLM2, 64 sequences, 75-token prompts, 16 new tokens). The in-place layer
(`compat.transformers.PreallocatedLayer`, a DynamicLayer subclass) keeps a buffer with room
to grow and hands attention a view of the filled part, so a step writes one token per layer.
Its plain twin is transformers' own DynamicCache; tests/fast/test_kv_cache.py checks that
both give the same logits.
"""

from __future__ import annotations

from transformers import DynamicCache

from openrft.compat import transformers as transformers_internals


def unsupported_reason() -> str | None:
    """Why the in-place cache cannot be used here (None: it can)."""
    return transformers_internals.PROBLEM


def decoding_cache(in_place: bool) -> DynamicCache:
    """An empty cache for a decode loop: the in-place one, or transformers' own."""
    return transformers_internals.preallocated_cache() if in_place else DynamicCache()
