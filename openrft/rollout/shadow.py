"""A low-precision copy of the policy that the rollout engine samples from.

The trainer keeps float32 weights (and Adam state) for stable updates; sampling only needs a
forward pass, and on CPUs with AVX-512 BF16/AMX a bfloat16 matmul is ~4x a float32 one
(bench/generate.py measures both). So rollouts can run on a bfloat16 copy with LoRA merged
in, re-synced after every update: the same split vLLM-based trainers use, with the same
small sampler/trainer mismatch (the trainer recomputes every log-prob in float32).

    shadow = ShadowModel(policy.model, torch.bfloat16)   # once
    shadow.sync(policy.model)                            # after each optimizer step
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn

LORA_PREFIX = "base_model.model."  # peft's wrapper path in front of the plain model's names


class ShadowModel:
    """`model`: a plain transformers model in `dtype`, with LoRA deltas merged into its weights."""

    def __init__(self, policy: nn.Module, dtype: torch.dtype):
        self.dtype = dtype
        plain = plain_model(policy)
        # Built from the policy's own modules, LoRA branches left out: a structural copy of the
        # base model, whose weights sync() then overwrites.
        with _without_lora(policy):
            self.model = copy.deepcopy(plain).to(dtype).eval().requires_grad_(False)
        self._targets = dict(self.model.named_parameters())
        self._synced_once = False
        self.sync(policy)

    @torch.no_grad()
    def sync(self, policy: nn.Module) -> None:
        """Copy the policy's current weights (base + scale * B @ A for LoRA layers) over."""
        for name, weight in current_weights(policy, only_changing=self._synced_once):
            if name in self._targets:
                self._targets[name].copy_(weight)
        self._synced_once = True


@torch.no_grad()
def current_weights(
    policy: nn.Module, only_changing: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """(plain model name, current tensor) for every parameter of `policy`, or with
    `only_changing` for those an update can change (LoRA-merged and trainable ones): a
    LoRA-wrapped layer's weight comes merged (base + scale * B @ A, see `_merged_weight`),
    everything else is the parameter itself, detached. Names are those
    of the plain transformers model, without peft's wrapper prefixes."""
    merged: set[str] = set()
    for name, module in _lora_layers(policy):
        target = _plain_name(name) + ".weight"
        merged.add(target)
        yield target, _merged_weight(module)
    for name, parameter in policy.named_parameters():
        plain = _plain_name(name).replace(".base_layer.", ".")
        if "lora_" in name or plain in merged or (only_changing and not parameter.requires_grad):
            continue
        yield plain, parameter.detach()


def _merged_weight(module: nn.Module) -> torch.Tensor:
    """base + scale * B @ A over the layer's active adapters.

    Plain linear adapters merge in one addmm per adapter (one pass over the weight, instead of
    a product, a scaling and a sum), in the base's dtype when it is bf16/fp16: the product
    accumulates in float32 and the sum is rounded once, so it differs from a float32 merge by
    rounding B and A to bf16, far below the result's own rounding (SmolLM2 gate_proj, a
    trained-size delta: mean error to float64 2.265e-5 against 2.254e-5, 4x faster, no float32
    copy of the weight). Anything else merges in float32 or wider through peft."""
    adapters = [a for a in module.active_adapters if a in module.lora_A]
    base = module.base_layer.weight.detach()
    half = base.dtype in (torch.bfloat16, torch.float16)
    dtype = base.dtype if half else torch.promote_types(base.dtype, torch.float32)
    weight = base.to(dtype)
    for adapter in adapters:
        if plain_lora_linear(module, adapter):
            weight = torch.addmm(
                weight,
                module.lora_B[adapter].weight.detach().to(dtype),
                module.lora_A[adapter].weight.detach().to(dtype),
                alpha=module.scaling[adapter],
            )
        else:
            weight = weight.to(torch.promote_types(dtype, torch.float32))
            weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
    return weight


def plain_lora_linear(module: nn.Module, adapter: str) -> bool:
    """A LoRA adapter whose delta is exactly scale * B.weight @ A.weight (out, in)."""
    return (
        not getattr(module, "fan_in_fan_out", False)
        and adapter not in getattr(module, "lora_variant", {})
        and isinstance(module.lora_A[adapter], nn.Linear)
        and isinstance(module.lora_B[adapter], nn.Linear)
    )


def plain_model(policy: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return policy.get_base_model() if hasattr(policy, "get_base_model") else policy


def _plain_name(name: str) -> str:
    return name.removeprefix(LORA_PREFIX)


def _lora_layers(policy: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every peft LoRA-wrapped layer: those with a base layer and a delta."""
    return [
        (name, module)
        for name, module in policy.named_modules()
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer")
    ]


class _without_lora:
    """Temporarily swap peft's LoRA-wrapped linears for their base layers (for the deep copy)."""

    def __init__(self, policy: nn.Module):
        self.policy, self.swapped = policy, []

    def __enter__(self) -> None:
        for name, module in _lora_layers(self.policy):
            parent_name, _, child = name.rpartition(".")
            parent = self.policy.get_submodule(parent_name)
            setattr(parent, child, module.base_layer)
            self.swapped.append((parent, child, module))

    def __exit__(self, *_: object) -> None:
        for parent, child, module in self.swapped:
            setattr(parent, child, module)
