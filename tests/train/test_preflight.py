"""openrft.train.preflight: the memory estimate against counts done by hand for the tiny
Llama (tests/tiny_model.py), the knob advice, the check and its override; and (real_model)
the estimate against the measured peak RSS of a short SmolLM2 run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from openrft.config import load_config
from openrft.errors import ConfigError
from openrft.train.preflight import (
    GIB,
    Architecture,
    adapter_params,
    estimate_memory,
    model_architecture,
)
from openrft.train.preflight_check import check_fit, check_memory, rough_prompt_tokens

# tests/tiny_model.py: hidden 64, intermediate 128, 2 layers, 4 heads and 2 KV heads of 16,
# tied embeddings; the vocabulary is the tiny tokenizer's.
H, I, L, KV, D = 64, 128, 2, 2, 16  # noqa: E741


def tiny_config(model_dir: Path, tmp_path: Path, *overrides: str):
    data = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": "x" * 30}], "reference_answer": "a"}] * 8
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_config(
        None,
        [f"model.name={json.dumps(str(model_dir))}", f"data.train_file={json.dumps(str(data))}",
         "data.validation_size=2", *overrides],
    )  # fmt: skip


def test_parameter_count_by_hand_and_by_the_model(tiny_model_dir):
    arch = model_architecture(str(tiny_model_dir))
    vocab = arch.vocab
    per_layer = (
        H * H + 2 * H * (KV * D) + H * H  # q, k, v, o
        + 3 * H * I  # gate, up, down
        + 2 * H  # the two norms
    )  # fmt: skip
    assert arch.layer_params() == per_layer == 36_992
    assert arch.params() == vocab * H + L * per_layer + H  # tied: no separate LM head
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert arch.params() == sum(p.numel() for p in model.parameters())


def test_lora_parameter_count_by_hand_and_by_peft(tiny_model_dir):
    arch = model_architecture(str(tiny_model_dir))
    r = 16
    by_hand = L * r * ((H + H) * 2 + (H + KV * D) * 2 + (H + I) * 2 + (I + H))
    assert adapter_params(arch, r, ("all-linear",)) == by_hand == 32_768
    assert adapter_params(arch, r, ("q_proj", "v_proj")) == L * r * (2 * H + H + KV * D)
    import peft
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=r, target_modules="all-linear"))
    assert by_hand == sum(p.numel() for p in lora.parameters() if p.requires_grad)


def test_memory_terms_by_hand(tiny_model_dir, tmp_path):
    config = tiny_config(
        tiny_model_dir, tmp_path, "rollout.samples_per_prompt=4", "rollout.max_new_tokens=10",
        "rollout.batch_size=8", "train.prompts_per_step=4", "train.micro_batch_size=8",
        "eval.max_prompts=2", "eval.baseline_prompts=0",
    )  # fmt: skip
    arch = model_architecture(str(tiny_model_dir))
    e = estimate_memory(config, arch, prompt_tokens=20, device="cpu")
    params, adapters = arch.params(), adapter_params(arch, 16, ("all-linear",))
    assert e.terms["weights"] == 4 * params
    assert e.terms["adapters"] == e.terms["gradients"] == 4 * adapters
    assert e.terms["optimizer"] == 2 * 4 * adapters  # AdamW: two float32 moments
    assert e.terms["reference"] == 0  # LoRA: the reference is the base with adapters off
    # Compact decoder on the CPU: float32 KV, each of the 2 prompts once, 8 rows x 10 tokens.
    per_token = 2 * L * KV * D * 4
    assert e.terms["kv_cache"] == per_token * (2 * 20 + 8 * 10)
    # Packed update: the micro-batch of 8 rows is 2 groups of 4, each prompt once, then 8
    # responses of 10 tokens.
    tokens = 2 * 20 + 8 * 10
    assert e.terms["activations"] == tokens * L * (12 * H + 5 * I) * 4
    assert e.terms["logits"] == 8 * 10 * arch.vocab * 4 + 2 * 80 * arch.vocab * 4
    assert e.peak == max(e.phases.values())
    assert e.dominant in e.terms


def test_full_fine_tuning_with_kl_keeps_a_reference_and_full_optimizer_state(
    tiny_model_dir, tmp_path
):
    config = tiny_config(tiny_model_dir, tmp_path, "lora.enabled=false", "algo.kl_coef=0.1")
    arch = model_architecture(str(tiny_model_dir))
    e = estimate_memory(config, arch, prompt_tokens=20)
    params = arch.params()
    assert e.trainable == params
    assert e.terms["reference"] == e.terms["weights"] == 4 * params
    assert e.terms["optimizer"] == 8 * params and e.terms["adapters"] == 0


def test_architecture_from_a_qwen2_config_has_qkv_biases_and_an_untied_head():
    raw = {"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24,
           "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
           "vocab_size": 151936, "tie_word_embeddings": True}  # fmt: skip
    assert Architecture.from_config(raw).params() == 494_032_768  # Qwen2.5-0.5B's published
    untied = Architecture.from_config(raw | {"tie_word_embeddings": False})
    assert untied.params() == 494_032_768 + 151936 * 896  # + the LM head


def test_a_config_that_does_not_fit_names_the_knob_and_how_far(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path, "train.micro_batch_size=64",
                         "train.prompts_per_step=16", "rollout.max_new_tokens=2000")  # fmt: skip
    arch = model_architecture(str(tiny_model_dir))
    estimate = estimate_memory(config, arch, 20)
    limit = estimate.peak - estimate.terms["activations"] // 2
    fit = check_fit(config, arch, 20, device="cpu", available=limit)
    assert not fit.fits
    assert fit.estimate.dominant == "activations"
    assert fit.advice[0].startswith("lower train.micro_batch_size from 64 to ")
    lowered = int(fit.advice[0].rsplit(" ", 1)[1])
    smaller = load_config(None, [*_overrides(config), f"train.micro_batch_size={lowered}"])
    assert 16 <= lowered < 64
    assert estimate_memory(smaller, arch, 20).peak <= limit  # the advice fits
    assert "preflight.check = false" in fit.message()


def _overrides(config) -> list[str]:
    return [
        f"model.name={json.dumps(config.model.name)}",
        f"data.train_file={json.dumps(config.data.train_file)}",
        "data.validation_size=2", "train.prompts_per_step=16", "rollout.max_new_tokens=2000",
    ]  # fmt: skip


ABSURD = ("train.micro_batch_size=64", "rollout.max_new_tokens=1000000")


def test_check_memory_refuses_naming_the_knob_and_can_be_turned_off(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path, *ABSURD)
    with pytest.raises(ConfigError) as info:
        check_memory(config)
    assert info.value.field in ("train.micro_batch_size", "rollout.max_new_tokens")
    assert "exceeds" in str(info.value)
    off = tiny_config(tiny_model_dir, tmp_path, *ABSURD, "preflight.check=false")
    assert check_memory(off) is None
    fits = check_memory(tiny_config(tiny_model_dir, tmp_path))
    assert fits is not None and fits.fits


def test_rough_prompt_tokens_errs_long_and_is_capped(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path)
    rough = rough_prompt_tokens(config)
    assert rough is not None and rough >= 30 // 3
    capped = tiny_config(tiny_model_dir, tmp_path, "data.max_prompt_tokens=8")
    assert rough_prompt_tokens(capped) == 8


def test_unknown_models_are_not_checked(tmp_path):
    assert model_architecture(str(tmp_path / "nothing.gguf")) is None
    config = load_config(None, [f"model.name={json.dumps(str(tmp_path / 'x.gguf'))}"])
    assert check_memory(config) is None


@pytest.mark.real_model
def test_estimate_against_the_measured_peak_of_a_short_smollm2_run(tmp_path):
    """One step of the demo recipe (SmolLM2-135M, ~40 s): the estimate at the first rows'
    longest prompt is within 25% of the run's peak RSS (docs/preflight.md has the table)."""
    recipe = Path(__file__).parents[2] / "openrft" / "recipes" / "sst2-smollm2.toml"
    overrides = ["train.max_steps=1", "eval.max_prompts=1", "eval.baseline_prompts=0",
                 "checkpoint.interval=0"]  # fmt: skip
    sets = [arg for o in overrides for arg in ("--set", o)]
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "openrft.cli", "train", str(recipe), *sets,
               "--output", str(run_dir), "--no-progress"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    measured = max(json.loads(line).get("memory/peak_rss_gb", 0) for line in lines)

    from transformers import AutoTokenizer

    from openrft.models.load import resolve_model_dir
    from openrft.train.calibrate import sample_prompts

    config = load_config(recipe, overrides)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(config.model.name))
    prompt = sample_prompts(config, tokenizer).max_tokens
    arch = model_architecture(config.model.name)
    estimated = estimate_memory(config, arch, prompt, "cpu").peak / GIB
    assert measured * 0.75 <= estimated <= measured * 1.25, (estimated, measured)
