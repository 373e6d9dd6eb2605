"""peft's internals that openrft's fast paths rely on, all in one place:
- the wrapper's parameter names (`base_model.model.` in front, `.base_layer.` inside a LoRA
  layer) and a LoRA layer's parts (`base_layer`, `lora_A`, `lora_B`, `scaling`,
  `active_adapters`, `lora_variant`, `fan_in_fan_out`), read to merge LoRA into a sampling
  copy of the weights (openrft.fast.shadow, openrft.fast.compact);
- swapping LoRA layers for their base layers on a live model, to deep-copy the base;
- the per-module `lora_variant` slot, where the packed training forward installs a one-addmm
  LoRA forward for its duration (openrft.fast.packed_attention).
The plain path uses peft only through its public API (get_peft_model, disable_adapter,
save_pretrained, set_peft_model_state_dict).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import peft.helpers
import peft.tuners.lora
import torch
from torch import nn

from openrft.compat import version_problem

WRITTEN_FOR = ("0.21.2",)
PROBLEM = version_problem("peft", WRITTEN_FOR)  # None: the internals below are as expected
WRAPPER_PREFIX = "base_model.model."  # peft's wrapper path in front of the plain model's names


def plain_model(policy: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return policy.get_base_model() if hasattr(policy, "get_base_model") else policy


def plain_name(name: str) -> str:
    """A parameter's name in the plain transformers model, without peft's wrapper parts."""
    return name.removeprefix(WRAPPER_PREFIX).replace(".base_layer.", ".")


def lora_layers(policy: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every peft LoRA-wrapped layer: those with a base layer and a delta."""
    return [
        (name, module)
        for name, module in policy.named_modules()
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer")
    ]


def plain_lora_linear(module: nn.Module, adapter: str) -> bool:
    """A LoRA adapter whose delta is exactly scale * B.weight @ A.weight (out, in)."""
    return (
        not getattr(module, "fan_in_fan_out", False)
        and adapter not in getattr(module, "lora_variant", {})
        and isinstance(module.lora_A[adapter], nn.Linear)
        and isinstance(module.lora_B[adapter], nn.Linear)
    )


@torch.no_grad()
def current_weights(
    policy: nn.Module, only_changing: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """(plain model name, current tensor) for every parameter of `policy`, or with
    `only_changing` for those an update can change (LoRA-merged and trainable ones): a
    LoRA-wrapped layer's weight comes merged (base + scale * B @ A, see `merged_weight`),
    everything else is the parameter itself, detached."""
    merged: set[str] = set()
    for name, module in lora_layers(policy):
        target = plain_name(name) + ".weight"
        merged.add(target)
        yield target, merged_weight(module)
    for name, parameter in policy.named_parameters():
        plain = plain_name(name)
        if "lora_" in name or plain in merged or (only_changing and not parameter.requires_grad):
            continue
        yield plain, parameter.detach()


def merged_weight(module: nn.Module) -> torch.Tensor:
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


@contextlib.contextmanager
def without_lora(policy: nn.Module) -> Iterator[None]:
    """Swap peft's LoRA-wrapped layers for their base layers while inside (to deep-copy the
    base model's structure); the LoRA layers are put back after, also on errors."""
    swapped = []
    try:
        for name, module in lora_layers(policy):
            parent_name, _, child = name.rpartition(".")
            parent = policy.get_submodule(parent_name)
            setattr(parent, child, module.base_layer)
            swapped.append((parent, child, module))
        yield
    finally:
        for parent, child, module in swapped:
            setattr(parent, child, module)


class _OneAddmmLora:
    """A peft LoRA "variant" for plain adapters, in place only during the packed forward:
    result + scale * (x A^T) B^T as one addmm, instead of a matmul, a scaling and a sum (two
    passes fewer over every LoRA layer's (N, out) output, forward and backward)."""

    @staticmethod
    def forward(module, active_adapter, x, result, **_):
        down = module.lora_A[active_adapter](module.lora_dropout[active_adapter](x))
        out_M_O = torch.addmm(
            result.reshape(-1, result.shape[-1]),
            down.reshape(-1, down.shape[-1]),
            module.lora_B[active_adapter].weight.T,
            alpha=module.scaling[active_adapter],
        )
        return out_M_O.view(result.shape)


@contextlib.contextmanager
def one_addmm_lora(model: nn.Module) -> Iterator[int]:
    """Run plain LoRA adapters (no variant of their own, no bias) as `_OneAddmmLora` while
    inside, through peft's per-module `lora_variant` slot; yields how many were installed."""
    installed: list[tuple[dict, str]] = []
    for module in model.modules():
        variants = getattr(module, "lora_variant", None)
        if not isinstance(module, peft.tuners.lora.Linear) or not isinstance(variants, dict):
            continue
        for adapter in module.lora_A:
            plain = adapter not in variants and plain_lora_linear(module, adapter)
            if plain and module.lora_B[adapter].bias is None:
                variants[adapter] = _OneAddmmLora
                installed.append((variants, adapter))
    try:
        yield len(installed)
    finally:
        for variants, adapter in installed:
            variants.pop(adapter, None)


def input_casting_off(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """peft's LoRA layers cast their input to the adapter's dtype; off under autocast."""
    return peft.helpers.disable_input_dtype_casting(model)
