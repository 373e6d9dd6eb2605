"""The packed forward (openrft.fast.packed_attention): rows laid out without padding give the
log-probs and gradients of a plain forward of each row, for grouped and ungrouped heads,
sliding windows, Gemma 2's soft caps, responses that interleave trained and untrained
tokens, and a bf16 base with float32 LoRA adapters under autocast."""

from __future__ import annotations

import math

import peft
import pytest
import torch
from rows import row
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from openrft.compat import peft as peft_internals
from openrft.errors import ModelError
from openrft.fast import packed_attention
from openrft.fast.packed_attention import (
    ATTENTION_NAME,
    pack_rows,
    packed_attention_forward,
    packed_hidden_states,
)
from openrft.train.forward import packed_row_logprobs
from openrft.types import TrainRow

ROWS = [
    row((5, 6, 7, 8, 9, 10), 3, 1.0),  # prompt (5, 6, 7), completion of 3 tokens
    row((5, 6, 7, 11), 3, -1.0),  # same prompt, 1-token completion
    row((1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11), 5, 0.5),  # a longer prompt and completion
    row((5, 6, 7, 12, 13, 14, 15), 3, 0.3),
    # An episode: sampled 16 17, environment 18 19 20, sampled 21 22, environment 23.
    row((5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23), 3, 0.7, [1, 1, 0, 0, 0, 1, 1, 0]),
]


def plain_logprobs(model, row: TrainRow) -> torch.Tensor:
    """The trained tokens' log-probs from a forward of the row alone, in mask order."""
    logprobs_L_V = model(torch.tensor([row.token_ids])).logits[0].float().log_softmax(-1)
    positions = [row.prompt_length + j for j, m in enumerate(row.loss_mask) if m]
    return torch.stack([logprobs_L_V[t - 1, row.token_ids[t]] for t in positions])


def trained(logprobs_B_T: torch.Tensor, b: int, row: TrainRow) -> torch.Tensor:
    """Row b's log-probs at its trained positions."""
    return logprobs_B_T[b, : len(row.loss_mask)][torch.tensor(row.loss_mask)]


@pytest.fixture
def layout(request, monkeypatch):
    """Force one of pack_rows's two layouts: completions in their group's segment, or apart."""
    monkeypatch.setattr(packed_attention, "APART_COST_RATIO", math.inf if request.param else 0.0)
    return request.param


@pytest.mark.parametrize("layout", [False], indirect=True)
def test_segments_layout_by_hand(layout):
    packed = pack_rows(ROWS[:2])
    # One segment: prompt 5 6 7, then row 0's completion but its last token (8 9), then row
    # 1's (nothing: its only token predicts nothing). N = 5 tokens, no padding.
    assert packed.ids_1_N.tolist() == [[5, 6, 7, 8, 9]]
    assert packed.positions_1_N.tolist() == [[0, 1, 2, 3, 4]]
    assert packed.predictor_N.tolist() == [2, 3, 4, 2]  # row 0: 8 9 10; row 1: 11
    assert packed.completion_slots_Nc.numel() == 0
    packed = pack_rows([ROWS[1], ROWS[2]])
    # Two segments, 3 and 10 tokens: the first padded to 10 for attention only.
    assert packed.ids_1_N.shape == (1, 13) and packed.segment_allowed_U_S_S.shape == (2, 10, 10)
    assert packed.segment_slots_Ns.tolist() == [0, 1, 2, *range(10, 20)]
    allowed = packed.segment_allowed_U_S_S[0]
    assert not allowed[:3, 3:].any()  # no real token attends to padding
    assert allowed.diagonal().all()  # every padding slot attends at least to itself
    packed = pack_rows([ROWS[0], ROWS[3]])
    # Tokens: 5 6 7 | 8 9 (row 0) | 12 13 14 (row 1); positions restart after the prompt.
    assert packed.positions_1_N.tolist() == [[0, 1, 2, 3, 4, 3, 4, 5]]
    allowed = packed.segment_allowed_U_S_S[0].int().tolist()
    assert allowed[4] == [1, 1, 1, 1, 1, 0, 0, 0]  # row 0's second token
    assert allowed[7] == [1, 1, 1, 0, 0, 1, 1, 1]  # row 1's third token


@pytest.mark.parametrize("layout", [True], indirect=True)
def test_apart_layout_by_hand(layout):
    packed = pack_rows([ROWS[1], ROWS[2]])
    # Prompts of 3 and 5 tokens, then completions of 0 and 5, padded to (2, 5) and (2, 5).
    assert packed.ids_1_N.tolist() == [[5, 6, 7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
    assert packed.segment_slots_Ns.tolist() == [0, 1, 2, 5, 6, 7, 8, 9]
    assert packed.completion_slots_Nc.tolist() == [5, 6, 7, 8, 9]
    assert packed.predictor_N.tolist() == [2, 7, 8, 9, 10, 11, 12]
    empty_row = packed.completion_allowed_R_C_K[0].int()  # all padding: each sees itself
    assert empty_row.tolist() == [[0] * 5 + [int(j == i) for j in range(5)] for i in range(5)]
    packed = pack_rows([ROWS[0], ROWS[3]])
    # Tokens: 5 6 7 | 8 9 (row 0) | 12 13 14 (row 1), each row in a slot of the group.
    assert packed.positions_1_N.tolist() == [[0, 1, 2, 3, 4, 3, 4, 5]]
    assert packed.completion_positions_R_C.tolist() == [[3, 4, 0], [3, 4, 5]]
    # Keys of a completion: the prompt's 3 slots, then its own 3.
    allowed = packed.completion_allowed_R_C_K.int().tolist()
    assert allowed[0][1] == [1, 1, 1, 1, 1, 0]  # row 0's second token
    assert allowed[0][2] == [0, 0, 0, 0, 0, 1]  # row 0's padding slot: only itself
    assert allowed[1][2] == [1, 1, 1, 1, 1, 1]  # row 1's third token
    assert packed.segment_allowed_U_S_S[0].int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]


@pytest.mark.parametrize("layout", [True], indirect=True)
def test_apart_with_only_one_token_completions_has_no_completion_batch(layout):
    # Their only tokens are predicted by the prompt's last state: nothing attends apart.
    model = tiny(LlamaConfig, LlamaForCausalLM)
    rows = [ROWS[1], row((5, 6, 7, 12), 3, 1.0)]
    assert pack_rows(rows).completion_slots_Nc.numel() == 0
    logprobs_B_T = packed_row_logprobs(model, rows, 4, with_entropy=False).logprobs_B_T
    for b, one in enumerate(rows):
        torch.testing.assert_close(logprobs_B_T[b, :1], plain_logprobs(model, one).double())


def test_long_completions_go_apart_and_short_ones_stay():
    def group(prompt_length, completion_length):
        prompt = tuple(range(1, prompt_length + 1))
        return [row(prompt + (7,) * completion_length, prompt_length, 1.0)] * 8

    # A 150-token prompt and 8 x 256: one segment of 2190 computes 5.7x the scores.
    assert pack_rows(group(150, 256)).completion_slots_Nc.numel() == 8 * 255
    # A 60-token prompt and 8 x 16: apart, 8 x 15 queries cost 8 blocks of 32 (0.67x).
    assert pack_rows(group(60, 16)).completion_slots_Nc.numel() == 0


def tiny(config_class, model_class, **overrides):
    config = config_class(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=overrides.pop("num_key_value_heads", 2),
        max_position_embeddings=64,
        **overrides,
    )
    torch.manual_seed(0)
    return model_class(config).to(torch.float64)


def softcapped_gemma2():
    """Gemma 2 with caps that bend its scores and logits: leaving out either cap moves the
    log-probs by far more than the test's tolerance."""
    model = tiny(
        Gemma2Config,
        Gemma2ForCausalLM,
        head_dim=8,
        sliding_window=3,
        attn_logit_softcapping=0.5,
        final_logit_softcapping=2.0,
    )
    with torch.no_grad():
        for layer in model.model.layers:  # scores of size ~1, where a cap of 0.5 bites
            layer.self_attn.q_proj.weight.mul_(10)
            layer.self_attn.k_proj.weight.mul_(10)
    return model


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(lambda: tiny(LlamaConfig, LlamaForCausalLM), id="grouped-heads"),
        pytest.param(
            lambda: tiny(LlamaConfig, LlamaForCausalLM, num_key_value_heads=4), id="plain-heads"
        ),
        pytest.param(
            lambda: tiny(
                Qwen2Config,
                Qwen2ForCausalLM,
                use_sliding_window=True,
                sliding_window=3,
                layer_types=["sliding_attention", "full_attention"],
            ),
            id="sliding-window",
        ),
        pytest.param(lambda: softcapped_gemma2(), id="softcapped-gemma2"),
    ],
)
@pytest.mark.parametrize("device_paths", ["cpu", "other"])
@pytest.mark.parametrize("layout", [False, True], ids=["segments", "apart"], indirect=True)
def test_logprobs_and_gradients_equal_a_plain_forward_of_each_row(
    model, device_paths, layout, monkeypatch
):
    if device_paths == "other":  # the paths CUDA takes: heads repeated, attention in its dtype
        monkeypatch.setattr(packed_attention, "GROUPED_HEADS_DEVICES", set())
        monkeypatch.setattr(packed_attention, "FLOAT32_ATTENTION_DEVICES", set())
    model = model()
    out = packed_row_logprobs(model, ROWS, 4, with_entropy=False)
    for b, one in enumerate(ROWS):
        torch.testing.assert_close(
            trained(out.logprobs_B_T, b, one), plain_logprobs(model, one).double()
        )
    assert out.logprobs_B_T[4, 2:5].eq(0).all() and out.mask_B_T[4].tolist() == [
        1,
        1,
        0,
        0,
        0,
        1,
        1,
        0,
    ]
    weight = model.model.layers[0].self_attn.k_proj.weight
    (out.logprobs_B_T * out.mask_B_T).sum().backward()
    packed_grad = weight.grad.clone()
    model.zero_grad()
    sum(plain_logprobs(model, one).sum() for one in ROWS).backward()
    torch.testing.assert_close(packed_grad, weight.grad, rtol=1e-6, atol=1e-8)
    assert model.config._attn_implementation != ATTENTION_NAME  # switched back afterwards


@pytest.mark.parametrize("layout", [False, True], ids=["segments", "apart"], indirect=True)
def test_bf16_base_with_float32_lora_runs_under_autocast(tiny_model_dir, layout):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False
    )
    lora = peft.get_peft_model(model, config, autocast_adapter_dtype=True).get_base_model()
    adapter = lora.model.layers[0].mlp.down_proj.lora_B["default"].weight
    assert adapter.dtype == torch.float32 and adapter.requires_grad
    rows = [row(tuple(range(10, 30)), 12, 1.0), row(tuple(range(10, 25)), 12, -1.0)]
    out = packed_row_logprobs(lora, rows, 4, with_entropy=False)
    assert out.logprobs_B_T.dtype == torch.float32
    for b, one in enumerate(rows):  # bf16 rounding apart, the plain forward's values
        expected = plain_logprobs(lora, one)
        torch.testing.assert_close(trained(out.logprobs_B_T, b, one), expected, atol=0.1, rtol=0)
    (out.logprobs_B_T * out.mask_B_T).sum().backward()
    assert adapter.grad is not None and adapter.grad.dtype == torch.float32
    assert adapter.grad.abs().sum() > 0


def test_lora_adapters_run_as_one_addmm_with_the_plain_values_and_gradients(monkeypatch):
    model = tiny(LlamaConfig, LlamaForCausalLM)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False
    )
    lora = peft.get_peft_model(model, config).get_base_model()
    calls = []
    fused = peft_internals._OneAddmmLora.forward
    monkeypatch.setattr(
        peft_internals._OneAddmmLora, "forward", lambda *a, **k: calls.append(1) or fused(*a, **k)
    )
    out = packed_row_logprobs(lora, ROWS, 4, with_entropy=False)
    logprobs_B_T, mask_B_T = out.logprobs_B_T, out.mask_B_T
    assert len(calls) == 2 * 7  # every adapted projection of both layers
    adapter = lora.model.layers[1].mlp.up_proj
    assert not adapter.lora_variant  # taken out again: plain peft outside the packed forward
    (logprobs_B_T * mask_B_T).sum().backward()
    packed_grad = adapter.lora_A["default"].weight.grad.clone()
    lora.zero_grad()
    for b, one in enumerate(ROWS):
        torch.testing.assert_close(
            trained(logprobs_B_T, b, one), plain_logprobs(lora, one).double()
        )
    sum(plain_logprobs(lora, one).sum() for one in ROWS).backward()
    torch.testing.assert_close(packed_grad, adapter.lora_A["default"].weight.grad)


def test_the_attention_function_refuses_to_run_outside_a_packed_forward():
    model = tiny(LlamaConfig, LlamaForCausalLM)
    query = torch.zeros(1, 4, 3, 8)
    with pytest.raises(ModelError, match="only inside packed_hidden_states"):
        packed_attention_forward(model.model.layers[0].self_attn, query, query, query, None)


def test_the_attention_implementation_is_restored_after_an_error():
    model = tiny(LlamaConfig, LlamaForCausalLM)
    before = model.config._attn_implementation
    packed = pack_rows(ROWS)
    bad = type(packed)(**{**packed.__dict__, "ids_1_N": packed.ids_1_N + 1000})  # out of vocab
    with pytest.raises(IndexError):
        packed_hidden_states(model, bad)
    assert model.config._attn_implementation == before
