"""Next-token sampling: greedy, temperature, top-k and top-p, seeded generators."""

from __future__ import annotations

import pytest
import torch

from openrft.rollout.sampling import block_size, sample_from_weights, sample_next_tokens

VOCAB = 50
DRAWS = 2000


def _logits(rows: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _draw(logits_1_V: torch.Tensor, draws: int = DRAWS, seed: int = 0, **kwargs) -> torch.Tensor:
    """`draws` samples from one row of logits (the row repeated, one call)."""
    return sample_next_tokens(logits_1_V.expand(draws, -1), generator=_gen(seed), **kwargs)


def test_greedy_is_argmax():
    logits = _logits(rows=8)
    tokens = sample_next_tokens(logits, temperature=0.0)
    assert tokens.shape == (8,)
    assert torch.equal(tokens, logits.argmax(dim=-1))


def test_greedy_ignores_the_filters_and_generator():
    logits = _logits()
    tokens = sample_next_tokens(logits, temperature=0, top_p=0.1, top_k=3, generator=_gen())
    assert torch.equal(tokens, logits.argmax(dim=-1))


def test_greedy_accepts_half_precision_logits():
    logits = _logits().bfloat16()
    assert torch.equal(sample_next_tokens(logits, 0.0), logits.argmax(dim=-1))


@pytest.mark.parametrize("temperature", [0.1, 0.7, 1.0, 2.0, 10.0])
def test_top_k_one_equals_greedy(temperature):
    logits = _logits(rows=16)
    for seed in range(5):
        tokens = sample_next_tokens(logits, temperature, top_k=1, generator=_gen(seed))
        assert torch.equal(tokens, logits.argmax(dim=-1))


@pytest.mark.parametrize("top_p", [1e-6, 0.01])
def test_tiny_top_p_keeps_only_the_top_token(top_p):
    logits = _logits(rows=16)
    for seed in range(5):
        tokens = sample_next_tokens(logits, 5.0, top_p=top_p, generator=_gen(seed))
        assert torch.equal(tokens, logits.argmax(dim=-1))


@pytest.mark.parametrize("top_k", [2, 5, 10])
def test_top_k_samples_stay_within_the_top_k(top_k):
    logits = _logits(rows=1)
    allowed = set(torch.topk(logits[0], top_k).indices.tolist())
    draws = _draw(logits, temperature=3.0, top_k=top_k)  # flat: would hit others often
    seen = set(draws.tolist())
    assert seen <= allowed
    assert len(seen) == top_k  # and every one of the top k is reachable


def test_top_k_at_or_above_the_vocabulary_size_disables_the_filter():
    logits = torch.zeros(1, VOCAB)
    for top_k in (0, VOCAB, VOCAB + 10):
        assert len(set(_draw(logits, temperature=1.0, top_k=top_k).tolist())) > VOCAB - 5


def test_top_p_keeps_the_nucleus():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.75 needs the first two (0.5 < 0.75 <= 0.8).
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    draws = _draw(probs.log(), temperature=1.0, top_p=0.75)
    assert set(draws.tolist()) == {0, 1}
    share = (draws == 0).float().mean().item()
    assert share == pytest.approx(0.5 / 0.8, abs=0.05)  # renormalised over the nucleus


def test_top_p_one_disables_the_filter():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert set(_draw(probs.log(), temperature=1.0, top_p=1.0).tolist()) == {0, 1, 2, 3}


def test_top_k_and_top_p_combine():
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    # top_k 3 renormalises to 0.44, 0.33, 0.22; top_p 0.5 then needs the first two.
    draws = _draw(probs.log(), temperature=1.0, top_k=3, top_p=0.5)
    assert set(draws.tolist()) == {0, 1}


def test_same_seed_same_tokens_and_different_seeds_differ():
    logits = _logits(rows=64)
    first = sample_next_tokens(logits, 1.0, generator=_gen(7))
    again = sample_next_tokens(logits, 1.0, generator=_gen(7))
    other = sample_next_tokens(logits, 1.0, generator=_gen(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_samples_follow_the_softmax():
    probs = torch.tensor([[0.6, 0.25, 0.1, 0.05]])
    draws = _draw(probs.log(), temperature=1.0, draws=4000)
    frequencies = torch.bincount(draws, minlength=4).float() / 4000
    torch.testing.assert_close(frequencies, probs[0], atol=0.03, rtol=0)


def test_lower_temperature_sharpens_and_higher_flattens():
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    shares = {}
    for temperature in (0.25, 1.0, 4.0):
        draws = _draw(probs.log(), temperature=temperature)
        shares[temperature] = (draws == 0).float().mean().item()
        expected = (probs[0] ** (1 / temperature) / (probs[0] ** (1 / temperature)).sum())[0]
        assert shares[temperature] == pytest.approx(expected.item(), abs=0.04)
    assert shares[0.25] > shares[1.0] > shares[4.0]


def test_one_token_per_row_and_rows_are_independent():
    # Each row has one overwhelming token, at a different index.
    logits = torch.full((5, VOCAB), -1e4)
    targets = torch.tensor([3, 0, 49, 17, 3])
    logits[torch.arange(5), targets] = 0.0
    tokens = sample_next_tokens(logits, 1.0, top_p=0.9, top_k=10, generator=_gen())
    assert tokens.dtype == torch.long
    assert torch.equal(tokens, targets)


def test_sampling_does_not_modify_the_logits():
    logits = _logits()
    before = logits.clone()
    sample_next_tokens(logits, 0.5, top_p=0.5, top_k=5, generator=_gen())
    assert torch.equal(logits, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_workspace_gives_the_same_tokens_and_leaves_the_logits_alone(dtype):
    logits = _logits(rows=8).to(dtype)
    before = logits.clone()
    workspace = torch.full((8 * VOCAB + 5,), float("nan"))  # larger than needed, dirty
    for temperature, top_p, top_k in [(1.0, 1.0, 0), (0.7, 0.9, 20)]:
        plain = sample_next_tokens(logits, temperature, top_p, top_k, _gen(3))
        reused = sample_next_tokens(logits, temperature, top_p, top_k, _gen(3), workspace)
        assert torch.equal(plain, reused)
    assert torch.equal(logits, before)
    small = torch.empty(3)  # too small: ignored, not overrun
    with_small = sample_next_tokens(logits, 1.0, generator=_gen(3), workspace=small)
    assert torch.equal(with_small, sample_next_tokens(logits, 1.0, generator=_gen(3)))


def test_top_p_zero_keeps_the_top_token():
    logits = _logits(rows=4)
    tokens = sample_next_tokens(logits, 1.0, top_p=0.0, generator=_gen())
    assert torch.equal(tokens, logits.argmax(dim=-1))


def test_block_sizes_divide_the_vocabulary():
    assert [block_size(v) for v in (49152, 151936, 50, 7, 4096)] == [1024, 128, 2, 1, 1024]


def test_two_level_draws_follow_the_weights_and_skip_zero_weights():
    """Blocks of 4 entries (V = 12): an all-zero block and zero entries are never drawn, and
    frequencies match the weights across and within blocks."""
    assert block_size(12) == 4
    weights = torch.tensor([[4.0, 0.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]])
    draws = sample_from_weights(weights.expand(20000, -1).contiguous(), _gen(3))
    frequencies = torch.bincount(draws, minlength=12).float() / 20000
    torch.testing.assert_close(frequencies, weights[0] / weights.sum(), atol=0.015, rtol=0)
    assert set(draws.tolist()) == {0, 2, 3, 8, 11}
