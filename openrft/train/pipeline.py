"""Grading while the rollouts are still being generated.

A step's grading used to start when its last completion was sampled, so a slow grader (a
Lambda, an LLM judge) added its whole latency to the step. Here the engine hands each group
on as soon as its G samples are done (`RolloutEngine.generate(on_group=...)`), and the group
is graded in a worker thread while the rest generate. What grading time is left after the
last group is generated is `time/reward_exposed_s`; `time/reward_s` is the time some grading
was running.

    with GradingPipeline(grader, workers=4) as pipeline:
        engine.generate(prompts, params, on_group=lambda i, group: pipeline.submit(i, ...))
        pipeline.generation_done()
        grades, timing = pipeline.results(len(prompts))

A grader that is not thread-safe (user code, `openrft.rewards.grader.is_thread_safe`) gets one
worker: its groups are graded one after another, still beside the generation. Graders on a
Ray cluster (openrft.train.ray_workers) are thread-safe: each call goes to an actor.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

from openrft.config import JobConfig
from openrft.rewards import Grader, grade_safely
from openrft.rewards.grader import is_thread_safe
from openrft.types import Grade, Sample


@dataclass(frozen=True)
class GradingPlan:
    """How a step grades its groups (from `reward.pipeline` and `cluster.reward_workers`)."""

    pipelined: bool = True  # grade each group as soon as it is generated
    workers: int = 1  # groups graded at once, where the grader is thread-safe


def grading_plan(config: JobConfig) -> GradingPlan:
    """A job's plan: `reward.pipeline`, and `cluster.reward_workers` groups at once."""
    return GradingPlan(config.reward.pipeline, config.cluster.reward_workers)


PIPELINED = GradingPlan()  # one worker, each group graded as soon as it is generated


@dataclass(frozen=True)
class GradingTime:
    busy_s: float  # wall time during which at least one group was being graded
    exposed_s: float  # grading time after the generation finished (not hidden behind it)


def busy_time(intervals: Sequence[tuple[float, float]]) -> float:
    """The length of the union of (start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def exposed_time(intervals: Sequence[tuple[float, float]], generated_at: float) -> float:
    """How much of the grading ran after `generated_at` (the end of generation)."""
    return busy_time([(max(s, generated_at), e) for s, e in intervals if e > generated_at])


class GradingPipeline:
    """Grades submitted groups in up to `workers` threads (1 for a grader that is not
    thread-safe); `results` waits for them all. Use as a context manager."""

    def __init__(self, grader: Grader, workers: int = 1):
        self.grader = grader
        threads = workers if is_thread_safe(grader) else 1
        self.executor = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="grade")
        self.futures: dict[int, Future[list[Grade]]] = {}
        self.intervals: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        self.generated_at: float | None = None

    def __enter__(self) -> GradingPipeline:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        # On an error, graders already running finish in the background; none start.
        self.executor.shutdown(wait=error is None, cancel_futures=True)

    def submit(self, index: int, samples: Sequence[Sample]) -> None:
        """Start grading group `index` (once per index)."""
        if index in self.futures:
            raise ValueError(f"group {index} was handed to the grader twice")
        self.futures[index] = self.executor.submit(self._grade, list(samples))

    def submitted(self, index: int) -> bool:
        return index in self.futures

    def generation_done(self) -> None:
        """Mark the end of generation: grading after it is exposed."""
        self.generated_at = time.monotonic()

    def results(self, count: int) -> tuple[list[list[Grade]], GradingTime]:
        """Every group's grades (indices 0 .. count-1, all submitted), once graded."""
        missing = [i for i in range(count) if i not in self.futures]
        if missing:
            raise ValueError(f"groups {missing} were never handed to the grader")
        grades = [self.futures[i].result() for i in range(count)]
        generated_at = self.generated_at if self.generated_at is not None else time.monotonic()
        with self.lock:
            intervals = list(self.intervals)
        return grades, GradingTime(busy_time(intervals), exposed_time(intervals, generated_at))

    def _grade(self, samples: list[Sample]) -> list[Grade]:
        started = time.monotonic()
        try:
            return grade_safely(self.grader, samples)
        finally:
            with self.lock:
                self.intervals.append((started, time.monotonic()))
