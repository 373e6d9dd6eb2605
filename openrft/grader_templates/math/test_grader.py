"""Run with: python -m pytest test_grader.py"""

from pathlib import Path

from openrft.rewards import build_grader
from openrft.types import Sample

GRADER = Path(__file__).parent / "grader.toml"


def sample(response: str, reference: str) -> Sample:
    prompt = {"role": "user", "content": "What is 3 + 15?"}
    answer = {"role": "assistant", "content": response}
    return Sample(id="q1:0", messages=(prompt, answer), reference_answer=reference, example_id="q1")


def test_scores_correct_and_wrong_answers():
    grader = build_grader(str(GRADER))
    right, wrong, symbolic = grader.grade(
        [
            sample("3 + 15 = 18\n#### 18", "18"),
            sample("#### 17", "18"),
            sample("\\boxed{\\frac{1}{2}}", "0.5"),
        ]
    )
    assert right.score == 1.0 and wrong.score == 0.0 and symbolic.score == 1.0
