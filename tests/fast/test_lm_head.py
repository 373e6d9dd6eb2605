"""The chunked LM head (openrft.fast.lm_head) against its plain twin, a direct log-softmax of
the whole logits: values, gradients, temperature, soft caps, recompute in backward, bf16."""

from __future__ import annotations

import math

import pytest
import torch

from openrft.algo import logprobs_and_entropy
from openrft.fast import lm_head as logprobs_module
from openrft.fast.lm_head import chunked_logprobs_and_entropy as token_logprobs_and_entropy

N, H, V = 7, 5, 11


def _random_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, H, generator=gen, dtype=torch.float64)
    weight = torch.randn(V, H, generator=gen, dtype=torch.float64)
    bias = torch.randn(V, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, V, (N,), generator=gen)
    return hidden, weight, bias, targets


def _reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    log_probs = torch.log_softmax(logits / temperature, dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return log_probs.gather(-1, targets[:, None]).squeeze(-1), entropy


@pytest.mark.parametrize("chunk", [1, 3, N, N + 5])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_direct_log_softmax(chunk: int, with_bias: bool) -> None:
    hidden, weight, bias, targets = _random_case()
    b = bias if with_bias else None
    logprobs, entropy = token_logprobs_and_entropy(
        hidden, weight, targets, chunk_tokens=chunk, lm_head_bias_V=b, temperature=0.7
    )
    ref_logprobs, ref_entropy = _reference(hidden, weight, targets, b, temperature=0.7)
    assert logprobs.dtype == torch.float64  # float64 inputs are not downcast to float32
    torch.testing.assert_close(logprobs, ref_logprobs)
    torch.testing.assert_close(entropy, ref_entropy)


def _grads(
    chunk: int | None,
    temperature: float = 1.0,
    dtype: torch.dtype = torch.float64,
    softcap: float | None = None,
) -> tuple[torch.Tensor, ...]:
    """Gradients of a mix of log-probs and entropies w.r.t. hidden, weight and bias: chunked
    (chunk tokens at a time) or, with chunk None, through autograd of the plain expression."""
    hidden, weight, bias, targets = _random_case()
    coef = torch.linspace(-1, 1, N, dtype=torch.float64)  # weight tokens unevenly
    h, w, b = (x.to(dtype).requires_grad_(True) for x in (hidden, weight, bias))
    if chunk is None:
        lp, ent = _reference(h, w, targets, b, temperature, softcap)
    else:
        lp, ent = token_logprobs_and_entropy(h, w, targets, chunk, b, temperature, softcap=softcap)
    assert ent is not None
    ((lp * coef).sum() + 0.3 * ent.sum()).backward()
    return tuple(x.grad for x in (h, w, b))  # type: ignore[misc]


@pytest.mark.parametrize("chunk", [1, 3, N + 5])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gradients_match_autograd_of_the_plain_expression(chunk: int, temperature: float) -> None:
    expected = _grads(None, temperature)
    for got, want in zip(_grads(chunk, temperature), expected, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_a_final_logit_softcap_in_values_and_gradients(temperature: float) -> None:
    # A cap of 1.5 bends logits of size ~2 hard: without it the values would differ a lot.
    hidden, weight, bias, targets = _random_case()
    capped, _ = token_logprobs_and_entropy(hidden, weight, targets, 3, bias, softcap=1.5)
    plain, _ = token_logprobs_and_entropy(hidden, weight, targets, 3, bias)
    torch.testing.assert_close(capped, _reference(hidden, weight, targets, bias, 1.0, 1.5)[0])
    assert (capped - plain).abs().max() > 0.1
    expected = _grads(None, temperature, softcap=1.5)
    for got, want in zip(_grads(3, temperature, softcap=1.5), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_recomputing_in_backward_gives_the_same_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kept = _grads(3)
    recomputed_chunks: list[int] = []
    real = logprobs_module._chunk_log_probs

    def spy(hidden: torch.Tensor, *args: object) -> torch.Tensor:
        recomputed_chunks.append(hidden.shape[0])
        return real(hidden, *args)

    monkeypatch.setattr(logprobs_module, "KEEP_FOR_BACKWARD_BYTES", 0)
    monkeypatch.setattr(logprobs_module, "_chunk_log_probs", spy)
    recomputed = _grads(3)
    assert recomputed_chunks == [3, 3, 1, 1, 3, 3]  # forward, then backward (last chunk first)
    for got, want in zip(recomputed, kept, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_bf16_head_gets_its_gradient_from_bf16_matmuls_of_exact_logits() -> None:
    # The backward matmuls round only the gradient to bf16 (relative 2^-9 per element): the
    # result stays within bf16 precision of the float64 gradient of the same bf16 weights.
    expected = _grads(None, dtype=torch.float64)
    got = _grads(3, dtype=torch.bfloat16)
    for g, want in zip(got, expected, strict=True):
        assert g.dtype == torch.bfloat16
        scale = want.abs().max()
        assert (g.double() - want).abs().max() <= 0.02 * scale


def test_uniform_distribution_entropy_is_log_v() -> None:
    # Zero weight -> all 4 logits 0 -> p = 1/4 each: logprob = -log 4, entropy = log 4 = 1.3863.
    logprobs, entropy = token_logprobs_and_entropy(
        torch.randn(3, 2, dtype=torch.float64),
        torch.zeros(4, 2, dtype=torch.float64),
        torch.tensor([0, 2, 3]),
        chunk_tokens=2,
    )
    assert entropy is not None
    torch.testing.assert_close(entropy, torch.full((3,), math.log(4), dtype=torch.float64))
    torch.testing.assert_close(logprobs, torch.full((3,), -math.log(4), dtype=torch.float64))


def test_temperature_scaling_by_hand() -> None:
    # hidden [log 3], weight [[0], [1]] -> logits [0, log 3].
    # T = 1: p = [1/4, 3/4]; logprob(token 1) = log(3/4) = -0.2877;
    #   entropy = 1/4 log 4 + 3/4 log(4/3) = 0.3466 + 0.2158 = 0.5623.
    # T = 2: logits [0, log(3)/2] = [0, log sqrt3] -> p = [1, sqrt3] / (1 + sqrt3);
    #   logprob(token 0) = -log(1 + sqrt3) = -1.0050.
    hidden = torch.tensor([[math.log(3.0)]], dtype=torch.float64)
    weight = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    lp1, ent1 = token_logprobs_and_entropy(hidden, weight, torch.tensor([1]))
    assert lp1.item() == pytest.approx(math.log(0.75))
    assert ent1 is not None
    assert ent1.item() == pytest.approx(0.25 * math.log(4) + 0.75 * math.log(4 / 3))
    lp2, _ = token_logprobs_and_entropy(hidden, weight, torch.tensor([0]), temperature=2.0)
    assert lp2.item() == pytest.approx(-math.log(1 + math.sqrt(3)))


def test_without_entropy_and_low_precision_inputs() -> None:
    hidden, weight, _, targets = _random_case()
    lp, ent = token_logprobs_and_entropy(
        hidden.bfloat16(), weight.bfloat16(), targets, chunk_tokens=4, with_entropy=False
    )
    assert ent is None
    assert lp.dtype == torch.float32  # logits upcast to float32
    ref, _ = _reference(hidden.bfloat16().double(), weight.bfloat16().double(), targets)
    torch.testing.assert_close(lp.double(), ref, atol=1e-5, rtol=1e-5)


def test_a_bf16_head_at_matmul_size_gives_float32_logits_and_restores_the_setting() -> None:
    # Large enough for oneDNN's bf16 tiles, where the CPU has them: bf16 products are exact in
    # float32, so the log-probs match float64 arithmetic on the same bf16 values.
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(64, 256, generator=gen).bfloat16()
    weight = (torch.randn(4096, 256, generator=gen) * 0.2).bfloat16()
    targets = torch.randint(0, 4096, (64,), generator=gen)
    before = torch.backends.mkldnn.matmul.fp32_precision
    lp, ent = token_logprobs_and_entropy(hidden, weight, targets, chunk_tokens=32)
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    ref_lp, ref_ent = _reference(hidden.double(), weight.double(), targets)
    torch.testing.assert_close(lp.double(), ref_lp, atol=2e-5, rtol=0)
    torch.testing.assert_close(ent.double(), ref_ent, atol=2e-5, rtol=0)


def test_empty_input_and_bad_arguments() -> None:
    lp, ent = token_logprobs_and_entropy(
        torch.zeros(0, H), torch.zeros(V, H), torch.zeros(0, dtype=torch.long)
    )
    assert lp.shape == (0,) and ent is not None and ent.shape == (0,)
    hidden, weight, _, targets = _random_case()
    with pytest.raises(ValueError, match="chunk_tokens"):
        token_logprobs_and_entropy(hidden, weight, targets, chunk_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs_and_entropy(hidden, weight, targets, temperature=0.0)


def test_the_plain_twin_equals_the_chunked_head_in_values_and_gradients() -> None:
    hidden, weight, bias, targets = _random_case()
    hidden.requires_grad_(True)
    plain, plain_entropy = logprobs_and_entropy(hidden @ weight.T + bias, targets)
    chunked, chunked_entropy = token_logprobs_and_entropy(hidden, weight, targets, 3, bias)
    torch.testing.assert_close(chunked, plain)
    torch.testing.assert_close(chunked_entropy, plain_entropy)
    (plain_grad,) = torch.autograd.grad((plain + 0.5 * plain_entropy).sum(), hidden)
    (chunked_grad,) = torch.autograd.grad((chunked + 0.5 * chunked_entropy).sum(), hidden)
    torch.testing.assert_close(chunked_grad, plain_grad)
    no_entropy = logprobs_and_entropy(hidden @ weight.T + bias, targets, with_entropy=False)
    assert no_entropy[1] is None
