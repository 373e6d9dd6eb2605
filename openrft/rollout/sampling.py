"""Next-token sampling from logits: temperature, top-k, top-p (nucleus) and greedy."""

from __future__ import annotations

import torch


def sample_next_tokens(
    logits_B_V: torch.Tensor,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row. temperature 0 is greedy; top_k 0 and top_p 1 disable those filters."""
    if temperature == 0:
        return logits_B_V.argmax(dim=-1)
    logits_B_V = logits_B_V.float() / temperature
    if 0 < top_k < logits_B_V.shape[-1]:
        kth_B_1 = torch.topk(logits_B_V, top_k, dim=-1).values[:, -1:]
        logits_B_V = logits_B_V.masked_fill(logits_B_V < kth_B_1, float("-inf"))
    if top_p < 1.0:
        sorted_B_V, order_B_V = torch.sort(logits_B_V, dim=-1, descending=True)
        cumulative_B_V = sorted_B_V.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already reaches top_p (the top token always stays).
        drop_sorted_B_V = (cumulative_B_V - sorted_B_V.softmax(dim=-1)) >= top_p
        drop_sorted_B_V[:, 0] = False  # top_p = 0 still keeps the most likely token
        drop_B_V = drop_sorted_B_V.scatter(-1, order_B_V, drop_sorted_B_V)
        logits_B_V = logits_B_V.masked_fill(drop_B_V, float("-inf"))
    probs_B_V = logits_B_V.softmax(dim=-1)
    return torch.multinomial(probs_B_V, 1, generator=generator).squeeze(-1)
