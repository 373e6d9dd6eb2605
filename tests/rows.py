"""Training rows written by hand for the forward and update tests."""

from __future__ import annotations

from collections.abc import Sequence

from openrft.types import TrainRow


def row(
    ids: tuple[int, ...], prompt_length: int, advantage: float, mask: Sequence[int] | None = None
) -> TrainRow:
    """A row whose response is trained where `mask` says (everywhere by default), each
    trained token with `advantage`."""
    length = len(ids) - prompt_length
    trained = tuple(bool(m) for m in mask) if mask is not None else (True,) * length
    return TrainRow(ids, prompt_length, trained, tuple(advantage * t for t in trained))
