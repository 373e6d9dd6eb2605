"""A data set report for checking a file before training: counts, prompt lengths, errors.

Owns `DatasetSummary` and its plain-text rendering. Unlike `load_examples` it never raises
for bad rows: it runs the same per-line validator and lists every problem it found.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from openrft.data.load import validate_file
from openrft.data.render import encode_prompt
from openrft.errors import RowError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PERCENTILES: tuple[int, ...] = (50, 90, 99)


@dataclass
class DatasetSummary:
    """What `summarize_file` found in one JSONL file."""

    path: str
    rows: int  # non-blank lines
    valid_rows: int
    role_counts: dict[str, int] = field(default_factory=dict)  # turns per role over valid rows
    rows_without_reference: int = 0  # valid rows whose reference_answer is missing or null
    prompt_token_percentiles: dict[str, int] | None = None  # p50/p90/p99/max; None untokenized
    errors: list[RowError] = field(default_factory=list)


def summarize_file(
    path: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    chat_template: str = "model",
) -> DatasetSummary:
    """Validate every line of `path` and summarise it; prompt lengths need a tokenizer."""
    check = validate_file(path)
    roles: Counter[str] = Counter(m["role"] for e in check.examples for m in e.messages)
    lengths = None
    if tokenizer is not None and check.examples:
        counts = [len(encode_prompt(e.messages, tokenizer, chat_template)) for e in check.examples]
        lengths = _percentiles(counts)
    return DatasetSummary(
        path=str(path),
        rows=check.rows,
        valid_rows=len(check.examples),
        role_counts=dict(sorted(roles.items())),
        rows_without_reference=sum(e.reference_answer is None for e in check.examples),
        prompt_token_percentiles=lengths,
        errors=check.errors,
    )


def _percentiles(values: list[int]) -> dict[str, int]:
    """Nearest-rank percentiles: always a real prompt's length, never an interpolation."""
    ordered = sorted(values)
    result = {f"p{p}": ordered[max(math.ceil(p / 100 * len(ordered)), 1) - 1] for p in PERCENTILES}
    result["max"] = ordered[-1]
    return result


def format_summary(summary: DatasetSummary) -> str:
    """A plain-text report; every error gets its own "file:line: field: message" line."""
    lines = [
        f"file: {summary.path}",
        f"rows: {summary.rows} ({summary.valid_rows} valid, {len(summary.errors)} error(s))",
    ]
    roles = ", ".join(f"{role} {n}" for role, n in summary.role_counts.items()) or "none"
    lines.append(f"turns by role: {roles}")
    lines.append(f"rows without reference_answer: {summary.rows_without_reference}")
    if summary.prompt_token_percentiles is not None:
        stats = ", ".join(f"{k} {v}" for k, v in summary.prompt_token_percentiles.items())
        lines.append(f"prompt tokens: {stats}")
    if summary.errors:
        lines.append("errors:")
        # RowError's str is "file:line: field: message" (the field is left out when empty).
        lines += [f"  {e}" for e in summary.errors]
    return "\n".join(lines)
