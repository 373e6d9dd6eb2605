"""pass@k: the chance that at least one of k completions succeeds, estimated without bias.

With n completions of a prompt of which c succeed, the unbiased estimator of Chen et al. 2021
("Evaluating Large Language Models Trained on Code") is

    pass@k = 1 - C(n - c, k) / C(n, k)

the probability that a k-subset drawn without replacement from the n completions holds at
least one success, averaged over every k-subset. Taking the best of the first k completions
(or of one random k-subset) has the same expectation but a higher variance, and the common
shortcut 1 - (1 - c/n)^k is biased low. The ratio of binomials is computed as a product,
C(n-c, k) / C(n, k) = prod_{i = n-c+1}^{n} (1 - k / i), so large n never overflows.
"""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one prompt with `n` completions, `c` of them successes."""
    if n < 1:
        raise ValueError(f"pass@k needs at least one completion, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"the number of successes c={c} must be between 0 and n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of completions n={n}")
    if n - c < k:  # every k-subset holds a success
        return 1.0
    failure = 1.0
    for i in range(n - c + 1, n + 1):
        failure *= 1.0 - k / i
    return 1.0 - failure


def mean_pass_at_k(correct_counts: Sequence[int], n: int, ks: Sequence[int]) -> dict[int, float]:
    """pass@k averaged over prompts, for each k in `ks`; `correct_counts[p]` successes of n."""
    if not correct_counts:
        raise ValueError("pass@k needs at least one prompt")
    return {k: sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts) for k in ks}
