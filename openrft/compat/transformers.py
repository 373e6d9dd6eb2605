"""transformers' internals that openrft's fast paths rely on, all in one place:
- the attention implementation a model runs with (`config._attn_implementation`, switched
  with `set_attn_implementation` for the packed training forward and back after);
- the KV cache's layer class (`DynamicLayer`: its lazy initialisation, `keys`/`values`,
  `is_initialized`, and `DynamicCache.layer_class_to_replicate`), subclassed by the in-place
  KV cache of openrft.fast.kv_cache.
Registering an attention function with `AttentionInterface` is public API, but it is global
state: it happens on first use (`register_attention`), never at import.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.cache_utils import DynamicCache, DynamicLayer

from openrft.compat import version_problem
from openrft.errors import ModelError

WRITTEN_FOR = ("5.23.0",)
PROBLEM = version_problem("transformers", WRITTEN_FOR)  # None: the internals are as expected
MIN_ROOM = 64  # tokens of spare room the in-place cache allocates at least when it grows


def register_attention(name: str, function: Callable) -> None:
    """Make `function` selectable as attention implementation `name` (idempotent)."""
    AttentionInterface.register(name, function)


def attention_implementation(model: PreTrainedModel) -> str:
    return model.config._attn_implementation


@contextlib.contextmanager
def use_attention(model: PreTrainedModel, name: str) -> Iterator[None]:
    """Run `model` with attention implementation `name` while inside; the previous one is
    restored after, also on errors."""
    previous = attention_implementation(model)
    model.set_attn_implementation(name)
    try:
        if attention_implementation(model.get_decoder()) != name:
            raise ModelError(
                f"{type(model).__name__} cannot switch its attention implementation "
                "(transformers' AttentionInterface), which packed training needs"
            )
        yield
    finally:
        model.set_attn_implementation(previous)


class PreallocatedLayer(DynamicLayer):
    """DynamicLayer semantics (keys/values hold exactly the cached tokens) over a buffer with
    room to grow (doubling when full): a decode step writes one token per layer instead of
    concatenating the whole cache. For inference only: the in-place writes break autograd."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.length = 0
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self.key_buffer is None or end > self.key_buffer.shape[-2]:
            self._grow(key_states, value_states, end)
        assert self.key_buffer is not None and self.value_buffer is not None
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._refresh_views()
        return self.keys, self.values

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, needed: int) -> None:
        old = self.key_buffer.shape[-2] if self.key_buffer is not None else 0
        room = max(needed, 2 * old, needed + MIN_ROOM)
        batch, heads, _, key_dim = key_states.shape
        keys = key_states.new_empty((batch, heads, room, key_dim))
        values = value_states.new_empty((batch, heads, room, value_states.shape[-1]))
        if self.length:
            keys[:, :, : self.length] = self.keys
            values[:, :, : self.length] = self.values
        self.key_buffer, self.value_buffer = keys, values

    def _refresh_views(self) -> None:
        assert self.key_buffer is not None and self.value_buffer is not None
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
            self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
            self._refresh_views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            self.key_buffer = self.key_buffer[indices, ...]
            self.value_buffer = self.value_buffer[indices, ...]
            self._refresh_views()

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("the rollout cache only grows")


def preallocated_cache() -> DynamicCache:
    """An empty DynamicCache whose layers (created on first use) are PreallocatedLayers."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = PreallocatedLayer
    return cache
