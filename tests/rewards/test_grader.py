"""The grader contract: score checks, return-value conversion and the grade_safely wrapper."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import pytest

from openrft.rewards import (
    ExactLabelGrader,
    Grader,
    InvalidOutput,
    MathAnswerGrader,
    check_score,
    grade_safely,
    to_grade,
)
from openrft.types import Grade, GradeError, Sample

from ._samples import make_sample


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, 1.0),
        (False, 0.0),
        (3, 3.0),
        (-1, -1.0),
        (0.25, 0.25),
        (Fraction(1, 2), 0.5),
        (1e308, 1e308),
    ],
)
def test_check_score_accepts_real_numbers(value: object, expected: float) -> None:
    score = check_score(value)
    assert score == expected and type(score) is float


@pytest.mark.parametrize(
    "value",
    ["1", "", None, [1.0], {"score": 1.0}, complex(1, 0), math.nan, math.inf, -math.inf, 10**400],
)
def test_check_score_rejects_everything_else(value: object) -> None:
    with pytest.raises(InvalidOutput):
        check_score(value)


@pytest.mark.parametrize(
    ("value", "score", "components"),
    [
        (0.5, 0.5, {"fn": 0.5}),
        (1, 1.0, {"fn": 1.0}),
        (True, 1.0, {"fn": 1.0}),
        ({"correct": 1.0, "format": 0.5}, 1.5, {"correct": 1.0, "format": 0.5}),
        ({"score": 0.7, "format": 1}, 0.7, {"score": 0.7, "format": 1.0}),
        ({"only": False}, 0.0, {"only": 0.0}),
    ],
)
def test_to_grade_converts_numbers_and_dicts(
    value: object, score: float, components: dict[str, float]
) -> None:
    grade = to_grade(value, "fn", latency_s=0.125)
    assert grade == Grade(score=score, components=components, latency_s=0.125)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("0.5", "str '0.5'"),
        (None, "NoneType"),
        ([1.0], "list"),
        (math.nan, "finite"),
        (-math.inf, "finite"),
        ({}, "empty dict"),
        ({"ok": 1.0, "bad": "high"}, "'bad'"),
        ({"ok": 1.0, "bad": math.nan}, "'bad'"),
        ({1: 1.0}, "non-string key"),
        ({"a": 1e308, "b": 1e308}, "sum to inf"),
        ({"score": None, "format": 1.0}, "'score'"),
    ],
)
def test_to_grade_fails_loudly(value: object, fragment: str) -> None:
    grade = to_grade(value, "fn", latency_s=0.0)
    assert grade.score is None
    assert grade.error is not None and grade.error.kind == "invalid_output"
    assert fragment in grade.error.message


class ConstantGrader:
    """A well-behaved grader: every sample gets the same score."""

    name = "constant"

    def __init__(self, score: float = 0.5):
        self.score = score
        self.calls = 0

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        self.calls += 1
        return [Grade(self.score, {"constant": self.score}) for _ in samples]


class RaisingGrader:
    name = "raising"

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        raise KeyError("reference_answer")


class ShortGrader:
    name = "short"

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        return [Grade(1.0)] * (len(samples) - 1)


class FixedGrader:
    """Returns exactly the given objects, to feed grade_safely malformed grades."""

    name = "fixed"

    def __init__(self, grades: list[object]):
        self.grades = grades

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        return self.grades  # type: ignore[return-value]


def test_builtins_satisfy_the_protocol() -> None:
    assert isinstance(ExactLabelGrader(), Grader)
    assert isinstance(MathAnswerGrader(), Grader)
    assert isinstance(ConstantGrader(), Grader)


def test_grade_safely_passes_good_grades_through() -> None:
    samples = [make_sample("a", index=i) for i in range(3)]
    assert grade_safely(ConstantGrader(0.5), samples) == [Grade(0.5, {"constant": 0.5})] * 3


def test_grade_safely_skips_the_call_for_an_empty_batch() -> None:
    grader = ConstantGrader()
    assert grade_safely(grader, []) == []
    assert grader.calls == 0


def test_a_raising_grader_fails_every_sample_as_runtime_error() -> None:
    grades = grade_safely(RaisingGrader(), [make_sample("a", index=i) for i in range(4)])
    assert len(grades) == 4
    for grade in grades:
        assert grade.score is None and grade.error is not None
        assert grade.error.kind == "runtime_error"
        assert "KeyError" in grade.error.message and "reference_answer" in grade.error.message


def test_a_wrong_number_of_grades_fails_every_sample() -> None:
    grades = grade_safely(ShortGrader(), [make_sample("a", index=i) for i in range(3)])
    assert [g.error.kind for g in grades if g.error] == ["invalid_output"] * 3
    assert "returned 2 grades for 3 samples" in grades[0].error.message  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (Grade(math.nan), "finite"),
        (Grade(math.inf), "finite"),
        (Grade(None), "NoneType"),
        (Grade(1.0, {"length": math.nan}), "'length'"),
        (0.5, "float 0.5"),
        (None, "NoneType None"),
    ],
)
def test_malformed_grades_become_invalid_output(bad: object, fragment: str) -> None:
    good = Grade(1.0, {"fixed": 1.0})
    samples = [make_sample("a", index=i) for i in range(3)]
    grades = grade_safely(FixedGrader([good, bad, good]), samples)
    assert grades[0] == good and grades[2] == good
    assert grades[1].score is None and grades[1].error is not None
    assert grades[1].error.kind == "invalid_output"
    assert fragment in grades[1].error.message


def test_an_error_grade_keeps_its_kind_and_loses_any_score() -> None:
    half_failed = Grade(0.0, error=GradeError("judge_refusal", "refused"))
    failed = Grade.failed("timeout", "slow")
    grades = grade_safely(FixedGrader([half_failed, failed]), [make_sample("a"), make_sample("b")])
    assert grades[0] == Grade.failed("judge_refusal", "refused")
    assert grades[1] == failed


def test_a_batch_over_its_time_limit_is_a_timeout_for_every_sample():
    import threading
    import time

    from openrft.rewards.grader import BatchTimeout, with_batch_timeout

    release = threading.Event()

    class Slow:
        name = "slow"

        def grade(self, samples):
            release.wait(30)
            return [Grade(1.0) for _ in samples]

    samples = [make_sample("a"), make_sample("b", index=1)]
    started = time.monotonic()
    grades = BatchTimeout(Slow(), 0.2).grade(samples)
    release.set()
    assert time.monotonic() - started < 10
    assert [g.error.kind for g in grades] == ["timeout", "timeout"]
    assert "batch_timeout_s = 0.2 s" in grades[0].error.message
    fast = with_batch_timeout(Slow(), 5.0)
    assert [g.score for g in fast.grade(samples)] == [1.0, 1.0] and fast.name == "slow"
    assert isinstance(with_batch_timeout(Slow(), 0), Slow)  # 0: no limit, no wrapper
