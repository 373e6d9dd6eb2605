"""Run with: python -m pytest test_grader.py"""

from pathlib import Path

from lambda_function import lambda_handler

from openrft.rewards import build_grader


def test_handler_follows_the_bedrock_contract():
    event = [
        {
            "id": "r1:0",
            "messages": [
                {"role": "user", "content": "Label: 'great'"},
                {"role": "assistant", "content": "positive"},
            ],
            "metadata": {"reference_answer": "positive"},
        }
    ]
    [result] = lambda_handler(event, None)
    assert result["id"] == "r1:0" and result["aggregate_reward_score"] == 1.0
    assert {m["name"] for m in result["metrics_list"]} == {"correct", "concise"}


def test_grader_file_is_valid():
    assert build_grader(str(Path(__file__).parent / "grader.toml")).name == "lambda"
