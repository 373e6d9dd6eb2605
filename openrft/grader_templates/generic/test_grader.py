"""Run with: python -m pytest test_grader.py"""

from pathlib import Path

from openrft.rewards import build_grader
from openrft.types import Sample

GRADER = Path(__file__).parent / "grader.toml"


def sample(response: str) -> Sample:
    prompt = {"role": "user", "content": "Is this review positive or negative? 'Loved it.'"}
    answer = {"role": "assistant", "content": response}
    return Sample(
        id="r1:0", messages=(prompt, answer), reference_answer="positive", example_id="r1"
    )


def test_reward_function_through_the_grader():
    grader = build_grader(str(GRADER))
    right, wrong = grader.grade([sample("Positive"), sample("It is hard to say, honestly.")])
    assert right.score == 1.1 and right.components["correct"] == 1.0
    assert wrong.score == 0.0 and wrong.error is None
