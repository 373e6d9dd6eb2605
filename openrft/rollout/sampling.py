"""Next-token sampling from logits: temperature, top-k, top-p (nucleus) and greedy."""

from __future__ import annotations

import torch


def sample_next_tokens(
    logits_B_V: torch.Tensor,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token per row. temperature 0 is greedy; top_k 0 and top_p 1 disable those filters.

    `workspace`, a float32 tensor with at least as many elements as the logits, holds the
    float copy they are sampled from; reused across decoding steps, it saves a fresh (B, V)
    allocation a step, whose memory the CPU would page in again each time (64 rows of a 49k
    vocabulary: 12 MB, about 2 ms a step)."""
    if temperature == 0:
        return logits_B_V.argmax(dim=-1)
    # Our own float32 copy, changed in place below.
    if workspace is not None and workspace.numel() >= logits_B_V.numel():
        own_B_V = workspace.view(-1)[: logits_B_V.numel()].view(logits_B_V.shape)
        logits_B_V = own_B_V.copy_(logits_B_V)
    else:
        logits_B_V = logits_B_V.to(torch.float32, copy=True)
    if temperature != 1.0:
        logits_B_V.div_(temperature)
    if 0 < top_k < logits_B_V.shape[-1]:
        kth_B_1 = torch.topk(logits_B_V, top_k, dim=-1).values[:, -1:]
        logits_B_V.masked_fill_(logits_B_V < kth_B_1, float("-inf"))
    if top_p < 1.0:
        sorted_B_V, order_B_V = torch.sort(logits_B_V, dim=-1, descending=True)
        cumulative_B_V = sorted_B_V.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already reaches top_p (the top token always stays).
        drop_sorted_B_V = (cumulative_B_V - sorted_B_V.softmax(dim=-1)) >= top_p
        drop_sorted_B_V[:, 0] = False  # top_p = 0 still keeps the most likely token
        drop_B_V = drop_sorted_B_V.scatter(-1, order_B_V, drop_sorted_B_V)
        logits_B_V.masked_fill_(drop_B_V, float("-inf"))
    # exp(logit - max): the softmax numerator; the sampler needs no normalised probabilities.
    weights_B_V = logits_B_V.sub_(logits_B_V.amax(dim=-1, keepdim=True)).exp_()
    return sample_from_weights(weights_B_V, generator)


def sample_from_weights(
    weights_B_V: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """One index per row, drawn with probability proportional to its (non-negative) weight.

    Inverse-CDF sampling in two levels: a block of `block_size(V)` entries is drawn by the
    blocks' total weights, then an entry within the chosen block by its own weights, with a
    second uniform (P(entry) = P(block) P(entry | block), so the draw is exact). One pass
    over the B x V weights sums the blocks; only the B chosen blocks are scanned again.
    `torch.multinomial` draws an exponential for every entry (3M numbers for 64 rows of a
    49k vocabulary, 16% of a CPU rollout), and a full float64 cumulative sum costs 10 ms per
    decoding step at batch 64. Block totals (float32 sums of float32 weights) and the
    cumulative sums (float64) are exact where it matters: an all-zero block sums to 0, and a
    zero-weight entry or block shares its left neighbour's cumulative value, so neither is
    ever chosen.
    """
    rows, vocabulary = weights_B_V.shape
    size = block_size(vocabulary)
    blocks_B_N_S = weights_B_V.view(rows, vocabulary // size, size)
    uniform_B_2 = torch.rand(
        (rows, 2), generator=generator, device=weights_B_V.device, dtype=torch.float64
    )
    block_B = _invert(blocks_B_N_S.sum(dim=-1).double(), uniform_B_2[:, :1])
    within_B_S = blocks_B_N_S[torch.arange(rows, device=weights_B_V.device), block_B]
    entry_B = _invert(within_B_S.double(), uniform_B_2[:, 1:])
    return block_B * size + entry_B


def block_size(vocabulary: int) -> int:
    """The largest power of two that divides the vocabulary, at most 1024 (49152 -> 1024,
    151936 -> 128); a vocabulary with no such factor samples in one level (size 1)."""
    size = 1
    while size < 1024 and vocabulary % (size * 2) == 0:
        size *= 2
    return size


def _invert(weights_B_N: torch.Tensor, uniform_B_1: torch.Tensor) -> torch.Tensor:
    """The index whose cumulative-weight bin holds uniform * total, per row."""
    cumulative_B_N = weights_B_N.cumsum(dim=-1)
    target_B_1 = uniform_B_1 * cumulative_B_N[:, -1:]
    index_B = torch.searchsorted(cumulative_B_N, target_B_1, right=True).squeeze(-1)
    return index_B.clamp_(max=weights_B_N.shape[-1] - 1)
