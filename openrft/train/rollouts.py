"""From prompts to graded rollout groups: render, generate G completions, grade, compute
advantages, and summarise the step's rewards and completions as metrics."""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from openrft.algo import group_advantages
from openrft.rewards import Grader, grade_safely
from openrft.rollout.engine import RolloutEngine
from openrft.types import Example, Grade, RolloutGroup, Sample, SamplingParams


@dataclass(frozen=True)
class Timing:
    rollout_s: float
    reward_s: float


def collect_groups(
    engine: RolloutEngine,
    examples: Sequence[Example],
    prompt_ids: Sequence[Sequence[int]],
    params: SamplingParams,
    grader: Grader,
) -> tuple[list[RolloutGroup], Timing]:
    started = time.monotonic()
    completions = engine.generate(prompt_ids, params)
    generated = time.monotonic()
    samples = [
        Sample(
            id=f"{example.id}:{k}",
            messages=(*example.messages, {"role": "assistant", "content": c.text}),
            reference_answer=example.reference_answer,
            metadata=example.metadata,
            example_id=example.id,
            completion_tokens=len(c.token_ids),
        )
        for example, group in zip(examples, completions, strict=True)
        for k, c in enumerate(group)
    ]
    grades = grade_safely(grader, samples)
    groups = []
    for p, (example, group) in enumerate(zip(examples, completions, strict=True)):
        n = len(group)
        groups.append(
            RolloutGroup(example, tuple(prompt_ids[p]), list(group), grades[p * n : (p + 1) * n])
        )
    return groups, Timing(generated - started, time.monotonic() - generated)


def assign_advantages(groups: list[RolloutGroup], scaling: str, error_score: float | None) -> None:
    """Group-relative advantages; a failed grade without `error_score` gets NaN (left out)."""
    rewards_P_G = torch.tensor(
        [[_training_score(g, error_score) for g in group.grades] for group in groups],
        dtype=torch.float64,
    )
    valid_P_G = ~rewards_P_G.isnan()
    advantages_P_G = group_advantages(rewards_P_G, scaling, valid_P_G=valid_P_G)
    advantages_P_G = advantages_P_G.masked_fill(~valid_P_G, math.nan)
    for group, row in zip(groups, advantages_P_G.tolist(), strict=True):
        group.advantages = row


def _training_score(grade: Grade, error_score: float | None) -> float:
    if grade.error is None and grade.score is not None:
        return grade.score
    return error_score if error_score is not None else math.nan


def reward_metrics(groups: list[RolloutGroup], prefix: str = "reward") -> dict[str, float]:
    """reward/{mean,std,min,max}, per-component means, zero-std group share, error counts."""
    grades = [g for group in groups for g in group.grades]
    scores = [g.score for g in grades if g.error is None and g.score is not None]
    metrics: dict[str, float] = {
        f"{prefix}/mean": statistics.fmean(scores) if scores else math.nan,
        f"{prefix}/std": statistics.pstdev(scores) if len(scores) > 1 else 0.0,
        f"{prefix}/min": min(scores) if scores else math.nan,
        f"{prefix}/max": max(scores) if scores else math.nan,
    }
    components: dict[str, list[float]] = {}
    for grade in grades:
        for name, value in grade.components.items():
            components.setdefault(name, []).append(value)
    for name, values in sorted(components.items()):
        metrics[f"{prefix}/{name}/mean"] = statistics.fmean(values)
    flat_groups = 0
    for group in groups:
        valid = {g.score for g in group.grades if g.error is None}
        flat_groups += len(valid) <= 1
    metrics[f"{prefix}/frac_zero_std_groups"] = flat_groups / len(groups) if groups else 0.0
    errors = Counter(g.error.kind for g in grades if g.error is not None)
    metrics[f"{prefix}/error_rate"] = sum(errors.values()) / len(grades) if grades else 0.0
    for kind, count in sorted(errors.items()):
        metrics[f"{prefix}/errors/{kind}"] = count
    return metrics


def completion_metrics(groups: list[RolloutGroup]) -> dict[str, float]:
    completions = [c for group in groups for c in group.completions]
    lengths = [len(c.token_ids) for c in completions]
    return {
        "completion/length_mean": statistics.fmean(lengths) if lengths else 0.0,
        "completion/length_max": max(lengths, default=0),
        "completion/truncated_ratio": (
            sum(c.finish_reason == "length" for c in completions) / len(completions)
            if completions
            else 0.0
        ),
    }


def rollout_records(groups: list[RolloutGroup], step: int) -> list[dict]:
    """One JSON record per prompt for rollouts.jsonl (read by the dashboard's rollout viewer)."""
    records = []
    for group in groups:
        records.append(
            {
                "step": step,
                "example_id": group.example.id,
                "prompt": [dict(m) for m in group.example.messages],
                "reference_answer": group.example.reference_answer,
                "completions": [
                    {
                        "text": c.text,
                        "finish_reason": c.finish_reason,
                        "tokens": len(c.token_ids),
                        "score": g.score,
                        "components": dict(g.components),
                        "error": None
                        if g.error is None
                        else {"kind": g.error.kind, "message": g.error.message},
                        "advantage": None if math.isnan(a) else a,
                    }
                    for c, g, a in zip(
                        group.completions,
                        group.grades,
                        group.advantages or [math.nan] * len(group.grades),
                        strict=True,
                    )
                ],
            }
        )
    return records
