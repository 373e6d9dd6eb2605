"""build_grader: built-in names, function references and the error for anything else."""

from __future__ import annotations

from pathlib import Path

import pytest

from openrft.config import RewardConfig
from openrft.errors import GraderError
from openrft.rewards import (
    BUILTIN_GRADERS,
    ExactLabelGrader,
    MathAnswerGrader,
    PythonFunctionGrader,
    build_grader,
)


def test_builtin_names() -> None:
    assert set(BUILTIN_GRADERS) == {"exact_label", "math_answer"}


@pytest.mark.parametrize(
    ("spec", "cls"),
    [
        ("exact_label", ExactLabelGrader),
        ("math_answer", MathAnswerGrader),
        ("  math_answer\n", MathAnswerGrader),
    ],
)
def test_builtins_build(spec: str, cls: type) -> None:
    grader = build_grader(spec)
    assert isinstance(grader, cls)
    assert grader.name == spec.strip()


def test_the_config_default_builds() -> None:
    assert isinstance(build_grader(RewardConfig().grader), ExactLabelGrader)


def test_a_reference_builds_a_python_function_grader(tmp_path: Path) -> None:
    path = tmp_path / "my_reward.py"
    path.write_text("def score_it(response, item):\n    return 1.0\n")
    grader = build_grader(f"{path}:score_it", timeout_s=2.5)
    assert isinstance(grader, PythonFunctionGrader)
    assert grader.name == "score_it" and grader.timeout_s == 2.5


@pytest.mark.parametrize("spec", ["exact", "Math_Answer", "", "reward.py", "llm_judge"])
def test_unknown_specs_list_the_choices(spec: str) -> None:
    with pytest.raises(GraderError) as caught:
        build_grader(spec)
    message = str(caught.value)
    assert repr(spec) in message
    assert "exact_label, math_answer" in message
    assert "'path/to/file.py:function' or 'package.module:function'" in message


def test_a_bad_reference_raises_grader_error(tmp_path: Path) -> None:
    with pytest.raises(GraderError, match="file not found"):
        build_grader(f"{tmp_path}/missing.py:reward")
