"""The bf16 sampling copy: it computes what the float32 policy computes (to bf16 precision),
follows every update through sync(), and the engine samples from it."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from openrft.compat.peft import current_weights
from openrft.fast.shadow import ShadowModel
from openrft.rollout.hf_engine import HFEngine
from openrft.types import SamplingParams

PROBE = torch.tensor([[1, 5, 9, 13, 17, 21]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=PROBE).logits.float()


def _lora_policy(model_dir):
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(0)
    return get_peft_model(base, config)


def test_the_shadow_merges_lora_and_follows_updates(tiny_model_dir):
    policy = _lora_policy(tiny_model_dir)
    shadow = ShadowModel(policy, torch.bfloat16)
    assert next(shadow.model.parameters()).dtype == torch.bfloat16
    assert not any("lora" in name for name, _ in shadow.model.named_parameters())
    assert torch.allclose(_logits(shadow.model), _logits(policy), atol=0.05)
    assert "lora_A" in str(policy)  # the policy keeps its adapters

    with torch.no_grad():  # an "update": every LoRA B moves
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.5)
    before = _logits(shadow.model)
    shadow.sync(policy)
    assert not torch.allclose(before, _logits(shadow.model), atol=0.05)
    assert torch.allclose(_logits(shadow.model), _logits(policy), atol=0.05)


def test_full_weights_are_copied_on_sync(tiny_model_dir):
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    shadow = ShadowModel(policy, torch.bfloat16)
    with torch.no_grad():
        policy.model.layers[0].mlp.up_proj.weight.mul_(3.0)
    shadow.sync(policy)
    assert torch.allclose(_logits(shadow.model), _logits(policy), atol=0.05)


def test_the_engine_samples_from_the_bf16_copy(tiny_model_dir, tiny_tokenizer):
    policy = _lora_policy(tiny_model_dir)
    engine = HFEngine(policy, tiny_tokenizer, sample_dtype=torch.bfloat16, decoder="transformers")
    sampled = engine.decoder.model
    assert sampled is not policy and next(sampled.parameters()).dtype == torch.bfloat16
    prompt = tiny_tokenizer("the movie was great")["input_ids"]
    greedy = SamplingParams(n=2, temperature=0.0, max_new_tokens=5)
    [completions] = engine.generate([prompt], greedy)
    assert len(completions) == 2 and all(c.token_ids for c in completions)
    same = HFEngine(policy, tiny_tokenizer, decoder="transformers")  # no dtype: the policy
    assert same.decoder.model is policy and same.decoder.shadow is None


def test_a_bf16_base_merges_within_its_own_rounding_of_an_exact_merge(tiny_model_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(0)
    policy = get_peft_model(base, config)  # adapters in float32 beside the bf16 base
    merged = dict(current_weights(policy))
    layer = policy.base_model.model.model.layers[1].mlp.down_proj
    exact = layer.base_layer.weight.double() + layer.scaling["default"] * (
        layer.lora_B["default"].weight.double() @ layer.lora_A["default"].weight.double()
    )
    got = merged["model.layers.1.mlp.down_proj.weight"]
    assert got.dtype == torch.bfloat16
    ulp = exact.abs() * 2**-8  # bf16 keeps 8 significant bits: one unit in the last place
    assert ((got.double() - exact).abs() <= ulp).all()


def test_a_weight_the_copy_has_no_place_for_is_refused(tiny_model_dir, monkeypatch):
    from openrft.errors import WeightSyncError
    from openrft.fast import shadow as shadow_module

    policy = _lora_policy(tiny_model_dir)
    shadow = ShadowModel(policy, torch.bfloat16)
    real = shadow_module.peft_internals.current_weights

    def renamed(policy, only_changing=False):  # an upstream rename of one parameter
        for name, weight in real(policy, only_changing):
            yield name.replace("mlp.down_proj", "mlp.w2"), weight

    monkeypatch.setattr(shadow_module.peft_internals, "current_weights", renamed)
    with pytest.raises(WeightSyncError, match=r"no weight named .*mlp.w2"):
        shadow.sync(policy)
