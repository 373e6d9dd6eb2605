"""Hand-computed checks of DAPO's overlong penalty and of the flat-group filter."""

from __future__ import annotations

import pytest
import torch

from openrft.algo import flat_groups, grpo, overlong_penalty

NAN = float("nan")


def test_overlong_penalty_by_hand() -> None:
    # max 100, buffer 20 -> the ramp starts after 100 - 20 = 80 tokens; penalty 1.
    #   L = 50, 80 -> 0 (at or below 80)
    #   L = 85 -> -(85 - 80) / 20 = -0.25;  L = 90 -> -0.5;  L = 100 -> -1 (the limit itself)
    #   L = 130 -> -1 (beyond the limit: the full penalty, no more)
    lengths = torch.tensor([50, 80, 85, 90, 100, 130])
    got = overlong_penalty(lengths, max_tokens=100, buffer_tokens=20, penalty=1.0)
    assert got.dtype == torch.float64
    expected = torch.tensor([0, 0, -0.25, -0.5, -1, -1], dtype=torch.float64)
    torch.testing.assert_close(got, expected)


def test_overlong_penalty_scales_with_penalty() -> None:
    # Penalty 0.5, max 10, buffer 4 (ramp from 6): L = 7 -> -0.5 * 1/4 = -0.125; L = 12 -> -0.5.
    got = overlong_penalty(torch.tensor([3, 7, 12]), max_tokens=10, buffer_tokens=4, penalty=0.5)
    torch.testing.assert_close(got, torch.tensor([0, -0.125, -0.5], dtype=torch.float64))
    assert (got <= 0).all()


def test_overlong_penalty_off_with_zero_buffer() -> None:
    got = overlong_penalty(torch.tensor([5, 10, 500]), max_tokens=10, buffer_tokens=0, penalty=1.0)
    assert torch.equal(got, torch.zeros(3, dtype=torch.float64))


def test_overlong_penalty_buffer_equal_to_max() -> None:
    # Ramp over the whole range: L = 5 of 10 -> -0.5; L = 0 -> 0.
    got = overlong_penalty(torch.tensor([0, 5]), max_tokens=10, buffer_tokens=10, penalty=1.0)
    torch.testing.assert_close(got, torch.tensor([0, -0.5], dtype=torch.float64))


def test_overlong_penalty_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="buffer_tokens"):
        overlong_penalty(torch.tensor([1]), max_tokens=10, buffer_tokens=11, penalty=1.0)
    with pytest.raises(ValueError, match="buffer_tokens"):
        overlong_penalty(torch.tensor([1]), max_tokens=10, buffer_tokens=-1, penalty=1.0)
    with pytest.raises(ValueError, match="penalty"):
        overlong_penalty(torch.tensor([1]), max_tokens=10, buffer_tokens=2, penalty=-1.0)


def test_flat_groups_by_hand() -> None:
    # Row 0 [1, 0, 1]: signal. Row 1 [1, 1, 1]: all equal -> flat.
    # Row 2 [1, 0 (invalid), 1]: the valid rewards are equal -> flat.
    # Row 3 [NaN (invalid), 1, 0]: signal; the NaN is left out. Row 4: one valid -> flat.
    # Row 5 float32-exact [0.9, 0.9, 0.9]: flat.
    rewards = torch.tensor(
        [[1, 0, 1], [1, 1, 1], [1, 0, 1], [NAN, 1, 0], [3, NAN, NAN], [0.9, 0.9, 0.9]]
    )
    valid = ~rewards.isnan()
    valid[2, 1] = False
    got = flat_groups(rewards, valid)
    assert got.dtype == torch.bool
    assert got.tolist() == [False, True, True, False, True, True]
    # Exactly the groups grpo gives all-zero advantages.
    assert torch.equal(got, (grpo(rewards, valid) == 0).all(dim=-1))


def test_flat_groups_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"shape \(P, G\)"):
        flat_groups(torch.zeros(3), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid mask shape"):
        flat_groups(torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool))
