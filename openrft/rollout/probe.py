"""The weight-sync probe: after every sync, a sampling copy of the weights (vLLM's, the
compact decoder's, a bf16 copy's) must score a fixed token sequence as the trainer does.

Two failures are caught: a copy that computes another model (its log-probs differ from the
trainer's by more than a tolerance: wrong weights, a partly applied sync, another dtype than
asked), and a stale copy (the trainer's log-probs of the probe moved since the last sync, the
copy's did not). Either stops the job with WeightSyncError instead of letting it train on
samples from weights it no longer has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from openrft.errors import WeightSyncError
from openrft.metrics import names

# How the trainer scores the probe: the log-prob of each token after the first under `policy`.
# The trainer's plain forward (openrft.train.forward.sequence_logprobs) is passed in, so the
# probe compares with exactly what training computes.
TrainerLogprobs = Callable[[nn.Module, Sequence[int]], torch.Tensor]

# The trainer's probe log-probs moved by more than this (mean nats per token): the copy's
# must have moved too.
MOVED = 1e-5


class WeightSyncProbe:
    """Compares a sampler's log-probs of the probe with the trainer's, sync after sync.

    `still`: the largest change of the sampler's log-probs that counts as "did not move". An
    in-process copy computes deterministically, so 0 (bit-identical); a server that batches
    requests (vLLM) gets a little room."""

    def __init__(self, sampler: str, tolerance: float, still: float, setting: str):
        self.sampler = sampler  # names the copy in errors: "vLLM", "the compact decoder"
        self.tolerance = tolerance
        self.still = still
        self.setting = setting  # the config field that sets the tolerance, for the message
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None  # (trainer, sampler)

    def check(self, trainer: torch.Tensor, sampler: torch.Tensor, version: int) -> dict[str, float]:
        """Raise WeightSyncError for a copy that differs or did not move; else the metrics."""
        gap = (sampler - trainer).abs().mean().item()
        shift = float("nan")
        if self.last is not None:
            trainer_shift = (trainer - self.last[0]).abs().mean().item()
            shift = (sampler - self.last[1]).abs().mean().item()
            if trainer_shift > MOVED and shift <= self.still:
                raise WeightSyncError(
                    f"sync {version}: the trainer's log-probs of the probe moved by "
                    f"{trainer_shift:.3g} nats per token but {self.sampler}'s did not change: "
                    f"it is still sampling from the previous weights"
                )
        if gap > self.tolerance:
            raise WeightSyncError(
                f"sync {version}: {self.sampler}'s log-probs of the probe differ from the "
                f"trainer's by {gap:.3g} nats per token ({self.setting} = {self.tolerance}): "
                f"it does not compute the trainer's model (stale or partly applied weights, "
                f"or another dtype)"
            )
        self.last = (trainer, sampler)
        return {names.PROBE_GAP: gap, names.PROBE_SHIFT: shift}
