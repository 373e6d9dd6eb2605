"""A low-precision copy of the policy that the transformers decoder samples from.

The trainer keeps float32 weights (and Adam state) for stable updates; sampling only needs a
forward pass, and on CPUs with AVX-512 BF16/AMX a bfloat16 matmul is ~4x a float32 one
(bench/generate.py measures both). So rollouts can run on a bfloat16 copy with LoRA merged
in, re-synced after every update: the same split vLLM-based trainers use, with the same
small sampler/trainer mismatch (the trainer recomputes every log-prob in float32). Its plain
twin is sampling from the policy itself.

    shadow = ShadowModel(policy.model, torch.bfloat16)   # once
    shadow.sync(policy.model)                            # after each optimizer step

A sync refuses a weight it has no place for, and the first sync one it expected and did not
get (`WeightSyncError`): after a rename upstream the copy would otherwise keep sampling from
stale weights with no error.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from openrft.compat import peft as peft_internals
from openrft.errors import WeightSyncError


def unsupported_reason() -> str | None:
    """Why a merged sampling copy cannot be made here (None: it can)."""
    return peft_internals.PROBLEM


class ShadowModel:
    """`model`: a plain transformers model in `dtype`, with LoRA deltas merged into its weights."""

    def __init__(self, policy: nn.Module, dtype: torch.dtype):
        self.dtype = dtype
        plain = peft_internals.plain_model(policy)
        # Built from the policy's own modules, LoRA branches left out: a structural copy of the
        # base model, whose weights sync() then overwrites.
        with peft_internals.without_lora(policy):
            self.model = copy.deepcopy(plain).to(dtype).eval().requires_grad_(False)
        self._targets = dict(self.model.named_parameters())
        self._synced_once = False
        self.sync(policy)

    @torch.no_grad()
    def sync(self, policy: nn.Module) -> None:
        """Copy the policy's current weights (base + scale * B @ A for LoRA layers) over."""
        arrived = set()
        for name, weight in peft_internals.current_weights(policy, self._synced_once):
            target = self._targets.get(name)
            if target is None:
                raise WeightSyncError(
                    f"the sampling copy has no weight named {name!r}: the policy's parameter "
                    "names no longer match the copy's (a library upgrade?)"
                )
            target.copy_(weight)
            arrived.add(name)
        if not self._synced_once and arrived != set(self._targets):
            missing = sorted(set(self._targets) - arrived)
            raise WeightSyncError(
                f"the policy did not provide {len(missing)} weight(s) of the sampling copy, "
                f"e.g. {missing[:3]}: the copy would sample from stale weights"
            )
        self._synced_once = True
