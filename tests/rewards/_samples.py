"""Builds real `Sample`s for the grader tests: one prompt turn plus the generated answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from openrft.types import Message, Sample


def make_sample(
    response: str,
    reference: Any = None,
    metadata: Mapping[str, Any] | None = None,
    example_id: str = "ex-1",
    index: int = 0,
) -> Sample:
    messages: tuple[Message, ...] = (
        {"role": "user", "content": "What is the answer?"},
        {"role": "assistant", "content": response},
    )
    return Sample(
        id=f"{example_id}:{index}",
        messages=messages,
        reference_answer=reference,
        metadata=dict(metadata or {}),
        example_id=example_id,
    )
