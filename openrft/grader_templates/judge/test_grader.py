"""Run with: python -m pytest test_grader.py (the scoring test needs the judge endpoint up)."""

import os
from pathlib import Path

import httpx
import pytest

from openrft.rewards import build_grader
from openrft.types import Sample

GRADER = Path(__file__).parent / "grader.toml"


def test_grader_file_is_valid():
    assert build_grader(str(GRADER)).name == "judge"


def judge_is_up() -> bool:
    try:
        return httpx.get("http://127.0.0.1:8001/v1/models", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.skipif(not judge_is_up(), reason="no judge endpoint at 127.0.0.1:8001")
def test_judge_scores_or_reports_a_typed_error():
    os.environ.setdefault("OPENRFT_JUDGE_KEY", "local")
    prompt = {"role": "user", "content": "What is the capital of France?"}
    answer = {"role": "assistant", "content": "Paris."}
    [grade] = build_grader(str(GRADER)).grade(
        [Sample(id="q:0", messages=(prompt, answer), example_id="q")]
    )
    assert (grade.error is None and 0.0 <= grade.score <= 1.0) or grade.error.kind in {
        "parse_error",
        "judge_refusal",
    }
