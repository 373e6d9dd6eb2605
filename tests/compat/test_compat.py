"""The library internals' one home: version checks, and what each fast path does when the
installed library is not the one it was written for."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from openrft.compat import peft as peft_internals
from openrft.compat import torch as torch_internals
from openrft.compat import transformers as transformers_internals
from openrft.compat import version_problem
from openrft.fast import compact, kv_cache, packed_attention, shadow
from openrft.fast.packed_weights import can_pack


def test_the_pinned_versions_are_the_ones_the_internals_were_written_for():
    # pyproject.toml pins these; an upgrade must come with a review of openrft.compat.
    assert transformers_internals.PROBLEM is None
    assert peft_internals.PROBLEM is None
    assert torch_internals.PROBLEM is None


def test_version_problem_names_the_library_and_the_versions():
    assert version_problem("torch", ("2.13.0",)) is None  # "+cpu" local tags are ignored
    problem = version_problem("torch", ("1.0.0", "1.1.0"))
    assert problem.startswith("torch 2.13.0") and "(1.0.0, 1.1.0)" in problem
    assert (
        version_problem("no-such-package-here", ("1",)) == "no-such-package-here is not installed"
    )


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("library", ["transformers", "peft"])
def test_an_upgrade_turns_the_fast_paths_that_need_it_off(monkeypatch, library):
    module = {"transformers": transformers_internals, "peft": peft_internals}[library]
    monkeypatch.setattr(module, "PROBLEM", f"{library} 99.0 is not a version ...")
    model = tiny_llama()
    assert packed_attention.unsupported_reason(model).startswith(library)
    assert compact.unsupported_reason(model).startswith(library)
    if library == "transformers":
        assert kv_cache.unsupported_reason().startswith(library)
        assert type(kv_cache.decoding_cache(in_place=False)) is DynamicCache
    else:
        assert shadow.unsupported_reason().startswith(library)


def test_a_torch_upgrade_turns_the_packed_weights_off(monkeypatch):
    monkeypatch.setattr(torch_internals, "PROBLEM", "torch 3.0 is not a version ...")
    assert not can_pack(torch.float32) and not can_pack(torch.bfloat16)


def test_nothing_outside_compat_touches_private_library_internals():
    # The private operators and attributes openrft uses are named only in openrft/compat.
    import pathlib

    root = pathlib.Path(__file__).parents[2] / "openrft"
    private = ("torch.ops.mkl", "torch.ops.mkldnn", "._attn_implementation", "lora_variant",
               "cache_utils", "fp32_precision", "base_model.model.")  # fmt: skip
    offenders = []
    for path in root.rglob("*.py"):
        if path.parent.name == "compat":
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(root)}: {name}" for name in private if name in text]
    assert offenders == []
