"""Fuzzing the `lambda` grader's response parser (openrft.rewards.remote): whatever an endpoint
answers (any status, any body, proxy-wrapped or not), every sample of the batch gets a finite
score or a typed GradeError naming what was wrong; nothing is raised."""

from __future__ import annotations

import base64
import math
from typing import Any

import httpx
from hypothesis import given
from hypothesis import strategies as st

from openrft.rewards.remote import (
    LambdaGrader,
    LambdaSettings,
    _http_error,
    _retry_after,
    decode_payload,
)
from openrft.types import GRADE_ERROR_KINDS, GradeError, Sample

from ._fuzz import fuzz, json_text, junk, mutated, texts

URL = "http://127.0.0.1:9/grade"
IDS = ("a:0", "a:1", "b:0")
RESULT_KEYS = ("id", "aggregate_reward_score", "metrics_list", "name", "value", "type",
               "error", "kind", "message", "statusCode", "body", "isBase64Encoded",
               "errorMessage", "errorType")  # fmt: skip


def _result(sample_id: str) -> dict[str, Any]:
    return {
        "id": sample_id,
        "aggregate_reward_score": 0.5,
        "metrics_list": [
            {"name": "exact", "value": 1.0, "type": "Reward"},
            {"name": "tokens", "value": 12, "type": "Metric"},
        ],
    }


RESPONSES = [
    [_result(i) for i in IDS],
    [
        _result("a:0"),
        {
            "id": "a:1",
            "aggregate_reward_score": None,
            "error": {"kind": "runtime_error", "message": "boom"},
        },
        _result("b:0"),
    ],  # fmt: skip
    {"statusCode": 200, "body": [_result(i) for i in IDS]},
    {"errorMessage": "Task timed out", "errorType": "Sandbox.Timedout"},
]


def _wrapped(payload: Any, how: str) -> Any:
    """The payload as a proxy integration answers it: body as a JSON string or base64."""
    if how == "plain":
        return payload
    text = json_text(payload)
    if how == "string":
        return {"statusCode": 200, "body": text}
    encoded = base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()
    return {"statusCode": 200, "body": encoded, "isBase64Encoded": True}


payloads = st.one_of(
    st.sampled_from(RESPONSES).flatmap(lambda response: mutated(response, RESULT_KEYS)),
    junk,
)
bodies = st.one_of(
    st.tuples(payloads, st.sampled_from(("plain", "plain", "string", "base64"))).map(
        lambda pair: json_text(_wrapped(*pair)).encode("utf-8", "surrogatepass")
    ),
    texts.map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=30),
)
statuses = st.sampled_from((200, 200, 200, 201, 204, 301, 400, 404, 413, 429, 500, 502, 503))
batches = st.lists(st.sampled_from(IDS), min_size=1, max_size=4)


def _sample(sample_id: str) -> Sample:
    return Sample(
        id=sample_id,
        messages=({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}),
        reference_answer="a",
        example_id=sample_id.split(":")[0],
    )


def _response(status: int, body: bytes, retry_after: str | None = None) -> httpx.Response:
    # Header values arrive as bytes: any text the server sent, not only what httpx would send.
    raw = None if retry_after is None else retry_after.encode("utf-8", "surrogatepass")
    headers = {"retry-after": raw} if raw is not None else {}
    return httpx.Response(status, content=body, headers=headers, request=httpx.Request("POST", URL))


@fuzz(1000)
@given(status=statuses, body=bodies, ids=batches)
def test_every_sample_gets_a_score_or_a_typed_error(
    status: int, body: bytes, ids: list[str]
) -> None:
    grader = LambdaGrader(LambdaSettings(url=URL, name="remote"))
    batch = [_sample(i) for i in ids]
    # `_read` is what `grade` does with each response once the request is made.
    grades = grader._read(_response(status, body), batch, latency=0.01)
    assert len(grades) == len(batch)
    for grade in grades:
        if grade.error is None:
            assert isinstance(grade.score, float) and math.isfinite(grade.score)
            assert all(math.isfinite(value) for value in grade.components.values())
        else:
            assert grade.error.kind in GRADE_ERROR_KINDS
            assert grade.error.message


@fuzz(300)
@given(body=bodies)
def test_decode_payload_returns_results_or_an_error(body: bytes) -> None:
    payload = decode_payload(body)
    assert isinstance(payload, list | GradeError)
    if isinstance(payload, GradeError):
        assert payload.kind in ("invalid_output", "server_error") and payload.message


@fuzz(200)
@given(
    status=st.sampled_from((429, 500, 502, 503, 504)),
    body=bodies,
    retry_after=st.one_of(st.none(), texts, st.sampled_from(("1", "1e999", "nan", "-1", "1_0"))),
)
def test_retryable_answers_are_described(status: int, body: bytes, retry_after: str | None) -> None:
    response = _response(status, body, retry_after)
    assert f"HTTP {status}" in _http_error(URL, response)
    delay = _retry_after(response)
    assert delay is None or (math.isfinite(delay) and delay >= 0)
