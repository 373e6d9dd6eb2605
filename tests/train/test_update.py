"""The update's log-probs: shared-prompt computation must equal a plain full forward, in
values and in gradients; zero-advantage rows need no forward."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from transformers import AutoModelForCausalLM

from openrft.config import AlgoConfig, TrainConfig
from openrft.train.policy import Policy
from openrft.train.update import TrainRow, sequence_logprobs, train_rows, update_policy
from openrft.types import Completion, Example, Grade, RolloutGroup

ROWS = [
    TrainRow((5, 6, 7, 8, 9, 10), 3, 1.0),  # prompt (5, 6, 7), completion of 3 tokens
    TrainRow((5, 6, 7, 11), 3, -1.0),  # same prompt, 1-token completion
    TrainRow((1, 2, 3, 4, 5, 6, 7, 8), 5, 0.5),  # another prompt
    TrainRow((5, 6, 7, 12, 13, 14, 15), 3, 0.3),
]


def plain_logprobs(model, row: TrainRow) -> torch.Tensor:
    logprobs_L_V = model(torch.tensor([row.token_ids])).logits[0].log_softmax(-1)
    positions = range(row.prompt_length, len(row.token_ids))
    return torch.stack([logprobs_L_V[t - 1, row.token_ids[t]] for t in positions])


def test_shared_prompt_logprobs_equal_a_full_forward(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    logprobs_B_T, entropy_B_T, mask_B_T = sequence_logprobs(model, ROWS, 4, with_entropy=True)
    assert mask_B_T.sum(1).tolist() == [3, 1, 3, 4]
    for b, row in enumerate(ROWS):
        expected = plain_logprobs(model, row)
        torch.testing.assert_close(logprobs_B_T[b, : len(expected)], expected)
        assert (entropy_B_T[b, : len(expected)] > 0).all()
        assert (logprobs_B_T[b, len(expected) :] == 0).all()  # padding stays zero


def test_shared_prompt_gradients_equal_a_full_forward(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    weight = model.model.layers[0].self_attn.q_proj.weight
    logprobs_B_T, _, mask_B_T = sequence_logprobs(model, ROWS, 4, with_entropy=False)
    (logprobs_B_T * mask_B_T).sum().backward()
    shared = weight.grad.clone()
    model.zero_grad()
    sum(plain_logprobs(model, row).sum() for row in ROWS).backward()
    # RMSNorm computes in float32 inside a float64 model, hence the tolerance.
    torch.testing.assert_close(shared, weight.grad, rtol=1e-6, atol=1e-8)


def test_failed_and_truncated_rows_are_left_out():
    example = Example(id="e", messages=({"role": "user", "content": "hi"},))
    completions = [
        Completion((4, 2), "a", "stop"),
        Completion((4, 4), "b", "length"),
        Completion((5, 2), "c", "stop"),
    ]
    grades = [Grade(1.0), Grade(0.0), Grade.failed("runtime_error", "boom")]
    group = RolloutGroup(example, (1, 2, 3), completions, grades, [1.0, -1.0, float("nan")])
    assert [r.token_ids for r in train_rows([group], mask_truncated=False)] == [
        (1, 2, 3, 4, 2),
        (1, 2, 3, 4, 4),
    ]
    assert [r.token_ids for r in train_rows([group], mask_truncated=True)] == [(1, 2, 3, 4, 2)]


# -- rollouts sampled by another engine (vLLM): the mismatch correction ---------------------


def gradient_after_update(tiny_model_dir, rows: list[TrainRow], **algo) -> tuple:
    """The policy gradient one update_policy call leaves (SGD at lr 0: weights unchanged)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    policy = Policy(model=model, tokenizer=None, uses_lora=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    stats = update_policy(
        policy,
        rows,
        optimizer,
        scheduler,
        AlgoConfig(**algo),
        TrainConfig(max_grad_norm=0.0),
        max_completion_tokens=8,
    )
    return model.model.layers[0].self_attn.q_proj.weight.grad.clone(), stats


def with_sampler_logprobs(tiny_model_dir, shift: float) -> list[TrainRow]:
    """ROWS with the engine's log-probs set to the trainer's plus `shift` on every token."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    with torch.no_grad():
        logprobs_B_T, _, mask_B_T = sequence_logprobs(model, ROWS, 4, with_entropy=False)
    return [
        replace(row, sampler_logprobs=tuple((logprobs_B_T[b] + shift)[mask_B_T[b] > 0].tolist()))
        for b, row in enumerate(ROWS)
    ]


def test_matching_sampler_logprobs_leave_the_gradient_as_it_is(tiny_model_dir):
    plain, plain_stats = gradient_after_update(tiny_model_dir, ROWS)
    assert plain_stats.sampler_kl is None  # no engine log-probs: nothing measured
    matched, stats = gradient_after_update(tiny_model_dir, with_sampler_logprobs(tiny_model_dir, 0))
    torch.testing.assert_close(matched, plain)
    assert abs(stats.sampler_kl) < 1e-9 and abs(stats.sampler_weight - 1) < 1e-9
    assert stats.sampler_corrected == 0


def test_a_sampler_less_sure_than_the_trainer_is_truncated_or_masked(tiny_model_dir):
    # The engine gave every token e^-1 of the trainer's probability: ratio e > cap 2.
    rows = with_sampler_logprobs(tiny_model_dir, -1.0)
    plain, _ = gradient_after_update(tiny_model_dir, ROWS)
    truncated, stats = gradient_after_update(tiny_model_dir, rows, sampler_correction_cap=2.0)
    torch.testing.assert_close(truncated, 2.0 * plain)  # every token weighted by the cap
    assert abs(stats.sampler_kl + 1.0) < 1e-6 and abs(stats.sampler_weight - 2.0) < 1e-9
    assert stats.sampler_corrected == 1.0
    masked, stats = gradient_after_update(tiny_model_dir, rows, sampler_correction="mask")
    assert torch.count_nonzero(masked) == 0 and stats.sampler_weight == 0.0
    off, stats = gradient_after_update(tiny_model_dir, rows, sampler_correction="off")
    torch.testing.assert_close(off, plain)
    assert stats.sampler_corrected == 0 and abs(stats.sampler_kl + 1.0) < 1e-6


def test_rows_without_engine_logprobs_keep_weight_one(tiny_model_dir):
    # Inside the cap, truncation is the plain ratio: e^0.5 on the rows that report, 1 elsewhere.
    shifted = with_sampler_logprobs(tiny_model_dir, -0.5)
    mixed = [shifted[0], ROWS[1], ROWS[2], shifted[3]]
    weighted = [ROWS[0], ROWS[3]]
    gradient, stats = gradient_after_update(tiny_model_dir, mixed)
    reported, _ = gradient_after_update(tiny_model_dir, weighted)
    unreported, _ = gradient_after_update(tiny_model_dir, [ROWS[1], ROWS[2]])
    # token_mean divides by the whole batch's tokens: 3 + 4 of 11 and 1 + 3 of 11.
    expected = math.exp(0.5) * reported * 7 / 11 + unreported * 4 / 11
    torch.testing.assert_close(gradient, expected)
    assert abs(stats.sampler_weight - math.exp(0.5)) < 1e-9  # over the reporting tokens only
