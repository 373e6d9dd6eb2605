"""Hand-computed checks of the advantage estimators (grpo, drgrpo, rloo, reinforce_pp,
reinforce_pp_baseline, grpo_per_turn): values, masks, degenerate groups, shapes."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from openrft.algo import (
    drgrpo,
    grpo,
    grpo_per_turn,
    reinforce_pp,
    reinforce_pp_baseline,
    rloo,
)

SQRT3 = math.sqrt(3.0)
SQRT2 = math.sqrt(2.0)
NAN = float("nan")
EPISODE_ESTIMATORS = [grpo, drgrpo, rloo, reinforce_pp, reinforce_pp_baseline]
Estimator = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def all_valid(rewards: torch.Tensor) -> torch.Tensor:
    return torch.ones(rewards.shape, dtype=torch.bool)


# --- grpo -------------------------------------------------------------------------------------


def test_grpo_by_hand() -> None:
    # Row 0: rewards [1, 0, 0, 1]: mean 0.5, population std 0.5 -> [1, -1, -1, 1].
    # Row 1: rewards [3, 1, 1, 1]: mean 1.5, deviations [1.5, -0.5, -0.5, -0.5],
    #   variance (2.25 + 3 * 0.25) / 4 = 0.75, std sqrt(3)/2
    #   -> 1.5 / (sqrt(3)/2) = sqrt(3), -0.5 / (sqrt(3)/2) = -1/sqrt(3).
    rewards = t([[1, 0, 0, 1], [3, 1, 1, 1]])
    expected = t([[1, -1, -1, 1], [SQRT3, -1 / SQRT3, -1 / SQRT3, -1 / SQRT3]])
    torch.testing.assert_close(grpo(rewards, all_valid(rewards), eps=0.0), expected)


def test_grpo_default_eps() -> None:
    # rewards [1, 0, 0, 1]: centred [0.5, -0.5, -0.5, 0.5], std 0.5, divisor 0.5 + 1e-6.
    rewards = t([[1, 0, 0, 1]])
    a = 0.5 / (0.5 + 1e-6)
    torch.testing.assert_close(grpo(rewards, all_valid(rewards)), t([[a, -a, -a, a]]))


def test_grpo_invalid_samples_are_excluded_and_zero() -> None:
    # Valid entries [1, 0, 0, 1] (positions 0, 1, 3, 4): mean 0.5, std 0.5 -> [1, -1, -1, 1];
    # the invalid reward 9 (and the NaN in row 1) must not move the mean or the std.
    # Row 1 valid entries [3, 1, 1, 1] -> [sqrt3, -1/sqrt3, -1/sqrt3, -1/sqrt3] as above.
    rewards = t([[1, 0, 9, 0, 1], [3, 1, 1, NAN, 1]])
    valid = torch.tensor([[True, True, False, True, True], [True, True, True, False, True]])
    u = 1 / SQRT3
    expected = t([[1, -1, 0, -1, 1], [SQRT3, -u, -u, 0, -u]])
    torch.testing.assert_close(grpo(rewards, valid, eps=0.0), expected)


# --- drgrpo and rloo --------------------------------------------------------------------------


def test_drgrpo_is_centred_rewards() -> None:
    # Only subtract the group mean. Means 0.5 and 1.5.
    rewards = t([[1, 0, 0, 1], [3, 1, 1, 1]])
    expected = t([[0.5, -0.5, -0.5, 0.5], [1.5, -0.5, -0.5, -0.5]])
    torch.testing.assert_close(drgrpo(rewards, all_valid(rewards)), expected)


def test_rloo_by_hand() -> None:
    # Row 0 [1, 0, 0, 1]: r = 1, others {0, 0, 1} mean 1/3 -> 2/3;
    #   r = 0, others {1, 0, 1} mean 2/3 -> -2/3.
    # Row 1 [3, 1, 1, 1]: r = 3, others mean 1 -> 2; r = 1, others {3, 1, 1} mean 5/3 -> -2/3.
    # (The closed form G/(G-1) * (r - mean): 4/3 * 0.5 = 2/3, 4/3 * 1.5 = 2, 4/3 * -0.5 = -2/3.)
    rewards = t([[1, 0, 0, 1], [3, 1, 1, 1]])
    expected = t([[2 / 3, -2 / 3, -2 / 3, 2 / 3], [2, -2 / 3, -2 / 3, -2 / 3]])
    torch.testing.assert_close(rloo(rewards, all_valid(rewards)), expected)


def test_rloo_counts_only_valid_samples() -> None:
    # Valid [1, 0, 4] (the 9 and NaN are not): r = 1, others {0, 4} mean 2 -> -1;
    #   r = 0, others {1, 4} mean 2.5 -> -2.5;  r = 4, others {1, 0} mean 0.5 -> 3.5.
    # (Closed form with G_v = 3: mean 5/3, 3/2 * (1 - 5/3) = -1, 3/2 * (4 - 5/3) = 3.5.)
    rewards = t([[1, 0, 9, 4, NAN]])
    valid = torch.tensor([[True, True, False, True, False]])
    torch.testing.assert_close(rloo(rewards, valid), t([[-1, -2.5, 0, 3.5, 0]]))


# --- REINFORCE++ ------------------------------------------------------------------------------


def test_reinforce_pp_whitens_over_the_batch() -> None:
    # All four rewards {1, 0, 1, 1}: mean 0.75, deviations [0.25, -0.75, 0.25, 0.25],
    #   variance (3 * 0.0625 + 0.5625) / 4 = 0.1875, std sqrt(3)/4
    #   -> 0.25 / (sqrt3/4) = 1/sqrt3, -0.75 / (sqrt3/4) = -sqrt3.
    # The flat group [1, 1] is NOT 0: no group baseline, only the batch's.
    rewards = t([[1, 0], [1, 1]])
    u = 1 / SQRT3
    expected = t([[u, -SQRT3], [u, u]])
    torch.testing.assert_close(reinforce_pp(rewards, all_valid(rewards), eps=0.0), expected)


def test_reinforce_pp_ignores_invalid_rewards() -> None:
    # Same batch plus an invalid column (100, NaN): the valid values are still {1, 0, 1, 1}.
    rewards = t([[1, 0, 100], [1, 1, NAN]])
    valid = torch.tensor([[True, True, False], [True, True, False]])
    u = 1 / SQRT3
    torch.testing.assert_close(reinforce_pp(rewards, valid, 0.0), t([[u, -SQRT3, 0], [u, u, 0]]))


def test_reinforce_pp_baseline_by_hand() -> None:
    # c = r - group mean: [[0.5, -0.5], [0, 0] (flat group), [1, -1]].
    # Batch of c: mean 0, variance (0.25 + 0.25 + 0 + 0 + 1 + 1) / 6 = 5/12, std sqrt(5/12)
    #   -> 0.5 / sqrt(5/12) = sqrt(3/5) = s, 1 / sqrt(5/12) = 2s.
    # (grpo would give [1, -1] to both groups; the batch std keeps their relative size.)
    rewards = t([[1, 0], [1, 1], [3, 1]])
    s = math.sqrt(3 / 5)
    expected = t([[s, -s], [0, 0], [2 * s, -2 * s]])
    got = reinforce_pp_baseline(rewards, all_valid(rewards), eps=0.0)
    torch.testing.assert_close(got, expected)
    assert torch.equal(got[1], torch.zeros(2, dtype=torch.float64))


def test_reinforce_pp_baseline_ignores_invalid_rewards() -> None:
    # Row 0 valid [1, 0] -> c [0.5, -0.5]; row 1 valid [3, 1] -> c [1, -1]; NaN/7 are invalid.
    # c batch: mean 0, variance (0.25 + 0.25 + 1 + 1) / 4 = 5/8, std sqrt(5/8)
    #   -> 0.5 / sqrt(5/8) = sqrt(2/5) = s, 1 / sqrt(5/8) = 2s.
    rewards = t([[1, NAN, 0], [3, 1, 7]])
    valid = torch.tensor([[True, False, True], [True, True, False]])
    s = math.sqrt(2 / 5)
    expected = t([[s, 0, -s], [2 * s, -2 * s, 0]])
    torch.testing.assert_close(reinforce_pp_baseline(rewards, valid, eps=0.0), expected)


# --- shared rules of the episode-level estimators ---------------------------------------------


@pytest.mark.parametrize("estimator", EPISODE_ESTIMATORS)
@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_flat_batch_gives_exact_zeros(estimator: Estimator, eps: float) -> None:
    # float32 [0.9, 0.9, 0.9]: its float mean is off by 6e-8, so a naive (r - mean) /
    # (std + eps) gives 0.056 (eps 1e-6) or 1.0 (eps 0), not 0. Every estimator must say 0.
    rewards = torch.full((2, 3), 0.9)
    got = estimator(rewards, all_valid(rewards), eps)
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.zeros(2, 3))


@pytest.mark.parametrize("estimator", [grpo, drgrpo, rloo, reinforce_pp_baseline])
@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_flat_group_gives_exact_zeros(estimator: Estimator, eps: float) -> None:
    # Rows 0 and 1 are flat (std 0; row 1 in float32 with a rounded mean); row 2 [1, 0, 0]
    # has signal: centred [2/3, -1/3, -1/3], checked only for sign.
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.9, 0.9, 0.9], [1.0, 0.0, 0.0]])
    got = estimator(rewards, all_valid(rewards), eps)
    assert torch.isfinite(got).all()
    assert torch.equal(got[:2], torch.zeros(2, 3))
    assert got[2, 0] > 0 > got[2, 1]


SPARSE_REWARDS = t([[0.3, 7, NAN], [5, 6, 7], [2, 0, 9]])
SPARSE_VALID = torch.tensor([[False, True, False], [False, False, False], [True, True, False]])


@pytest.mark.parametrize("estimator", [grpo, drgrpo, rloo, reinforce_pp_baseline])
def test_single_or_no_valid_sample_gives_zero(estimator: Estimator) -> None:
    # Row 0: only 7 is valid; row 1: nothing valid. Row 2: valid [2, 0], the only signal.
    got = estimator(SPARSE_REWARDS, SPARSE_VALID, 0.0)
    assert torch.equal(got[:2], torch.zeros(2, 3, dtype=torch.float64))
    assert got[2, 2] == 0 and got[2, 0] > 0 > got[2, 1]


def test_reinforce_pp_has_no_group_baseline() -> None:
    # Same rewards: the lone valid 7 is compared with the batch, not its (one-sample) group.
    # Valid {7, 2, 0}: mean 3, deviations [4, -1, -3], variance (16 + 1 + 9) / 3 = 26/3.
    sigma = math.sqrt(26 / 3)
    expected = t([[0, 4 / sigma, 0], [0, 0, 0], [-1 / sigma, -3 / sigma, 0]])
    torch.testing.assert_close(reinforce_pp(SPARSE_REWARDS, SPARSE_VALID, 0.0), expected)


@pytest.mark.parametrize("estimator", EPISODE_ESTIMATORS)
def test_integer_rewards_become_float64(estimator: Estimator) -> None:
    rewards = torch.tensor([[1, 0], [0, 1]])
    got = estimator(rewards, all_valid(rewards), 0.0)
    assert got.dtype == torch.float64
    expected = estimator(rewards.double(), all_valid(rewards), 0.0)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("estimator", [*EPISODE_ESTIMATORS, grpo_per_turn])
def test_bad_shapes_raise(estimator: Estimator) -> None:
    rank = 3 if estimator is grpo_per_turn else 2
    wrong = torch.zeros(2, 2) if rank == 3 else torch.zeros(2, 2, 2)
    layout = r"\(P, G, K\)" if rank == 3 else r"\(P, G\)"
    with pytest.raises(ValueError, match=f"shape {layout}"):
        estimator(wrong, all_valid(wrong), 1e-6)
    right = torch.zeros((2,) * rank)
    with pytest.raises(ValueError, match="valid mask shape"):
        estimator(right, torch.ones((3,) * rank, dtype=torch.bool), 1e-6)


# --- grpo_per_turn ----------------------------------------------------------------------------


def test_grpo_per_turn_by_hand() -> None:
    # Prompt 0, three episodes, turn rewards (K = 2):
    #   ep 0 [0, 1]: returns-to-go R = [0 + 1, 1] = [1, 1]
    #   ep 1 [0.5, 0]: R = [0.5, 0]
    #   ep 2 [1, absent (NaN)]: R = [1, -]
    # Turn 0: R {1, 0.5, 1}, mean 5/6, deviations [1/6, -1/3, 1/6],
    #   variance (1/36 + 4/36 + 1/36) / 3 = 1/18, std 1/(3 sqrt2)
    #   -> 1/6 * 3 sqrt2 = 1/sqrt2, -1/3 * 3 sqrt2 = -sqrt2.
    # Turn 1: R {1, 0} (ep 2 has none): mean 0.5, std 0.5 -> [1, -1, 0].
    # Prompt 1: ep 0 [1, absent], ep 1 [1, absent], ep 2 [1, 2]:
    #   turn 0: R {1, 1, 1 + 2 = 3}: mean 5/3, deviations [-2/3, -2/3, 4/3],
    #   variance (4/9 + 4/9 + 16/9) / 3 = 8/9, std 2 sqrt2 / 3 -> [-1/sqrt2, -1/sqrt2, sqrt2]
    #   (ep 2's second-turn reward credits its first turn); turn 1: one episode -> 0.
    rewards = torch.tensor(
        [[[0, 1], [0.5, 0], [1, NAN]], [[1, NAN], [1, NAN], [1, 2]]], dtype=torch.float64
    )
    valid = ~rewards.isnan()
    h = 1 / SQRT2
    expected = torch.tensor(
        [[[h, 1], [-SQRT2, -1], [h, 0]], [[-h, 0], [-h, 0], [SQRT2, 0]]], dtype=torch.float64
    )
    torch.testing.assert_close(grpo_per_turn(rewards, valid, eps=0.0), expected)


def test_grpo_per_turn_skips_a_failed_middle_turn() -> None:
    # Episode turns [1, failed (NaN), 2] and [0, 0, 0], all else valid.
    # Returns-to-go skip the failed turn: ep 0 R = [1 + 2, -, 2] = [3, -, 2]; ep 1 R = [0, 0, 0].
    # Turn 0: {3, 0} -> [1, -1]; turn 1: only ep 1 -> 0; turn 2: {2, 0} -> [1, -1].
    rewards = t([[1, NAN, 2], [0, 0, 0]]).unsqueeze(0)
    valid = ~rewards.isnan()
    expected = t([[1, 0, 1], [-1, 0, -1]]).unsqueeze(0)
    torch.testing.assert_close(grpo_per_turn(rewards, valid, eps=0.0), expected)


def test_grpo_per_turn_flat_turn_is_exact_zero() -> None:
    # float32 returns {0.9, 0.9} at turn 1 and {1.8, 1.8} at turn 0: every turn is flat.
    rewards = torch.full((1, 2, 2), 0.9)
    got = grpo_per_turn(rewards, all_valid(rewards), eps=0.0)
    assert torch.equal(got, torch.zeros(1, 2, 2))


@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_grpo_per_turn_with_one_turn_is_grpo(eps: float) -> None:
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 3, (5, 6), generator=gen).double() / 2
    valid = torch.rand(5, 6, generator=gen) > 0.3
    rewards[~valid] = NAN
    per_turn = grpo_per_turn(rewards.unsqueeze(-1), valid.unsqueeze(-1), eps)
    assert per_turn.shape == (5, 6, 1)
    assert torch.equal(per_turn.squeeze(-1), grpo(rewards, valid, eps))
