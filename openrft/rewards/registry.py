"""Maps a `reward.grader` config string to a Grader: a built-in name or a function reference.

Built-ins are pure and fast, so they take no timeout; a reference (anything with a ":")
becomes a PythonFunctionGrader that enforces `timeout_s` per sample.
"""

from __future__ import annotations

from collections.abc import Callable

from openrft.errors import GraderError
from openrft.rewards.exact_label import ExactLabelGrader
from openrft.rewards.grader import Grader
from openrft.rewards.math_answer import MathAnswerGrader
from openrft.rewards.python_function import REFERENCE_SYNTAX, PythonFunctionGrader

BUILTIN_GRADERS: dict[str, Callable[[], Grader]] = {
    "exact_label": ExactLabelGrader,
    "math_answer": MathAnswerGrader,
}


def build_grader(spec: str, timeout_s: float = 60.0) -> Grader:
    """A built-in grader by name, or a PythonFunctionGrader for a reference with a ":"."""
    name = spec.strip()
    if name in BUILTIN_GRADERS:
        return BUILTIN_GRADERS[name]()
    if ":" in name:
        return PythonFunctionGrader(name, timeout_s=timeout_s)
    builtins = ", ".join(sorted(BUILTIN_GRADERS))
    raise GraderError(
        f"unknown grader {spec!r}: use a built-in ({builtins}) or a reward function "
        f"reference {REFERENCE_SYNTAX}"
    )
