"""The update's forward: which one a job uses (`train.fast_paths`), why, and the plain path on
an architecture no fast path was written for."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from openrft.compat import transformers as transformers_internals
from openrft.fast import packed_attention
from openrft.train import forward
from openrft.train.forward import (
    choose_forward,
    packed_row_logprobs,
    plain_row_logprobs,
    probe_rows,
    sequence_logprobs,
)
from openrft.train.loop import train

from .helpers import tiny_job

PROBE = list(range(3, 27))


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def test_auto_picks_the_packed_forward_after_it_agrees_with_the_plain_one():
    chosen, why = choose_forward(tiny_llama(), True, PROBE, 8)
    assert chosen is packed_row_logprobs and why.startswith("packed forward")


def test_off_picks_the_plain_forward():
    chosen, why = choose_forward(tiny_llama(), False, PROBE, 8)
    assert chosen is plain_row_logprobs and "fast_paths = off" in why


def test_an_untested_library_version_falls_back_with_the_reason(monkeypatch):
    problem = "transformers 9.0.0 is not a version openrft's fast paths were written for"
    monkeypatch.setattr(transformers_internals, "PROBLEM", problem)
    chosen, why = choose_forward(tiny_llama(), True, PROBE, 8)
    assert chosen is plain_row_logprobs and problem in why


def test_a_packed_forward_that_disagrees_on_the_probe_is_not_used(monkeypatch):
    # A model whose logits the packed path would not transform as the model does.
    real = forward.packed_row_logprobs

    def off_by_a_little(*args, **kwargs):
        out = real(*args, **kwargs)
        return type(out)(out.logprobs_B_T + 0.05, out.entropy_B_T, out.mask_B_T)

    monkeypatch.setattr(forward, "packed_row_logprobs", off_by_a_little)
    chosen, why = choose_forward(tiny_llama(), True, PROBE, 8)
    assert chosen is plain_row_logprobs and "differs from it by 0.05" in why


def test_a_model_that_scales_its_logits_is_trained_by_the_plain_path():
    model = tiny_llama()
    model.config.logits_scaling = 4.0  # Granite divides its logits by this
    chosen, why = choose_forward(model, True, PROBE, 8)
    assert chosen is plain_row_logprobs and "logits_scaling" in why


def test_the_probe_rows_hold_an_episode_with_untrained_tokens():
    rows = probe_rows(PROBE)
    assert rows[0].prompt_length == 12 and not all(rows[0].loss_mask)
    assert all(rows[1].loss_mask)
    short = probe_rows(PROBE[:5])  # repeated to 12 tokens
    assert short[0].token_ids == tuple(PROBE[:5] * 3)[:12]
    with pytest.raises(ValueError, match="at least one token"):
        probe_rows([])


def test_sequence_logprobs_is_a_plain_forward_of_the_sequence():
    model = tiny_llama().double()
    ids = torch.tensor([PROBE])
    expected = model(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
    torch.testing.assert_close(sequence_logprobs(model, PROBE), expected)
    assert model.training  # the mode it came in with


def tiny_gpt2_dir(tmp_path, tokenizer):
    """A tiny GPT-2: learned positions, Conv1D projections (LoRA with fan_in_fan_out), a
    fused qkv: no fast path here was written for it."""
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path / "gpt2"
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("fast_paths", ["auto", "off"])
def test_a_gpt2_job_trains_where_the_compact_decoder_does_not_apply(
    tmp_path, tiny_tokenizer, fast_paths
):
    model_dir = tiny_gpt2_dir(tmp_path, tiny_tokenizer)
    config = tiny_job(
        tmp_path, model_dir, "train.max_steps=2", f"train.fast_paths={fast_paths}",
        "lora.target_modules=[\"c_attn\", \"c_proj\", \"c_fc\"]",
    )  # fmt: skip
    summary = train(config, tmp_path / "run", show_progress=False)
    assert summary.steps == 2
    described = json.loads((tmp_path / "run" / "summary.json").read_text())["fast_paths"]
    assert "compact decoder" not in described.split("rollouts:")[1].split("(")[0]
    if fast_paths == "off":
        assert described.startswith("update: plain forward") and "plain decoder" in described
    before = AutoModelForCausalLM.from_pretrained(model_dir)
    assert before.config.model_type == "gpt2"
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").exists()


def test_the_packed_attention_names_what_it_cannot_train():
    model = tiny_llama()
    assert packed_attention.unsupported_reason(model) is None
    model.config.is_encoder_decoder = True
    assert packed_attention.unsupported_reason(model) == "an encoder-decoder model"
