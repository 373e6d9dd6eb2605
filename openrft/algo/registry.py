"""Name -> function tables for every algorithm variant a config can pick by string.

Variant functions live in advantages.py / losses.py; this module only builds the tables and
`lookup`. The dispatching functions there import this module lazily, so there is no cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openrft.algo.advantages import scale_by_batch_std, scale_by_group_std, scale_none
from openrft.algo.losses import (
    aggregate_constant,
    aggregate_sequence_mean,
    aggregate_token_mean,
    kl_k1,
    kl_k3,
)

ADVANTAGE_SCALINGS: dict[str, Callable[..., Any]] = {
    "group": scale_by_group_std,
    "batch": scale_by_batch_std,
    "none": scale_none,
}

LOSS_AGGREGATIONS: dict[str, Callable[..., Any]] = {
    "token_mean": aggregate_token_mean,
    "sequence_mean": aggregate_sequence_mean,
    "constant": aggregate_constant,
}

KL_ESTIMATORS: dict[str, Callable[..., Any]] = {
    "k1": kl_k1,
    "k3": kl_k3,
}


def lookup(table: dict[str, Callable[..., Any]], name: str, what: str) -> Callable[..., Any]:
    """`table[name]`, or a ValueError that names the bad value and every valid choice."""
    try:
        return table[name]
    except KeyError:
        choices = ", ".join(table)
        raise ValueError(f"unknown {what} '{name}'; choose one of: {choices}") from None
