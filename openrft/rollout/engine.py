"""The rollout engine interface: token-id prompts in, G completions per prompt out.

The training loop only talks to this protocol, so a vLLM engine (its own weights, synced
after each update) slots in beside the transformers engine without changing the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import nn

from openrft.types import Completion, SamplingParams


class RolloutEngine(Protocol):
    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams
    ) -> list[list[Completion]]:
        """`params.n` completions for each prompt (token ids of the rendered chat prompt)."""
        ...

    def sync_weights(self, policy: nn.Module) -> None:
        """Make the engine sample from `policy`'s current weights (no-op when it shares them)."""
        ...
