"""The grader contract: a batch of samples in, one `Grade` per sample out, in order.

Owns the `Grader` protocol, the checks that turn a user function's return value into a
`Grade`, and `grade_safely`, the wrapper the training loop calls so that no grader failure
becomes a silent 0 or a NaN reward.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from openrft.types import Grade, Sample

MESSAGE_LIMIT = 500  # characters kept of a grader's error text; a 1 MB traceback helps no one


class InvalidOutput(ValueError):
    """A grader produced a value that is not a finite real number."""


@runtime_checkable
class Grader(Protocol):
    """Scores a batch of samples; returns one Grade per sample, in the same order."""

    name: str

    def grade(self, samples: Sequence[Sample]) -> list[Grade]: ...


def clip_message(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Shortens an error message so that adversarial output cannot flood logs and metrics."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _show(value: object) -> str:
    return clip_message(f"{type(value).__name__} {value!r}", 120)


def check_score(value: object) -> float:
    """Returns `value` as a finite float; raises InvalidOutput otherwise.

    bool counts as 0/1 (a pass/fail check is a legitimate reward); str, None and
    containers are rejected rather than coerced, because coercing hides grader bugs.
    """
    if not isinstance(value, numbers.Real):
        raise InvalidOutput(f"expected a real number, got {_show(value)}")
    try:
        score = float(value)
    except (OverflowError, ValueError, TypeError) as exc:
        raise InvalidOutput(f"cannot convert {_show(value)} to float: {exc}") from exc
    if not math.isfinite(score):
        raise InvalidOutput(f"score must be finite, got {score}")
    return score


def to_grade(value: object, name: str, latency_s: float) -> Grade:
    """Converts a reward function's return value to a Grade.

    - a number: the score; components are `{name: score}`.
    - a dict of numbers: the components. The score is the value under "score" when that
      key exists, else the SUM of the components (as TRL sums several reward functions).
    - anything else, an empty dict, or a dict with a bad value: an invalid_output failure.
    """
    if isinstance(value, Mapping):
        return _dict_to_grade(value, name, latency_s)
    try:
        score = check_score(value)
    except InvalidOutput as exc:
        message = (
            f"{name} returned an invalid reward: {exc}; expected a number or a dict of numbers"
        )
        return Grade.failed("invalid_output", message, latency_s)
    return Grade(score=score, components={name: score}, latency_s=latency_s)


def _dict_to_grade(value: Mapping[object, object], name: str, latency_s: float) -> Grade:
    if not value:
        return Grade.failed("invalid_output", f"{name} returned an empty dict", latency_s)
    components: dict[str, float] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            message = f"{name} returned a dict with a non-string key {_show(key)}"
            return Grade.failed("invalid_output", message, latency_s)
        try:
            components[key] = check_score(item)
        except InvalidOutput as exc:
            message = f"{name} returned an invalid value under key {key!r}: {exc}"
            return Grade.failed("invalid_output", message, latency_s)
    score = components["score"] if "score" in components else sum(components.values())
    if not math.isfinite(score):  # a sum of huge finite parts can still overflow
        message = f"{name} components sum to {score}"
        return Grade.failed("invalid_output", message, latency_s)
    return Grade(score=score, components=components, latency_s=latency_s)


class BatchTimeout:
    """A grader whose `grade` call gets at most `timeout_s` of wall-clock time per batch.

    The inner call runs in a daemon thread; past the limit every sample of the batch is a
    `timeout` error. An inner grader with an `interrupt()` method (a Python reward function)
    is then told to stop: it kills the worker process running the call and starts no further
    sample, and the thread ends within a moment. Any other inner call is abandoned (Python
    cannot kill a thread, so it finishes in the background and its result is dropped).
    Per-sample and per-request limits of the graders themselves still apply inside; this
    bounds the whole step's grading."""

    STOP_WAIT_S = 2.0  # how long an interrupted call gets to return before it is abandoned

    def __init__(self, grader: Grader, timeout_s: float):
        self.inner, self.timeout_s = grader, timeout_s
        self.name = str(getattr(grader, "name", type(grader).__name__))
        self.thread_safe = is_thread_safe(grader)

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        outcome: list[list[Grade]] = []
        failure: list[BaseException] = []

        def target() -> None:
            try:
                outcome.append(grade_safely(self.inner, samples))
            except BaseException as exc:  # re-raised below, in the caller's thread
                failure.append(exc)

        thread = threading.Thread(target=target, name=f"grade-{self.name}", daemon=True)
        started = time.perf_counter()
        thread.start()
        thread.join(self.timeout_s)
        if failure:
            raise failure[0]
        if not outcome:
            latency = (time.perf_counter() - started) / max(1, len(samples))
            self._stop(thread)
            message = (
                f"grader {self.name!r} did not finish a batch of {len(samples)} samples within "
                f"reward.batch_timeout_s = {self.timeout_s:g} s"
            )
            return [Grade.failed("timeout", message, latency) for _ in samples]
        return outcome[0]

    def close(self) -> None:
        """Closes the inner grader, when it has anything to close (worker processes)."""
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    def _stop(self, thread: threading.Thread) -> None:
        interrupt = getattr(self.inner, "interrupt", None)
        if callable(interrupt):
            interrupt()
            thread.join(self.STOP_WAIT_S)


def is_thread_safe(grader: Grader) -> bool:
    """Whether `grader.grade` may run in several threads at once: graders say so with a
    `thread_safe` attribute. User code (a Python reward function, a sandboxed program's
    harness) is not assumed to be: it is graded one batch at a time."""
    return bool(getattr(grader, "thread_safe", False))


def with_batch_timeout(grader: Grader, timeout_s: float) -> Grader:
    """`grader` with a per-batch wall-clock limit; 0 means none."""
    return BatchTimeout(grader, timeout_s) if timeout_s > 0 else grader


def grade_safely(grader: Grader, samples: Sequence[Sample]) -> list[Grade]:
    """Runs `grader.grade` and guarantees one well-formed Grade per sample.

    A raising grader gives every sample a runtime_error; a wrong number of grades gives
    every sample an invalid_output; a Grade without an error whose score (or a component)
    is missing or not finite becomes an invalid_output. This is what the training loop calls.
    """
    if not samples:
        return []
    name = str(getattr(grader, "name", type(grader).__name__))
    start = time.perf_counter()
    try:
        grades = grader.grade(samples)
    except Exception as exc:  # any grader bug must surface as counted errors, not a crash
        latency = (time.perf_counter() - start) / len(samples)
        message = clip_message(f"grader {name!r} raised {type(exc).__name__}: {exc}")
        return [Grade.failed("runtime_error", message, latency) for _ in samples]
    if not isinstance(grades, list | tuple) or len(grades) != len(samples):
        latency = (time.perf_counter() - start) / len(samples)
        count = len(grades) if isinstance(grades, list | tuple) else type(grades).__name__
        message = f"grader {name!r} returned {count} grades for {len(samples)} samples"
        return [Grade.failed("invalid_output", message, latency) for _ in samples]
    return [_check_grade(grade, name) for grade in grades]


def _check_grade(grade: object, name: str) -> Grade:
    if not isinstance(grade, Grade):
        return Grade.failed("invalid_output", f"grader {name!r} returned {_show(grade)}")
    if grade.error is not None:
        if grade.score is None:
            return grade
        # An error wins over a score: a half-failed grade must not train the policy.
        return Grade.failed(grade.error.kind, grade.error.message, grade.latency_s)
    try:
        check_score(grade.score)
        for key, value in grade.components.items():
            try:
                check_score(value)
            except InvalidOutput as exc:
                raise InvalidOutput(f"component {key!r}: {exc}") from exc
    except InvalidOutput as exc:
        message = f"grader {name!r} returned a bad grade: {exc}"
        return Grade.failed("invalid_output", message, grade.latency_s)
    return grade
