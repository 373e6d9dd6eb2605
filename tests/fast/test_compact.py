"""The compact decoder computes what the transformers model computes: logits at prefill and
at every step (left padding, shared prompt caches, rows dropped), greedy and seeded samples
token for token, LoRA merged and re-synced, Qwen2's biases and untied head, packed weights;
and unsupported models fall back to the transformers forward."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from openrft.fast.compact import CompactDecoder, unsupported_reason
from openrft.fast.packed_weights import can_pack
from openrft.rollout.hf_engine import HFEngine, TransformersDecoder, left_pad
from openrft.types import SamplingParams

PROMPTS = [[5, 9, 13, 21, 34], [7, 11], [40, 41, 42, 43, 44, 45, 46, 47]]


def _wide(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Wider random weights, so greedy decoding does not repeat one token."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def llama(tiny_model_dir):
    return _wide(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64))


@pytest.fixture(scope="module")
def qwen2():
    config = Qwen2Config(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    return _wide(Qwen2ForCausalLM(config).to(torch.float64))


def _step_by_step(decoder, model, repeats: int = 2, steps: int = 5, drop_at: int = 2):
    """Run both decoders side by side on PROMPTS; at `drop_at` keep every other row. Returns
    the largest logit difference seen."""
    ids_P_L, attention_P_L = left_pad(PROMPTS, 0, torch.device("cpu"))
    positions_P_L = (attention_P_L.cumsum(-1) - 1).clamp(min=0)
    reference = TransformersDecoder(model)
    args = (ids_P_L, attention_P_L, positions_P_L, repeats)
    ours_B_V, theirs_B_V = decoder.prefill(*args, room=steps), reference.prefill(*args, room=0)
    worst = float((ours_B_V - theirs_B_V).abs().max().detach())
    position_B = positions_P_L[:, -1].repeat_interleave(repeats) + 1
    for step in range(steps):
        if step == drop_at:
            rows = torch.arange(0, position_B.shape[0], 2)
            decoder.keep(rows)
            reference.keep(rows)
            ours_B_V, position_B = ours_B_V[rows], position_B[rows]
        tokens_B = ours_B_V.argmax(-1)
        ours_B_V, theirs_B_V = (
            decoder.step(tokens_B, position_B),
            reference.step(tokens_B, position_B),
        )
        worst = max(worst, float((ours_B_V - theirs_B_V).abs().max().detach()))
        position_B = position_B + 1
    return worst


@pytest.mark.parametrize("model_name", ["llama", "qwen2"])
def test_logits_equal_the_transformers_forward_at_every_step(request, model_name):
    model = request.getfixturevalue(model_name)
    assert unsupported_reason(model) is None
    # transformers normalises and rotates in float32 inside a float64 model, hence 1e-5.
    assert _step_by_step(CompactDecoder(model, torch.float64), model) < 1e-5


@pytest.mark.parametrize("model_name", ["llama", "qwen2"])
def test_greedy_and_seeded_samples_match_the_transformers_decoder(
    request, tiny_tokenizer, model_name
):
    model = request.getfixturevalue(model_name)
    compact = HFEngine(model, tiny_tokenizer, batch_size=4, decoder="compact")
    plain = HFEngine(model, tiny_tokenizer, batch_size=4, decoder="transformers")
    for params in (
        SamplingParams(n=2, temperature=0.0, max_new_tokens=12),
        SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=7),
        SamplingParams(n=3, temperature=0.8, top_p=0.9, max_new_tokens=12, seed=3),
    ):
        assert compact.generate(PROMPTS, params) == plain.generate(PROMPTS, params)


def test_lora_is_merged_and_followed_through_sync(llama):
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(0)
    policy = get_peft_model(_wide(AutoModelForCausalLM.from_config(llama.config)).double(), config)
    decoder = CompactDecoder(policy, torch.float64)
    assert _step_by_step(decoder, policy) < 1e-5
    with torch.no_grad():  # an "update": every LoRA B and one norm move
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.3)
    decoder.sync(policy)
    assert _step_by_step(decoder, policy) < 1e-5


def test_bfloat16_copy_follows_the_float_model(llama):
    decoder = CompactDecoder(llama.float(), torch.bfloat16)
    try:
        assert decoder.layers[0].qkv.weight_t.dtype == torch.bfloat16
        assert _step_by_step(decoder, llama) < 0.1  # bf16 rounding of logits of size ~1-5
    finally:
        llama.double()


@pytest.mark.parametrize(
    ("dtype", "tolerance"),
    # float32: MKL's packed GEMM; bfloat16: oneDNN's packed weight (bf16 rounding, as unpacked)
    [(torch.float32, 1e-4), (torch.bfloat16, 0.1)],
)
def test_packed_weights_give_the_same_logits(llama, dtype, tolerance):
    if not can_pack(dtype):
        pytest.skip(f"no packed {dtype} format here (MKL, or oneDNN with bf16 instructions)")
    model = llama.float()
    try:
        # 3 prompts x 2 samples = 6 rows: the packed path, then 3 rows after the drop.
        decoder = CompactDecoder(model, dtype, packed_rows=6)
        assert decoder.layers[0].qkv.packed is not None and decoder.head_packed is not None
        assert _step_by_step(decoder, model) < tolerance
        # The packed product is the plain product, at the packed row count and another.
        projection = decoder.layers[1].down
        weight = model.model.layers[1].mlp.down_proj.weight.to(dtype)
        for rows in (6, 5):
            x = torch.randn(rows, 1, model.config.intermediate_size, dtype=dtype)
            torch.testing.assert_close(projection(x), x @ weight.T)
        # bf16: the packed form is the projections' only copy (nothing plain beside it).
        assert (projection.weight_t is None) == (dtype == torch.bfloat16)
    finally:
        llama.double()


def test_a_bf16_lora_policy_repacks_what_each_sync_brings(llama):
    # A bf16 base merges LoRA in bf16, and single-weight projections pack from the merged
    # weight as it arrives: after an update every packed form must carry the new weights.
    if not can_pack(torch.bfloat16):
        pytest.skip("no packed bf16 format here (oneDNN with bf16 instructions)")
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(0)
    base = _wide(AutoModelForCausalLM.from_config(llama.config)).to(torch.bfloat16)
    policy = get_peft_model(base, config)
    decoder = CompactDecoder(policy, torch.bfloat16, packed_rows=6)
    assert decoder.layers[0].down.packed is not None
    assert _step_by_step(decoder, policy) < 0.1  # bf16 rounding of logits of size ~1-5
    with torch.no_grad():  # an "update": every LoRA B moves
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.3)
    stale = _step_by_step(decoder, policy)
    decoder.sync(policy)
    # The update moved the logits by ~4 and made them larger (so bf16 rounds more coarsely:
    # ~0.2); a projection left with its old packed form would leave a gap of the first size.
    assert stale > 1.0 and _step_by_step(decoder, policy) < 0.1 * stale


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj", "up_proj"]])
def test_a_float32_lora_policy_repacks_what_each_sync_brings(llama, targets):
    # float32 projections pack from the merged (out, in) weights as they arrive when all of a
    # projection's weights changed, from their buffer when some did not (LoRA on q and v
    # only leaves k as it was): either way every packed form must carry the new weights.
    if not can_pack(torch.float32):
        pytest.skip("no packed float32 format here (MKL)")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    torch.manual_seed(0)
    policy = get_peft_model(_wide(AutoModelForCausalLM.from_config(llama.config)), config)
    decoder = CompactDecoder(policy, torch.float32, packed_rows=6)
    assert decoder.layers[0].qkv.packed is not None
    with torch.no_grad():  # an "update": every LoRA B moves
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.3)
    stale = _step_by_step(decoder, policy)
    decoder.sync(policy)
    assert stale > 1.0 and _step_by_step(decoder, policy) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finished_rows_stay_in_the_batch_until_a_quarter_is_done(llama, dtype):
    decoder = CompactDecoder(llama.float(), dtype, packed_rows=64)
    llama.double()
    assert not decoder.drop_finished(64, 64)
    assert not decoder.drop_finished(64, 49)
    assert decoder.drop_finished(64, 48)
    assert not decoder.drop_finished(32, 25)  # any row count, packed or not
    assert decoder.drop_finished(32, 24)


def test_unsupported_models_fall_back_to_the_transformers_forward(tiny_tokenizer):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=96)).eval()
    assert "gpt2" in unsupported_reason(gpt2)
    engine = HFEngine(gpt2, tiny_tokenizer)
    assert isinstance(engine.decoder, TransformersDecoder)
    [group] = engine.generate([PROMPTS[0]], SamplingParams(n=2, max_new_tokens=3, seed=0))
    assert len(group) == 2
    with pytest.raises(ValueError, match="gpt2"):
        HFEngine(gpt2, tiny_tokenizer, decoder="compact")
