"""Hand-computed checks of the policy losses (ppo, gspo, cispo, importance_sampling): values,
gradients, clip indicators; and of the sampler corrections, KL estimators, aggregation and
masked_mean."""

from __future__ import annotations

import math

import pytest
import torch

from openrft.algo import (
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    aggregate_loss,
    cispo,
    gspo,
    importance_sampling,
    kl_k1,
    kl_k3,
    lookup,
    masked_mean,
    ppo,
    sampler_correction_weights,
    sampler_weights_mask,
    sampler_weights_off,
    sampler_weights_truncate,
)

E_HALF = math.exp(0.5)  # 1.64872
E_MINUS_HALF = math.exp(-0.5)  # 0.60653


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# --- ppo -------------------------------------------------------------------------------------


def _clip_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # Log-ratios per token [0.5, -0.5, log 1.25, 0] -> ratios [e^0.5, e^-0.5, 1.25, 1].
    # clip_low 0.2, clip_high 0.28 -> clip range [0.8, 1.28]; 1.25 is inside only because
    # the range is asymmetric (a symmetric 0.2 would clip it at 1.2).
    # Advantage +1 on every token of row 0, -1 on every token of row 1.
    log_ratio = torch.tensor([0.5, -0.5, math.log(1.25), 0.0], dtype=torch.float64)
    old = torch.full((2, 4), -1.0, dtype=torch.float64)
    logprobs = (old + log_ratio).requires_grad_(True)
    advantages = t([[1.0] * 4, [-1.0] * 4])
    return logprobs, old, advantages, torch.ones(2, 4)


def test_ppo_values_and_indicator() -> None:
    logprobs, old, advantages, mask = _clip_case()
    loss, clipped = ppo(logprobs, old, advantages, mask, clip_low=0.2, clip_high=0.28)
    # A = +1: min(r, clip(r)):
    #   r = e^0.5 = 1.6487 > 1.28 -> min(1.6487, 1.28) = 1.28, loss -1.28, CLIPPED
    #   r = e^-0.5 = 0.6065 < 0.8 -> min(0.6065, 0.8) = 0.6065, loss -0.6065 (not clipped)
    #   r = 1.25 in range -> loss -1.25;  r = 1 -> loss -1
    # A = -1: min(-r, -clip(r)):
    #   r = 1.6487 -> min(-1.6487, -1.28) = -1.6487, loss 1.6487 (not clipped)
    #   r = 0.6065 -> min(-0.6065, -0.8) = -0.8, loss 0.8, CLIPPED
    #   r = 1.25 -> loss 1.25;  r = 1 -> loss 1
    expected_loss = t([[-1.28, -E_MINUS_HALF, -1.25, -1.0], [E_HALF, 0.8, 1.25, 1.0]])
    expected_clipped = t([[1, 0, 0, 0], [0, 1, 0, 0]])
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(clipped, expected_clipped)


def test_ppo_clipped_tokens_have_zero_gradient() -> None:
    logprobs, old, advantages, mask = _clip_case()
    loss, _ = ppo(logprobs, old, advantages, mask, clip_low=0.2, clip_high=0.28)
    loss.sum().backward()
    # d(-r * A)/d logp = -r * A on unclipped tokens; 0 where the clipped constant was chosen.
    # A = +1: [0, -e^-0.5, -1.25, -1];  A = -1: [e^0.5, 0, 1.25, 1].
    expected = t([[0, -E_MINUS_HALF, -1.25, -1.0], [E_HALF, 0, 1.25, 1.0]])
    assert logprobs.grad is not None
    torch.testing.assert_close(logprobs.grad, expected)


def test_ppo_symmetric_clip_would_clip_ratio_1_25() -> None:
    # Same case, clip_high 0.2: r = 1.25 > 1.2 with A = +1 -> loss -1.2 and clipped.
    logprobs, old, advantages, mask = _clip_case()
    loss, clipped = ppo(logprobs, old, advantages, mask, clip_low=0.2, clip_high=0.2)
    assert loss[0, 2].item() == pytest.approx(-1.2)
    assert clipped[0, 2].item() == 1.0
    assert clipped[1, 2].item() == 0.0  # A = -1: min(-1.25, -1.2) = -1.25, unclipped


def test_ppo_zero_advantage_is_never_clipped() -> None:
    logprobs, old, _, mask = _clip_case()
    zeros = torch.zeros(2, 4, dtype=torch.float64)
    loss, clipped = ppo(logprobs, old, zeros, mask, 0.2, 0.2)
    assert torch.equal(loss.abs(), zeros)
    assert torch.equal(clipped, zeros)


# --- gspo ------------------------------------------------------------------------------------


def _gspo_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # Row 0: log-ratios [0.3, -0.1, 5.0], the third token masked out (junk 5.0).
    # Row 1: log-ratios [0.5, 0.5, 0.5].  Row 2: log-ratios [-0.5, -0.5, 0].
    log_ratio = t([[0.3, -0.1, 5.0], [0.5, 0.5, 0.5], [-0.5, -0.5, 0.0]])
    old = torch.full((3, 3), -2.0, dtype=torch.float64)
    logprobs = (old + log_ratio).requires_grad_(True)
    advantages = t([[1, -2, 1], [1, 1, 1], [-1, -1, -1]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.float64)
    return logprobs, old, advantages, mask


def test_gspo_values_gradient_and_indicator() -> None:
    logprobs, old, advantages, mask = _gspo_case()
    loss, clipped = gspo(logprobs, old, advantages, mask, clip_low=0.2, clip_high=0.28)
    # Sequence ratios s_b = exp(mean of the masked-in log-ratios), clip range [0.8, 1.28]:
    #   row 0: (0.3 - 0.1) / 2 = 0.1 -> s = e^0.1 = 1.1052, inside (the 5.0 is not counted)
    #   row 1: 0.5 -> s = e^0.5 = 1.6487 > 1.28
    #   row 2: (-0.5 - 0.5 + 0) / 3 = -1/3 -> s = e^(-1/3) = 0.7165 < 0.8
    # Every token's ratio has the value s_b; loss = -min(s A, clip(s) A):
    #   row 0, A [1, -2, 1]: [-s, 2s, -s], none clipped
    #   row 1, A = 1: min(1.6487, 1.28) = 1.28 -> loss -1.28, all clipped
    #   row 2, A = -1: min(-0.7165, -0.8) = -0.8 -> loss 0.8, all clipped
    s = math.exp(0.1)
    expected = t([[-s, 2 * s, -s], [-1.28] * 3, [0.8] * 3])
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(clipped, t([[0, 0, 0], [1, 1, 1], [1, 1, 1]]))
    # Gradient of the masked sum: d loss_bt / d logp_bt = -s_b * A_bt where unclipped (the
    # token form: s_bt = sg(s_b) * exp(logp - sg(logp)), so d s_bt / d logp_bt = s_b and no
    # token's gradient reaches another's); 0 where clipped and on the masked-out token.
    (loss * mask).sum().backward()
    assert logprobs.grad is not None
    torch.testing.assert_close(logprobs.grad, t([[-s, 2 * s, 0], [0, 0, 0], [0, 0, 0]]))


def test_gspo_ignores_masked_out_tokens() -> None:
    logprobs, old, advantages, mask = _gspo_case()
    other = logprobs.detach().clone()
    other[0, 2] = -40.0  # junk log-ratio -38 instead of 5 on the masked-out token
    first, _ = gspo(logprobs, old, advantages, mask, 0.2, 0.28)
    second, _ = gspo(other, old, advantages, mask, 0.2, 0.28)
    keep = mask.bool()
    torch.testing.assert_close(first.detach()[keep], second[keep])


def test_gspo_row_without_tokens_is_finite() -> None:
    # No masked-in token: ratio exp(0 / max(0, 1)) = 1, loss -A, no NaN in loss or gradient.
    logprobs = t([[-1.0, -3.0]]).requires_grad_(True)
    mask = torch.zeros(1, 2)
    loss, clipped = gspo(logprobs, t([[-2.0, -1.0]]), t([[2.0, 2.0]]), mask, 0.2, 0.2)
    torch.testing.assert_close(loss, t([[-2.0, -2.0]]))
    assert torch.equal(clipped, torch.zeros(1, 2, dtype=torch.float64))
    loss.sum().backward()
    assert logprobs.grad is not None and torch.isfinite(logprobs.grad).all()


# --- cispo and importance_sampling ------------------------------------------------------------


def _weight_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # pi [0.5, 0.1, 0.5, 0.9] over pi_old [0.25, 0.2, 0.4, 0.1]: ratios r = [2, 0.5, 1.25, 9].
    logprobs = torch.log(t([[0.5, 0.1, 0.5, 0.9]])).requires_grad_(True)
    old = torch.log(t([[0.25, 0.2, 0.4, 0.1]]))
    return logprobs, old, t([[1, -1, 2, 1]]), torch.ones(1, 4)


def test_cispo_by_hand() -> None:
    logprobs, old, advantages, mask = _weight_case()
    loss, clipped = cispo(logprobs, old, advantages, mask, clip_low=0.2, clip_high=0.28)
    # Weights w = clip(r, 0.8, 1.28) = [1.28, 0.8, 1.25, 1.28]; clipped: r outside -> [1,1,0,1].
    # loss = -w A logp: [-1.28 * 1 * log 0.5, -0.8 * -1 * log 0.1, -1.25 * 2 * log 0.5,
    #   -1.28 * 1 * log 0.9] = [1.28 ln2, -0.8 ln10, 2.5 ln2, 1.28 ln(10/9)].
    ln2, ln10 = math.log(2.0), math.log(10.0)
    expected = t([[1.28 * ln2, -0.8 * ln10, 2.5 * ln2, 1.28 * math.log(10 / 9)]])
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(clipped, t([[1, 1, 0, 1]]))
    # The weight carries no gradient, and every token keeps one: d loss / d logp = -w A
    #   = [-1.28, 0.8, -2.5, -1.28] (PPO would give 0 on the three clipped tokens).
    loss.sum().backward()
    assert logprobs.grad is not None
    torch.testing.assert_close(logprobs.grad, t([[-1.28, 0.8, -2.5, -1.28]]))


def test_cispo_wide_range_of_the_paper() -> None:
    logprobs, old, advantages, mask = _weight_case()
    # clip_low 1.0, clip_high 5.0 -> weights clip(r, 0, 6) = [2, 0.5, 1.25, 6]; only 9 clipped.
    # d loss / d logp = -w A = [-2, 0.5, -2.5, -6].
    loss, clipped = cispo(logprobs, old, advantages, mask, clip_low=1.0, clip_high=5.0)
    torch.testing.assert_close(clipped, t([[0, 0, 0, 1]]))
    loss.sum().backward()
    assert logprobs.grad is not None
    torch.testing.assert_close(logprobs.grad, t([[-2.0, 0.5, -2.5, -6.0]]))


def test_importance_sampling_by_hand() -> None:
    logprobs, old, advantages, mask = _weight_case()
    loss, truncated = importance_sampling(logprobs, old, advantages, mask, 0.2, 0.28)
    # w = min(r, 1.28) = [1.28, 0.5, 1.25, 1.28]: no lower bound, so 0.5 stays (clip_low unused).
    # loss = -w A logp = [1.28 ln2, -0.5 ln10, 2.5 ln2, 1.28 ln(10/9)]; d/d logp = -w A.
    ln2, ln10 = math.log(2.0), math.log(10.0)
    expected = t([[1.28 * ln2, -0.5 * ln10, 2.5 * ln2, 1.28 * math.log(10 / 9)]])
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(truncated, t([[1, 0, 0, 1]]))
    loss.sum().backward()
    assert logprobs.grad is not None
    torch.testing.assert_close(logprobs.grad, t([[-1.28, 0.5, -2.5, -1.28]]))
    # Cap 1 + 1.0 = 2: r = 2 is not above it (only 9 is truncated).
    _, truncated = importance_sampling(logprobs, old, advantages, mask, 0.2, 1.0)
    torch.testing.assert_close(truncated, t([[0, 0, 0, 1]]))


@pytest.mark.parametrize("name", ["ppo", "gspo", "cispo", "importance_sampling"])
def test_on_policy_gradient_is_minus_advantage(name: str) -> None:
    # old == logprobs: every ratio is 1 (gspo's sequence ratio too), nothing is clipped, and
    # d loss / d logp = -1 * A for all four, whatever their loss values.
    gen = torch.Generator().manual_seed(2)
    logprobs = (-torch.rand(3, 5, generator=gen, dtype=torch.float64)).requires_grad_(True)
    advantages = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    loss, clipped = POLICY_LOSSES[name](
        logprobs, logprobs.detach(), advantages, torch.ones(3, 5), 0.2, 0.28
    )
    loss.sum().backward()
    assert logprobs.grad is not None
    torch.testing.assert_close(logprobs.grad, -advantages)
    assert torch.equal(clipped, torch.zeros(3, 5, dtype=torch.float64))


# --- KL estimators ----------------------------------------------------------------------------


def test_kl_estimators_by_hand() -> None:
    # Token 0: pi = 0.5, pi_ref = 0.25. k1 = log 0.5 - log 0.25 = log 2 = 0.6931.
    #   k3: r = pi_ref/pi = 0.5 -> 0.5 - log 0.5 - 1 = 0.5 + 0.6931 - 1 = 0.1931.
    # Token 1: pi = 0.25, pi_ref = 0.5. k1 = -log 2; k3: r = 2 -> 2 - log 2 - 1 = 0.3069.
    # Token 2: pi = pi_ref -> both 0.
    logp = torch.log(t([[0.5, 0.25, 0.3]]))
    ref = torch.log(t([[0.25, 0.5, 0.3]]))
    ln2 = math.log(2.0)
    torch.testing.assert_close(kl_k1(logp, ref), t([[ln2, -ln2, 0.0]]))
    torch.testing.assert_close(kl_k3(logp, ref), t([[0.5 + ln2 - 1, 1 - ln2, 0.0]]))


def test_k3_is_non_negative_and_zero_on_equal() -> None:
    gen = torch.Generator().manual_seed(0)
    logp = torch.randn(8, 16, generator=gen, dtype=torch.float64)
    ref = torch.randn(8, 16, generator=gen, dtype=torch.float64)
    assert (kl_k3(logp, ref) >= 0).all()
    assert torch.equal(kl_k3(logp, logp), torch.zeros_like(logp))


# --- rollout/trainer mismatch correction ----------------------------------------------------


def test_sampler_correction_weights_by_hand() -> None:
    # Trainer (old) probabilities 0.5, 0.25, 0.3, 0.1; the sampler's 0.25, 0.5, 0.3, 0.01.
    # Ratios pi_old / pi_sampler: 2, 0.5, 1, 10. With cap 3:
    #   truncate -> [2, 0.5, 1, 3];  mask (keep 1/3 <= w <= 3) -> [2, 0.5, 1, 0];  off -> 1.
    old = torch.log(t([[0.5, 0.25, 0.3, 0.1]]))
    sampler = torch.log(t([[0.25, 0.5, 0.3, 0.01]]))
    truncate = sampler_correction_weights(old, sampler, "truncate", cap=3.0)
    torch.testing.assert_close(truncate, t([[2.0, 0.5, 1.0, 3.0]]))
    mask = sampler_correction_weights(old, sampler, "mask", cap=3.0)
    torch.testing.assert_close(mask, t([[2.0, 0.5, 1.0, 0.0]]))
    # mask drops a too-small ratio too: 0.1 / 0.5 = 0.2 < 1/3.
    low = sampler_correction_weights(torch.log(t([[0.1]])), torch.log(t([[0.5]])), "mask", 3.0)
    torch.testing.assert_close(low, t([[0.0]]))
    torch.testing.assert_close(sampler_correction_weights(old, sampler, "off", 3.0), t([[1.0] * 4]))
    with pytest.raises(ValueError, match="unknown sampler correction 'clip'"):
        sampler_correction_weights(old, sampler, "clip", 3.0)


def test_sampler_correction_weights_calls_one_function_per_mode() -> None:
    # Same ratios 2, 0.5, 1, 10 as above, each mode's function called directly, cap 3.
    old = torch.log(t([[0.5, 0.25, 0.3, 0.1]]))
    sampler = torch.log(t([[0.25, 0.5, 0.3, 0.01]]))
    torch.testing.assert_close(sampler_weights_truncate(old, sampler, 3.0), t([[2, 0.5, 1, 3]]))
    torch.testing.assert_close(sampler_weights_mask(old, sampler, 3.0), t([[2, 0.5, 1, 0]]))
    torch.testing.assert_close(sampler_weights_off(old, sampler, 3.0), t([[1, 1, 1, 1]]))


@pytest.mark.parametrize("mode", ["truncate", "mask", "off"])
def test_sampler_correction_weights_carry_no_gradient(mode: str) -> None:
    old = torch.log(t([[0.5, 0.2]])).requires_grad_(True)
    weights = sampler_correction_weights(old, torch.log(t([[0.4, 0.4]])), mode, 2.0)
    assert not weights.requires_grad


def test_kl_registry() -> None:
    assert lookup(KL_ESTIMATORS, "k1", "KL estimator") is kl_k1
    assert lookup(KL_ESTIMATORS, "k3", "KL estimator") is kl_k3
    with pytest.raises(ValueError, match="unknown KL estimator 'k2'; choose one of: k1, k3"):
        lookup(KL_ESTIMATORS, "k2", "KL estimator")


# --- aggregation ------------------------------------------------------------------------------

NAN = float("nan")
# Padded positions hold junk (99, NaN) that must never reach the result.
LOSS = t([[1, 2, 3], [4, 6, 99], [8, 99, 99], [NAN, 99, 99]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
# Per sequence: sums [6, 10, 8, 0], token counts [3, 2, 1, 0], means [2, 5, 8, 0 (empty)].
TOTAL_TOKENS = 6.0
TOTAL_SEQUENCES = 4.0
MAX_TOKENS = 5  # deliberately != T = 3
EXPECTED = {
    "token_mean": 24 / 6,  # (6 + 10 + 8) / 6 = 4
    "sequence_mean": 15 / 4,  # (2 + 5 + 8 + 0) / 4 = 3.75
    "constant": 24 / 20,  # 24 / (4 sequences * 5 max tokens) = 1.2
}


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_aggregation_by_hand(mode: str) -> None:
    got = aggregate_loss(LOSS, MASK, mode, TOTAL_TOKENS, TOTAL_SEQUENCES, MAX_TOKENS)
    assert got.dim() == 0
    assert got.item() == pytest.approx(EXPECTED[mode])


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_micro_batches_sum_to_full_batch(mode: str) -> None:
    # Rows [0, 1] then [2, 3], each with the whole batch's normalisers:
    #   token_mean: 16/6 + 8/6 = 4;  sequence_mean: (2+5)/4 + (8+0)/4 = 3.75;
    #   constant: 16/20 + 8/20 = 1.2.
    args = (mode, TOTAL_TOKENS, TOTAL_SEQUENCES, MAX_TOKENS)
    first = aggregate_loss(LOSS[:2], MASK[:2], *args)
    second = aggregate_loss(LOSS[2:], MASK[2:], *args)
    assert (first + second).item() == pytest.approx(EXPECTED[mode])
    assert (first + second).item() == pytest.approx(aggregate_loss(LOSS, MASK, *args).item())


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_micro_batch_gradients_match_full_batch(mode: str) -> None:
    gen = torch.Generator().manual_seed(1)
    loss = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    mask = torch.rand(6, 5, generator=gen) > 0.4
    args = (mode, float(mask.sum()), 6.0, 5)
    full = loss.clone().requires_grad_(True)
    aggregate_loss(full, mask, *args).backward()
    split = loss.clone().requires_grad_(True)
    for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):  # uneven split on purpose
        aggregate_loss(split[rows], mask[rows], *args).backward()
    assert full.grad is not None and split.grad is not None
    torch.testing.assert_close(split.grad, full.grad)


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_all_padding_batch_is_zero_not_nan(mode: str) -> None:
    got = aggregate_loss(t([[NAN, 1.0]]), torch.zeros(1, 2, dtype=torch.bool), mode, 0, 0, 0)
    assert got.item() == 0.0


def test_aggregation_registry_and_unknown_mode() -> None:
    assert set(LOSS_AGGREGATIONS) == set(EXPECTED)
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'; choose one of: "):
        aggregate_loss(LOSS, MASK, "mean", TOTAL_TOKENS, TOTAL_SEQUENCES, MAX_TOKENS)


def test_masked_mean() -> None:
    # values [[1, 2], [3, 4]], mask [[1, 0], [1, 1]] -> (1 + 3 + 4) / 3 = 8/3.
    values = t([[1, 2], [3, 4]])
    mask = torch.tensor([[1, 0], [1, 1]])
    assert masked_mean(values, mask).item() == pytest.approx(8 / 3)
    assert masked_mean(values, torch.zeros(2, 2)).item() == 0.0
