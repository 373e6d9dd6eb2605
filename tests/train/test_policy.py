"""build_policy with model.init_from: every pairing of what the earlier run saved (adapter or
full weights) with what the new run trains (LoRA or full)."""

from __future__ import annotations

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from openrft.train.loop import train
from openrft.train.policy import build_policy

from .helpers import tiny_job

PROBE = torch.tensor([[1, 5, 9, 13, 17]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=PROBE).logits


def test_full_weights_replace_the_base_under_a_fresh_adapter(tmp_path, tiny_model_dir):
    full = tiny_job(tmp_path, tiny_model_dir, "lora.enabled=false", "train.max_steps=1")
    train(full, tmp_path / "full", show_progress=False)
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "final").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert not torch.allclose(_logits(trained), _logits(base))

    chained = tiny_job(tmp_path, tiny_model_dir, f'model.init_from="{tmp_path / "full"}"')
    policy = build_policy(chained)
    assert policy.uses_lora
    # A fresh adapter starts at zero (lora_B = 0): the policy computes the full run's model.
    assert torch.allclose(_logits(policy.model.eval()), _logits(trained), atol=1e-6)


def test_full_fine_tuning_from_an_adapter_merges_it(tmp_path, tiny_model_dir):
    lora = tiny_job(tmp_path, tiny_model_dir, "train.max_steps=1", "train.learning_rate=3e-2")
    train(lora, tmp_path / "lora", show_progress=False)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapted = PeftModel.from_pretrained(base, tmp_path / "lora" / "final").eval()

    chained = tiny_job(
        tmp_path, tiny_model_dir, "lora.enabled=false", f'model.init_from="{tmp_path / "lora"}"'
    )
    policy = build_policy(chained)
    assert not policy.uses_lora
    assert not any("lora_" in name for name, _ in policy.model.named_parameters())
    assert all(p.requires_grad for p in policy.model.parameters())
    assert torch.allclose(_logits(policy.model.eval()), _logits(adapted), atol=1e-5)
