"""lambda_host: real handler files served by uvicorn on 127.0.0.1 and called over HTTP, with
httpx directly (the contract) and through the `lambda` grader (end to end)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from openrft.errors import GraderError
from openrft.net import background
from openrft.rewards.lambda_host import load_handler, make_app
from openrft.rewards.remote import GRADER_TYPES
from openrft.rewards.spec import SpecContext

from ._samples import make_sample

REPO = Path(__file__).resolve().parents[2]


def write(folder: Path, source: str, name: str = "handler.py") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def item(item_id: str, answer: str, reference: Any = "42", **metadata: Any) -> dict[str, Any]:
    """A request entry in Bedrock's shape."""
    messages = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": answer}]
    return {
        "id": item_id,
        "messages": messages,
        "metadata": {"reference_answer": reference, **metadata},
    }


def post(url: str, body: Any, path: str = "") -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=10)


LAMBDA_HANDLER = """
    def lambda_handler(event, context):
        return [
            {
                "id": s["id"],
                "aggregate_reward_score": 0.5,
                "metrics_list": [{"name": "remaining_ok", "type": "Metric",
                                  "value": float(context.get_remaining_time_in_millis() > 0)}],
                "context": [context.function_name, len(context.aws_request_id)],
            }
            for s in event
        ]
"""


def test_lambda_handler_gets_the_event_and_a_context(tmp_path: Path) -> None:
    path = write(tmp_path, LAMBDA_HANDLER, "my_fn.py")
    with background(make_app(str(path))) as url:
        health = httpx.get(url + "health", timeout=10).json()
        answers = [post(url, [item("a", "1")], route) for route in ("", "invoke")]
    assert health == {"status": "ok", "handler": f"{path}:lambda_handler", "style": "lambda"}
    for response in answers:
        assert response.status_code == 200
        [result] = response.json()
        assert result["id"] == "a" and result["aggregate_reward_score"] == 0.5
        assert result["context"] == ["my_fn", 36]  # a uuid4 request id
        assert result["metrics_list"][0]["value"] == 1.0


def test_a_raising_handler_gives_500_with_lambdas_error_object(tmp_path: Path) -> None:
    source = """
        def lambda_handler(event, context):
            return event[0]["metadata"]["no_such_key"]
    """
    with background(make_app(str(write(tmp_path, source)))) as url:
        response = post(url, [item("a", "1")])
    assert response.status_code == 500
    body = response.json()
    assert body["errorType"] == "KeyError" and body["errorMessage"] == "'no_such_key'"
    assert any("handler.py" in line for line in body["stackTrace"])


def test_an_unserializable_result_is_a_marshal_error(tmp_path: Path) -> None:
    source = "def lambda_handler(event, context):\n    return {object()}\n"
    with background(make_app(str(write(tmp_path, source)))) as url:
        response = post(url, [])
    assert response.status_code == 500
    assert response.json()["errorType"] == "Runtime.MarshalError"


def test_a_body_that_is_not_json_is_a_400(tmp_path: Path) -> None:
    with background(make_app(str(write(tmp_path, LAMBDA_HANDLER)))) as url:
        response = httpx.post(url, content=b"{nope", timeout=10)
    assert response.status_code == 400
    assert response.json()["errorType"] == "Runtime.UnmarshalError"


GRADE_FILE = """
    import json

    def grade(sample, item):
        # OpenAI python-grader style: sample.output_text, item = the dataset row
        assert sample["choices"][0]["message"]["content"] == sample["output_text"]
        assert item["messages"][-1]["role"] == "user" and item["level"] == 3
        return float(sample["output_text"].strip() == item["reference_answer"])
"""


def test_an_openai_grade_function_is_wrapped_into_the_contract(tmp_path: Path) -> None:
    path = write(tmp_path, GRADE_FILE)
    top_level = item("b", "7", level=3)
    top_level["reference_answer"] = top_level["metadata"].pop("reference_answer")
    with background(make_app(str(path))) as url:
        style = httpx.get(url + "health", timeout=10).json()["style"]
        response = post(url, [item("a", "42", level=3), top_level])
    assert style == "grade"
    assert response.json() == [
        {"id": "a", "aggregate_reward_score": 1.0, "metrics_list": []},
        {"id": "b", "aggregate_reward_score": 0.0, "metrics_list": []},
    ]


REWARD_FILE = """
    async def reward(response, item):
        if response == "boom":
            raise ValueError("cannot score this")
        if response == "nan":
            return float("nan")
        correct = float(response == item["reference_answer"])
        if item.get("with_score"):
            return {"score": correct, "length": len(response)}
        return {"correct": correct, "format": 0.5}
"""


def test_an_openrft_reward_function_is_wrapped_into_the_contract(tmp_path: Path) -> None:
    path = write(tmp_path, REWARD_FILE)
    body = [item("a", "42"), item("b", "42", with_score=True), item("c", "boom"), item("d", "nan")]
    with background(make_app(str(path))) as url:
        response = post(url, body, "invoke")
    assert response.status_code == 200
    a, b, c, d = response.json()
    assert a == {
        "id": "a",
        "aggregate_reward_score": 1.5,
        "metrics_list": [
            {"name": "correct", "value": 1.0, "type": "Reward"},
            {"name": "format", "value": 0.5, "type": "Reward"},
        ],
    }
    assert b["aggregate_reward_score"] == 1.0
    assert b["metrics_list"] == [{"name": "length", "value": 2.0, "type": "Metric"}]
    assert c["aggregate_reward_score"] is None
    assert c["error"]["kind"] == "runtime_error"
    assert "ValueError: cannot score this" in c["error"]["message"]
    assert d["error"]["kind"] == "invalid_output"


def test_per_item_failures_reach_the_grader_as_typed_errors(tmp_path: Path) -> None:
    path = write(tmp_path, REWARD_FILE)
    batch = [make_sample("42", reference="42"), make_sample("boom", index=1)]
    with background(make_app(f"{path}:reward")) as url:
        spec = {"type": "lambda", "url": url + "invoke", "name": "hosted"}
        grades = GRADER_TYPES["lambda"](spec, SpecContext()).grade(batch)
    assert grades[0].score == 1.5
    assert grades[0].components == {"correct": 1.0, "format": 0.5}
    assert grades[1].error is not None and grades[1].error.kind == "runtime_error"
    assert "cannot score this" in grades[1].error.message


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"id": "a"}, "expected a JSON list of samples, got dict"),
        ([{"messages": []}], "item 0: expected an object with an 'id'"),
        ([{"id": "a", "messages": [{"role": "user", "content": "hi"}]}], "assistant's answer"),
        ([{"id": "a", "messages": "hi"}], "'messages' must be a list"),
    ],
)
def test_bad_requests_to_a_wrapped_function_are_400(
    tmp_path: Path, body: Any, fragment: str
) -> None:
    with background(make_app(str(write(tmp_path, REWARD_FILE)))) as url:
        response = post(url, body)
    assert response.status_code == 400
    assert fragment in response.json()["errorMessage"]


@pytest.mark.parametrize(
    ("source", "suffix", "style"),
    [
        ("def lambda_handler(e, c): pass\ndef reward(r, i): pass\n", "", "lambda"),
        ("def grade(s, i): pass\ndef reward(r, i): pass\n", "", "grade"),
        ("def reward(r, i): pass\n", "", "reward"),
        ("def main(event, context): pass\n", ":main", "lambda"),
        ("def check(sample, item): pass\n", ":check", "grade"),
        ("def check(response, item): pass\n", ":check", "reward"),
    ],
)
def test_handler_discovery(tmp_path: Path, source: str, suffix: str, style: str) -> None:
    path = write(tmp_path, source)
    assert load_handler(f"{path}{suffix}").style == style


def test_a_file_without_a_handler_is_a_grader_error(tmp_path: Path) -> None:
    path = write(tmp_path, "def helper(): pass\n")
    with pytest.raises(GraderError, match=r"defines none of lambda_handler\(\), grade\(\)"):
        make_app(str(path))
    with pytest.raises(GraderError, match="file not found"):
        make_app(str(tmp_path / "missing.py"))


def test_serve_prints_the_url_and_serves_until_stopped(tmp_path: Path) -> None:
    path = write(tmp_path, LAMBDA_HANDLER)
    code = f"from openrft.rewards.lambda_host import serve; serve({str(path)!r}, port=0)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith(f"Serving {path}:lambda_handler (lambda handler) at http://")
        url = first.rsplit(" at ", 1)[1].strip()
        assert httpx.get(url + "health", timeout=10).json()["status"] == "ok"
        assert post(url, [item("a", "1")]).json()[0]["aggregate_reward_score"] == 0.5
    finally:
        process.terminate()
        process.wait(timeout=10)
