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


def step_usage(record: Mapping[str, Any]) -> dict[str, int] | None:
    """One metrics line's `usage/*` counts, or None for a line without them (step 0, a
    validation-only line)."""
    step = record.get(names.STEP)
    if not isinstance(step, int) or step <= 0:
        return None
    counts = {
        key.removeprefix(names.USAGE_PREFIX): int(value)
        for key, value in record.items()
        if key.startswith(names.USAGE_PREFIX) and isinstance(value, int | float)
    }
    return counts or None


class RunningUsage:
    """Usage totals kept up to date one metrics line at a time (the job server's metrics
    cache feeds it): a step logged twice (a resumed run rewrites the steps after its
    checkpoint) counts once, its last line winning."""

    def __init__(self, last_step: int | None = None):
        self.last_step = last_step  # count steps up to this one (a checkpoint's); None: all
        self.by_step: dict[int, dict[str, int]] = {}
        self.totals: dict[str, int] = {}

    def add(self, record: Mapping[str, Any]) -> None:
        counts = step_usage(record)
        if counts is None:
            return
        step = record[names.STEP]
        if self.last_step is not None and step > self.last_step:
            return
        for name, value in self.by_step.pop(step, {}).items():
            self.totals[name] -= value
        self.by_step[step] = counts
        for name, value in counts.items():
            self.totals[name] = self.totals.get(name, 0) + value


def usage_totals(
    records: Iterable[Mapping[str, Any]], last_step: int | None = None
) -> dict[str, int]:
    """The run's totals: each step's `usage/*` counts summed, a step logged twice counted
    once, its last line winning. `last_step`: the totals up to that step (a checkpoint's),
    not the whole run's."""
    running = RunningUsage(last_step)
    for record in records:
        running.add(record)
    return dict(running.totals)
