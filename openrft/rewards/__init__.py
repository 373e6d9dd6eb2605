"""Rewards: graders that score a batch of samples, one `Grade` per sample, never a silent 0.

`build_grader` turns the `reward.grader` config string into a Grader; the training loop
calls `grade_safely`, which turns any grader failure into typed, counted errors.
"""

from openrft.rewards.exact_label import ExactLabelGrader, normalize_label
from openrft.rewards.grader import (
    Grader,
    InvalidOutput,
    check_score,
    grade_safely,
    to_grade,
)
from openrft.rewards.math_answer import MathAnswerGrader, extract_final_answer, parse_number
from openrft.rewards.python_function import PythonFunctionGrader
from openrft.rewards.registry import BUILTIN_GRADERS, build_grader

__all__ = [
    "BUILTIN_GRADERS",
    "ExactLabelGrader",
    "Grader",
    "InvalidOutput",
    "MathAnswerGrader",
    "PythonFunctionGrader",
    "build_grader",
    "check_score",
    "extract_final_answer",
    "grade_safely",
    "normalize_label",
    "parse_number",
    "to_grade",
]
