"""The policy update: gradients that the packed and the plain forward agree on, rows whose
responses interleave trained and environment tokens, every policy loss, and the correction
for rollouts sampled by another engine."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
from rows import row
from transformers import AutoModelForCausalLM

from openrft.config import AlgoConfig, TrainConfig
from openrft.train.forward import packed_row_logprobs, plain_row_logprobs
from openrft.train.policy import Policy
from openrft.train.update import update_policy
from openrft.types import TrainRow

ROWS = [
    row((5, 6, 7, 8, 9, 10), 3, 1.0),  # prompt (5, 6, 7), completion of 3 tokens
    row((5, 6, 7, 11), 3, -1.0),  # same prompt, 1-token completion
    row((1, 2, 3, 4, 5, 6, 7, 8), 5, 0.5),  # another prompt
    row((5, 6, 7, 12, 13, 14, 15), 3, 0.3),
]
# An episode of two sampled turns around an environment turn, and a trailing one.
EPISODE = row((5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23), 3, 0.7, [1, 1, 0, 0, 0, 1, 1, 0])


def gradient_after_update(tiny_model_dir, rows: list[TrainRow], forward=None, **algo) -> tuple:
    """The policy gradient one update_policy call leaves (SGD at lr 0: weights unchanged)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    reference = copy.deepcopy(model) if algo.get("kl_coef") else None
    policy = Policy(model=model, tokenizer=None, uses_lora=False, frozen_reference=reference)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    stats = update_policy(
        policy,
        rows,
        optimizer,
        scheduler,
        AlgoConfig(**algo),
        TrainConfig(max_grad_norm=0.0, micro_batch_size=2),
        max_completion_tokens=8,
        forward=forward or packed_row_logprobs,
    )
    grad = model.model.layers[0].self_attn.q_proj.weight.grad
    return (torch.zeros(0) if grad is None else grad.clone()), stats


@pytest.mark.parametrize("loss", ["ppo", "gspo", "cispo", "importance_sampling"])
def test_the_packed_and_plain_forwards_give_the_same_update(tiny_model_dir, loss):
    rows = [*ROWS, EPISODE]
    packed, packed_stats = gradient_after_update(tiny_model_dir, rows, policy_loss=loss)
    plain, plain_stats = gradient_after_update(
        tiny_model_dir, rows, plain_row_logprobs, policy_loss=loss
    )
    torch.testing.assert_close(packed, plain, rtol=1e-6, atol=1e-9)
    assert packed.abs().sum() > 0
    assert packed_stats.trained_tokens == plain_stats.trained_tokens == 3 + 1 + 3 + 4 + 4
    assert packed_stats.entropy == pytest.approx(plain_stats.entropy, rel=1e-6)


def test_untrained_tokens_carry_no_gradient_and_count_in_no_normaliser(tiny_model_dir):
    # The episode's environment tokens are context: changing them changes the trained
    # tokens' log-probs, but they are never targets. Two rows that hold only the episode's
    # sampled turns, with the environment turn as their context, give the same gradient.
    episode_grad, stats = gradient_after_update(tiny_model_dir, [EPISODE])
    assert stats.trained_tokens == 4
    first_turn = row((5, 6, 7, 16, 17), 3, 0.7)
    second_turn = row((5, 6, 7, 16, 17, 18, 19, 20, 21, 22), 8, 0.7)
    # token_mean: each row alone is normalised by its 2 tokens; the episode by 4.
    first_grad, _ = gradient_after_update(tiny_model_dir, [first_turn])
    second_grad, _ = gradient_after_update(tiny_model_dir, [second_turn])
    torch.testing.assert_close(episode_grad, (first_grad + second_grad) / 2)


def test_kl_and_entropy_terms_count_only_trained_tokens(tiny_model_dir):
    _, with_env = gradient_after_update(
        tiny_model_dir, [EPISODE], plain_row_logprobs, kl_coef=0.1, entropy_coef=0.01
    )
    _, packed = gradient_after_update(tiny_model_dir, [EPISODE], kl_coef=0.1, entropy_coef=0.01)
    assert with_env.kl == pytest.approx(0.0, abs=1e-12)  # the reference is the policy itself
    assert with_env.entropy == pytest.approx(packed.entropy, rel=1e-6)


def test_rows_without_signal_need_no_forward(tiny_model_dir):
    flat = [replace(r, advantages=(0.0,) * len(r.advantages)) for r in ROWS]
    gradient, stats = gradient_after_update(tiny_model_dir, flat)
    assert stats.trained_sequences == 0 and stats.optimizer_steps == 0
    assert torch.count_nonzero(gradient) == 0


# -- rollouts sampled by another engine (vLLM): the mismatch correction ---------------------


def with_sampler_logprobs(tiny_model_dir, shift: float) -> list[TrainRow]:
    """ROWS with the engine's log-probs set to the trainer's plus `shift` on every token."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    with torch.no_grad():
        out = packed_row_logprobs(model, ROWS, 4, with_entropy=False)
    return [
        replace(
            one,
            sampler_logprobs=tuple((out.logprobs_B_T[b] + shift)[out.mask_B_T[b] > 0].tolist()),
        )
        for b, one in enumerate(ROWS)
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


def test_unreported_tokens_inside_a_row_keep_weight_one(tiny_model_dir):
    # A row whose engine reported only some tokens (NaN elsewhere, as environment tokens
    # are): the reported ones are weighted, the others not.
    shifted = with_sampler_logprobs(tiny_model_dir, -0.5)[0]
    partial = replace(shifted, sampler_logprobs=(shifted.sampler_logprobs[0], math.nan, math.nan))
    _, stats = gradient_after_update(tiny_model_dir, [partial])
    assert abs(stats.sampler_weight - math.exp(0.5)) < 1e-9
    assert abs(stats.sampler_kl + 0.5) < 1e-9
