"""Run with: python -m pytest test_grader.py"""

from pathlib import Path

from openrft.rewards import build_grader
from openrft.types import Sample

GRADER = Path(__file__).parent / "grader.toml"


def sample(response: str) -> Sample:
    prompt = {"role": "user", "content": "Capital of France? Reply in JSON."}
    return Sample(
        id="q:0", messages=(prompt, {"role": "assistant", "content": response}), example_id="q"
    )


def test_valid_json_scores_high_and_prose_scores_low():
    grader = build_grader(str(GRADER))
    good, prose = grader.grade(
        [sample('{"answer": "Paris", "confidence": 0.9}'), sample("It is Paris.")]
    )
    assert good.score == 1.0 and good.components["schema"] == 1.0
    assert prose.score == 0.2 and prose.components["schema"] == 0.0  # short, but not JSON
