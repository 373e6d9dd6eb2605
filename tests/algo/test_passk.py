"""The unbiased pass@k estimator: hand-computed values, edge cases, and the exact expectation
over every k-subset (which best-of-the-first-k or 1 - (1 - c/n)^k do not give)."""

from __future__ import annotations

import itertools
import math

import pytest

from openrft.algo.passk import mean_pass_at_k, pass_at_k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
        (5, 2, 1, 0.4),  # 1 - C(3,1)/C(5,1) = 1 - 3/5 = 0.4 (= c/n)
        (5, 1, 3, 0.6),  # 1 - C(4,3)/C(5,3) = 1 - 4/10 = 0.6
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
        (10, 3, 4, 1 - 35 / 210),  # 1 - C(7,4)/C(10,4) = 1 - 35/210 = 5/6
        (8, 0, 8, 0.0),  # no success: C(8,8)/C(8,8) = 1 -> 0
        (8, 8, 1, 1.0),  # every sample succeeds
        (5, 3, 3, 1.0),  # c > n - k: only 2 failures, any 3 samples hold a success
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
    ],
)
def test_hand_computed_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_equals_the_exact_expectation_over_every_k_subset(n):
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            exact = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_is_not_best_of_the_first_k_nor_the_with_replacement_shortcut():
    # n=4 with successes at positions 3 and 4: best of the first 2 says 0, the estimator
    # averages over all C(4,2) = 6 pairs: only (1,2) has no success -> 5/6.
    outcomes = [False, False, True, True]
    assert any(outcomes[:2]) is False
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
    # 1 - (1 - c/n)^k = 1 - 0.25 = 0.75, biased low
    shortcut = 1 - (1 - 2 / 4) ** 2
    assert shortcut == pytest.approx(0.75)
    assert pass_at_k(4, 2, 2) > shortcut


def test_large_n_is_stable():
    # 1 - C(900, 10)/C(1000, 10): binomials this large overflow floats, the product does not
    value = pass_at_k(1000, 100, 10)
    exact = 1 - math.comb(900, 10) / math.comb(1000, 10)
    assert value == pytest.approx(exact, rel=1e-12)
    assert 0 < value < 1


def test_monotone_in_k_and_c():
    n = 8
    for c in range(n + 1):
        values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
        assert values == sorted(values)
    for k in range(1, n + 1):
        values = [pass_at_k(n, c, k) for c in range(n + 1)]
        assert values == sorted(values)


@pytest.mark.parametrize(("n", "c", "k"), [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_invalid_arguments_raise(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_over_prompts():
    # n=5: prompt A has 2 successes, prompt B none, prompt C all 5
    # pass@1 = (2/5 + 0 + 1)/3 = 7/15; pass@2 = (0.7 + 0 + 1)/3 = 1.7/3
    result = mean_pass_at_k([2, 0, 5], n=5, ks=[1, 2])
    assert result == {1: pytest.approx(7 / 15), 2: pytest.approx(1.7 / 3)}
    with pytest.raises(ValueError):
        mean_pass_at_k([], n=5, ks=[1])
