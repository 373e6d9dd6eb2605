"""From prompts to graded rollout groups: generate G completions per prompt, grade them, and
summarise the step's rewards and completions as metrics.

`collect_batch` is one RL step's sampling: a round of `train.prompts_per_step` prompts, and
with DAPO's dynamic sampling (`algo.dynamic_sampling`) more rounds, in which groups whose
training rewards are all equal (no GRPO signal) are dropped and more prompts are sampled
until the step's batch is full or `algo.dynamic_sampling_max_rounds` is reached.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from openrft.metrics import names
from openrft.rewards import Grader, grade_safely
from openrft.rollout.engine import RolloutEngine
from openrft.rollout.episodes import Episode
from openrft.train.episodes import (
    EpisodeJob,
    agent_grade,
    combined_grade,
    episode_sample,
    needs_grader,
)
from openrft.train.pipeline import PIPELINED, GradingPipeline, GradingPlan
from openrft.types import Completion, Example, Grade, RolloutGroup, Sample, SamplingParams

# The share of prompts that keep their group, assumed at least this when sizing the next
# round of dynamic sampling (a round never asks for more than a full batch anyway).
MIN_KEEP_RATE = 0.25
ROUND_SEED_STRIDE = 104_729  # a dynamic-sampling round's seed: the step's + stride x round


@dataclass(frozen=True)
class Timing:
    rollout_s: float
    reward_s: float  # time some grading was running
    reward_exposed_s: float = 0.0  # grading time after generation ended (not hidden behind it)


@dataclass(frozen=True)
class RolloutBatch:
    """One step's sampling: every group sampled, and which of them the step trains on."""

    sampled: tuple[RolloutGroup, ...]  # every group sampled this step (reward metrics)
    trained: tuple[int, ...]  # indices into `sampled` of the training groups, in order
    dropped: int  # groups left out for carrying no signal (dynamic sampling)
    rounds: int  # sampling rounds
    prompts_used: int  # prompts taken from the data stream
    timing: Timing
    dynamic: bool = False  # sampled with dynamic sampling (more than one round allowed)

    @property
    def groups(self) -> tuple[RolloutGroup, ...]:
        """The step's training groups (at most prompts_per_step)."""
        return tuple(self.sampled[i] for i in self.trained)


def collect_groups(
    engine: RolloutEngine,
    examples: Sequence[Example],
    prompt_ids: Sequence[Sequence[int]],
    params: SamplingParams,
    grader: Grader,
    episodes: EpisodeJob | None = None,
    grading: GradingPlan = PIPELINED,
) -> tuple[list[RolloutGroup], Timing]:
    """G completions per prompt from `engine` (or G episodes, with `episodes`), graded by
    `grader` (failures typed, counted): each group as soon as it is generated where
    `grading.pipelined` (openrft.train.pipeline), else all of them after generation."""
    started = time.monotonic()
    if episodes is not None:
        completions = episodes.run(engine, examples, prompt_ids, params)
        version, generated = engine.policy_version, time.monotonic()
        samples = [s for e, group in zip(examples, completions, strict=True)
                   for s in group_samples(e, group)]  # fmt: skip
        grades = grade_samples(grader, samples, completions, episodes)
        by_group, offset = [], 0
        for group in completions:
            by_group.append(grades[offset : offset + len(group)])
            offset += len(group)
        reward_s = time.monotonic() - generated
        timing = Timing(generated - started, reward_s, reward_s)
    else:
        with GradingPipeline(grader, grading.workers) as pipeline:

            def on_group(index: int, group: list[Completion]) -> None:
                pipeline.submit(index, group_samples(examples[index], group))

            completions = engine.generate(
                prompt_ids, params, on_group=on_group if grading.pipelined else None
            )
            version, generated = engine.policy_version, time.monotonic()
            pipeline.generation_done()
            for index, group in enumerate(completions):  # those no one handed on
                if not pipeline.submitted(index):
                    on_group(index, group)
            by_group, graded = pipeline.results(len(completions))
        timing = Timing(generated - started, graded.busy_s, graded.exposed_s)
    groups = [
        RolloutGroup(example, tuple(ids), tuple(group), tuple(grades), version)
        for example, ids, group, grades in zip(
            examples, prompt_ids, completions, by_group, strict=True
        )
    ]
    return groups, timing


def group_samples(example: Example, group: Sequence[Completion]) -> list[Sample]:
    """What the grader scores for each completion (or episode) of `example`'s group."""
    return [
        Sample(
            id=f"{example.id}:{k}",
            messages=(*example.messages, {"role": "assistant", "content": c.text}),
            reference_answer=example.reference_answer,
            metadata=example.metadata,
            example_id=example.id,
            completion_tokens=len(c.token_ids),
        )
        if c.episode is None
        else episode_sample(example, k, c)
        for k, c in enumerate(group)
    ]


def grade_samples(
    grader: Grader,
    samples: Sequence[Sample],
    completions: Sequence[Sequence[Completion]],
    episodes: EpisodeJob | None,
) -> list[Grade]:
    """Every sample's grade; an episode's combines the grader's score and the environment's
    per-turn rewards as `env.reward` says (an episode whose environment failed is not
    graded: its grade is the failure)."""
    if episodes is None:
        return grade_safely(grader, samples)
    flat = [c for group in completions for c in group]
    mode = episodes.config.reward
    if episodes.self_scored:  # the agent (or the verifiers taskset) gave the reward
        return [agent_grade(c.episode, mode) for c in flat]
    graded = [i for i, c in enumerate(flat) if c.finish_reason != "error" and needs_grader(mode)]
    by_index = dict(zip(graded, grade_safely(grader, [samples[i] for i in graded]), strict=True))
    return [combined_grade(c.episode, by_index.get(i), mode) for i, c in enumerate(flat)]


class PromptSource(Protocol):
    def take(self, offset: int, count: int) -> tuple[list[Example], list[list[int]]]:
        """`count` prompts (and their token ids) from `offset` on within this step."""
        ...


def collect_batch(
    engine: RolloutEngine,
    grader: Grader,
    prompts: PromptSource,
    params: SamplingParams,
    size: int,
    max_rounds: int,
    flat: Callable[[Sequence[RolloutGroup]], list[bool]],
    episodes: EpisodeJob | None = None,
    grading: GradingPlan = PIPELINED,
) -> RolloutBatch:
    """Sample rounds of groups until `size` of them carry signal, or `max_rounds` (1: no
    dynamic sampling, every group is kept). Round r samples with `params` reseeded (r = 0
    with `params` as given); `flat(groups)` says which groups carry no signal."""
    kept: list[int] = []  # indices into `sampled` of groups with signal
    sampled: list[RolloutGroup] = []
    rollout_s = reward_s = exposed_s = 0.0
    rounds = used = dropped = 0
    while rounds < max_rounds and len(kept) < size:
        missing = size - len(kept)
        rate = max(len(kept) / len(sampled), MIN_KEEP_RATE) if sampled else 1.0
        count = min(size, math.ceil(missing / rate))
        examples, prompt_ids = prompts.take(used, count)
        round_params = replace(params, seed=params.seed + ROUND_SEED_STRIDE * rounds)
        groups, timing = collect_groups(
            engine, examples, prompt_ids, round_params, grader, episodes, grading
        )
        rollout_s, reward_s = rollout_s + timing.rollout_s, reward_s + timing.reward_s
        exposed_s += timing.reward_exposed_s
        no_signal = flat(groups) if max_rounds > 1 else [False] * len(groups)
        kept += [len(sampled) + i for i, empty in enumerate(no_signal) if not empty]
        dropped += sum(no_signal)
        sampled += groups
        used += count
        rounds += 1
    return RolloutBatch(
        sampled=tuple(sampled),
        trained=tuple(kept[:size]),
        dropped=dropped,
        rounds=rounds,
        prompts_used=used,
        timing=Timing(rollout_s, reward_s, exposed_s),
        dynamic=max_rounds > 1,
    )


def reward_metrics(groups: Sequence[RolloutGroup], prefix: str = "reward") -> dict[str, float]:
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


def completion_metrics(groups: Sequence[RolloutGroup]) -> dict[str, float]:
    """Lengths count sampled tokens only (an episode's environment tokens are not the
    model's); the truncated ratio counts completions (episodes) cut by a token cap."""
    completions = [c for group in groups for c in group.completions]
    lengths = [c.episode.sampled_tokens if c.episode else len(c.token_ids) for c in completions]
    metrics = {
        "completion/length_mean": statistics.fmean(lengths) if lengths else 0.0,
        "completion/length_max": max(lengths, default=0),
        "completion/truncated_ratio": (
            sum(c.finish_reason == "length" for c in completions) / len(completions)
            if completions
            else 0.0
        ),
    }
    episodes = [c.episode for c in completions if c.episode is not None]
    return metrics | (episode_metrics(episodes) if episodes else {})


def episode_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """episode/*: turns, tool calls and errors (by kind), finish reasons, all tokens;
    reward/turn_mean where environments give per-turn rewards; time/env_s."""
    count = len(episodes)
    calls = sum(e.tool_calls for e in episodes)
    errors = Counter()
    for episode in episodes:
        errors.update(episode.tool_errors())
    metrics: dict[str, float] = {
        names.EPISODE_TURNS: statistics.fmean(len(e.turns) for e in episodes),
        names.EPISODE_TOOL_CALLS: statistics.fmean(e.tool_calls for e in episodes),
        names.EPISODE_TOOL_ERRORS: sum(errors.values()),
        names.EPISODE_TOOL_ERROR_RATE: sum(errors.values()) / max(1, calls),
        names.EPISODE_TOKENS: statistics.fmean(len(e.completion().token_ids) for e in episodes),
        names.ENV_S: sum(e.env_s for e in episodes),
    }
    for kind, number in sorted(errors.items()):
        metrics[names.EPISODE_TOOL_ERRORS_PREFIX + kind] = number
    reasons = Counter(e.finish_reason for e in episodes)
    for reason in ("stop", "length", "max_turns", "timeout", "error"):
        metrics[names.EPISODE_FINISH_PREFIX + reason] = reasons.get(reason, 0) / count
    turn_rewards = [t.reward for e in episodes for t in e.turns if t.reward is not None]
    if turn_rewards:
        metrics[names.TURN_REWARD_MEAN] = statistics.fmean(turn_rewards)
    reported: dict[str, list[float]] = {}
    for episode in episodes:
        for name, value in episode.env_metrics().items():
            reported.setdefault(name, []).append(value)
    for name, values in sorted(reported.items()):
        metrics[names.ENV_METRIC_PREFIX + name] = statistics.fmean(values)
    if any(e.outcome is not None or e.branches for e in episodes):  # an agent's episodes
        metrics[names.EPISODE_UNMERGED_CALLS] = sum(len(e.branches) for e in episodes)
    return metrics


def rollout_records(
    batch: RolloutBatch, step: int, advantages: Sequence[Sequence[float | None]]
) -> list[dict]:
    """One JSON record per sampled prompt for rollouts.jsonl (read by the dashboard's rollout
    viewer). `advantages[t]` holds training group t's per-sample advantages (None: left out
    of the update); a group sampled but not trained on (dynamic sampling) has "trained": false."""
    by_index = dict(zip(batch.trained, advantages, strict=True))
    records = []
    for index, group in enumerate(batch.sampled):
        values = by_index.get(index, [None] * len(group.grades))
        records.append(
            {
                "step": step,
                "example_id": group.example.id,
                "prompt": [dict(m) for m in group.example.messages],
                "reference_answer": group.example.reference_answer,
                "policy_version": group.policy_version,
                "trained": index in by_index,
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
                        "advantage": a,
                        **({} if c.episode is None else episode_record(c.episode)),
                    }
                    for c, g, a in zip(group.completions, group.grades, values, strict=True)
                ],
            }
        )
    return records


def episode_record(episode: Episode) -> dict:
    """An episode in rollouts.jsonl: the conversation after the prompt in OpenAI shape
    (assistant turns with tool_calls, tool turns with tool_call_id), per-turn rewards,
    token counts, tool errors and the environment's failure, if any."""
    messages = episode.messages()[len(episode.opening) :]
    return {
        "messages": messages,
        "turns": len(episode.turns),
        "turn_rewards": [t.reward for t in episode.turns],
        "turn_metrics": [dict(t.metrics) for t in episode.turns],
        **({"unmerged_calls": len(episode.branches)} if episode.branches else {}),
        "sampled_tokens": episode.sampled_tokens,
        "tool_calls": episode.tool_calls,
        "tool_errors": episode.tool_errors(),
        "env_error": episode.error,
        "env_s": round(episode.env_s, 3),
        **({"opening": [dict(m) for m in episode.opening]} if episode.opening else {}),
    }
