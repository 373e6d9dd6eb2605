"""The plain log-prob functions, by hand: the twin the chunked LM head is tested against."""

from __future__ import annotations

import math

import torch

from openrft.algo import logprobs_and_entropy, selective_log_softmax


def test_selective_log_softmax() -> None:
    # logits [0, log 3] -> p = [1/4, 3/4]: token 1 -> log(3/4), token 0 -> log(1/4).
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]], dtype=torch.float64)
    got = selective_log_softmax(logits, torch.tensor([1, 0]))
    torch.testing.assert_close(got, torch.tensor([math.log(0.75), math.log(0.25)]).double())


def test_logprobs_and_entropy_by_hand() -> None:
    # p = [1/4, 3/4]: entropy = -(1/4 log 1/4 + 3/4 log 3/4) = 0.5623...
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    logprobs, entropy = logprobs_and_entropy(logits, torch.tensor([1]))
    torch.testing.assert_close(logprobs, torch.tensor([math.log(0.75)], dtype=torch.float64))
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    torch.testing.assert_close(entropy, torch.tensor([expected], dtype=torch.float64))


def test_low_precision_logits_are_scored_in_float32() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)).bfloat16()
    logprobs, entropy = logprobs_and_entropy(logits, torch.tensor([0, 1, 2]))
    assert logprobs.dtype == entropy.dtype == torch.float32
    expected = torch.log_softmax(logits.float(), -1)[torch.arange(3), torch.tensor([0, 1, 2])]
    torch.testing.assert_close(logprobs, expected)
