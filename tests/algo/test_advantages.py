"""Hand-computed checks of `group_advantages`: the three scalings, degenerate groups, masks."""

from __future__ import annotations

import math

import pytest
import torch

from openrft.algo import ADVANTAGE_SCALINGS, group_advantages

SQRT3 = math.sqrt(3.0)
SQRT2 = math.sqrt(2.0)


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_group_scaling_by_hand() -> None:
    # Row 0: rewards [1, 0, 0, 1]: mean 0.5, population std 0.5 -> [1, -1, -1, 1].
    # Row 1: rewards [3, 1, 1, 1]: mean 1.5, deviations [1.5, -0.5, -0.5, -0.5],
    #   variance (2.25 + 3 * 0.25) / 4 = 0.75, std sqrt(3)/2
    #   -> 1.5 / (sqrt(3)/2) = sqrt(3), -0.5 / (sqrt(3)/2) = -1/sqrt(3).
    rewards = t([[1, 0, 0, 1], [3, 1, 1, 1]])
    expected = t([[1, -1, -1, 1], [SQRT3, -1 / SQRT3, -1 / SQRT3, -1 / SQRT3]])
    got = group_advantages(rewards, scaling="group", eps=0.0)
    torch.testing.assert_close(got, expected)


def test_group_scaling_default_eps() -> None:
    # rewards [1, 0, 0, 1]: centred [0.5, -0.5, -0.5, 0.5], std 0.5, divisor 0.5 + 1e-6.
    got = group_advantages(t([[1, 0, 0, 1]]))
    a = 0.5 / (0.5 + 1e-6)
    torch.testing.assert_close(got, t([[a, -a, -a, a]]))


def test_batch_scaling_by_hand() -> None:
    # rewards [[0, 4], [2, 2]]: group means 2 and 2, centred [[-2, 2], [0, 0]].
    # Batch: values {0, 4, 2, 2}, mean 2, squared deviations 4 + 4 + 0 + 0 = 8,
    #   population variance 8 / 4 = 2, std sqrt(2) -> [[-2/sqrt2, 2/sqrt2], [0, 0]].
    # (Group scaling would give [[-1, 1], [0, 0]] instead.)
    got = group_advantages(t([[0, 4], [2, 2]]), scaling="batch", eps=0.0)
    torch.testing.assert_close(got, t([[-SQRT2, SQRT2], [0, 0]]))


def test_none_scaling_is_centred_rewards() -> None:
    # Dr. GRPO: only subtract the group mean. Means 0.5 and 1.5.
    got = group_advantages(t([[1, 0, 0, 1], [3, 1, 1, 1]]), scaling="none")
    expected = t([[0.5, -0.5, -0.5, 0.5], [1.5, -0.5, -0.5, -0.5]])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("scaling", ["group", "batch", "none"])
@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_zero_std_group_gives_exact_zeros(scaling: str, eps: float) -> None:
    # Row 0 is constant (std 0). Row 1 is [0.9, 0.9, 0.9] in float32: its float mean is off by
    # 6e-8, so naive (r - mean) / (std + eps) gives 0.056 (eps 1e-6) or 1.0 (eps 0), not 0.
    # Row 2 is [1, 0, 0]: mean 1/3, centred [2/3, -1/3, -1/3] (checked only for finiteness).
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.9, 0.9, 0.9], [1.0, 0.0, 0.0]])
    got = group_advantages(rewards, scaling=scaling, eps=eps)
    assert torch.isfinite(got).all()
    assert torch.equal(got[:2], torch.zeros(2, 3))
    assert got[2, 0] > 0 > got[2, 1]


def test_invalid_samples_are_excluded_and_zero() -> None:
    # Valid entries [1, 0, 0, 1] (positions 0, 1, 3, 4): mean 0.5, std 0.5 -> [1, -1, -1, 1];
    # the invalid reward 9 (and the NaN in row 1) must not move the mean or the std.
    # Row 1 valid entries [3, 1, 1, 1] -> [sqrt3, -1/sqrt3, -1/sqrt3, -1/sqrt3] as above.
    rewards = t([[1, 0, 9, 0, 1], [3, 1, 1, float("nan"), 1]])
    valid = torch.tensor([[True, True, False, True, True], [True, True, True, False, True]])
    got = group_advantages(rewards, scaling="group", eps=0.0, valid_P_G=valid)
    u = 1 / SQRT3
    expected = t([[1, -1, 0, -1, 1], [SQRT3, -u, -u, 0, -u]])
    torch.testing.assert_close(got, expected)


def test_batch_scaling_ignores_invalid_rewards() -> None:
    # Same as test_batch_scaling_by_hand plus an invalid third column (100 and NaN):
    # valid values {0, 4, 2, 2}, batch std sqrt(2) -> [[-sqrt2, sqrt2, 0], [0, 0, 0]].
    rewards = t([[0, 4, 100], [2, 2, float("nan")]])
    valid = torch.tensor([[True, True, False], [True, True, False]])
    got = group_advantages(rewards, scaling="batch", eps=0.0, valid_P_G=valid)
    torch.testing.assert_close(got, t([[-SQRT2, SQRT2, 0], [0, 0, 0]]))


@pytest.mark.parametrize("scaling", ["group", "batch", "none"])
def test_single_valid_or_no_valid_sample_gives_zero(scaling: str) -> None:
    # Row 0: only 7 is valid -> mean 7, centred 0, no comparison possible -> all 0.
    # Row 1: nothing valid -> all 0. Row 2: valid [2, 0]: group mean 1, centred [1, -1].
    rewards = t([[0.3, 7, 2], [5, 6, 7], [2, 0, 9]])
    valid = torch.tensor([[False, True, False], [False, False, False], [True, True, False]])
    got = group_advantages(rewards, scaling=scaling, eps=0.0, valid_P_G=valid)
    assert torch.equal(got[:2], torch.zeros(2, 3, dtype=torch.float64))
    assert got[2, 2] == 0 and got[2, 0] > 0 > got[2, 1]
    if scaling == "group":  # centred [1, -1], std 1
        torch.testing.assert_close(got[2], t([[1, -1, 0]])[0])


def test_integer_rewards_are_accepted() -> None:
    # [1, 0]: mean 0.5, std 0.5 -> [1, -1].
    got = group_advantages(torch.tensor([[1, 0]]), eps=0.0)
    torch.testing.assert_close(got, t([[1, -1]]))


def test_unknown_scaling_names_choices() -> None:
    with pytest.raises(ValueError, match="unknown advantage scaling 'std'; choose one of: group"):
        group_advantages(t([[1, 0]]), scaling="std")
    assert set(ADVANTAGE_SCALINGS) == {"group", "batch", "none"}


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match=r"shape \(P, G\)"):
        group_advantages(torch.zeros(4))
    with pytest.raises(ValueError, match="valid mask shape"):
        group_advantages(torch.zeros(2, 2), valid_P_G=torch.ones(2, 3, dtype=torch.bool))
