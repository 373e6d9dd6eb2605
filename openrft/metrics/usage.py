"""What a run used: per-step counts (`usage/*` in metrics.jsonl) and their totals over the
run (summary.json's "usage", the job API's). Token counts are what a per-token bill would
count: every sample's prompt, every generated token, the trained tokens, an LLM judge's
tokens; grader calls are counted in samples and tool calls in calls."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from openrft.metrics import names

JUDGE_PROMPT_COMPONENT = "judge/prompt_tokens"  # openrft.rewards.judge's grade components
JUDGE_COMPLETION_COMPONENT = "judge/completion_tokens"


def usage_totals(
    records: Iterable[Mapping[str, Any]], last_step: int | None = None
) -> dict[str, int]:
    """The run's totals: each step's `usage/*` counts summed, a step logged twice (a resumed
    run rewrites the steps after its checkpoint) counted once, its last line winning.
    `last_step`: the totals up to that step (a checkpoint's), not the whole run's."""
    by_step: dict[int, Mapping[str, Any]] = {}
    for record in records:
        step = record.get(names.STEP)
        if (
            isinstance(step, int)
            and step > 0
            and (last_step is None or step <= last_step)
            and any(k.startswith(names.USAGE_PREFIX) for k in record)
        ):
            by_step[step] = record
    totals: dict[str, int] = {}
    for record in by_step.values():
        for key, value in record.items():
            if key.startswith(names.USAGE_PREFIX) and isinstance(value, int | float):
                name = key.removeprefix(names.USAGE_PREFIX)
                totals[name] = totals.get(name, 0) + int(value)
    return totals
