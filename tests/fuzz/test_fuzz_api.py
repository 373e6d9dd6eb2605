"""Fuzzing the create-job request bodies of the Bedrock-compatible (CreateModelCustomization
Job) and OpenAI-compatible (fine_tuning.jobs.create) APIs through the real app: any body is
answered with a 2xx or a 4xx in that API's error shape naming the field, never a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from openrft.api import create_app

from ._fuzz import fuzz, json_text, junk, mutated, texts

GRADER = {
    "type": "string_check",
    "name": "exact",
    "operation": "eq",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.reference_answer }}",
}
OPENRFT_CONFIG = {"preflight": {"check": False}, "rollout": {"samples_per_prompt": 4},
                  "train": {"max_steps": 1}, "env": {"verifiers_args": {"n": 1}}}  # fmt: skip
BEDROCK = {
    "jobName": "fuzz-job",
    "customModelName": "fuzz-model",
    "roleArn": "arn:aws:iam::000000000000:role/fuzz",
    "baseModelIdentifier": "smollm2-135m-instruct",
    "customizationType": "REINFORCEMENT_FINE_TUNING",
    "trainingDataConfig": {"s3Uri": "builtin:sst2/train"},
    "validationDataConfig": {"validators": [{"s3Uri": "builtin:sst2/validation"}]},
    "outputDataConfig": {"s3Uri": "s3://bucket/out/"},
    "customizationConfig": {
        "rftConfig": {
            "graderConfig": {"lambdaGrader": {"lambdaArn": "exact_label"}},
            "hyperParameters": {"epochCount": 1, "batchSize": 16, "learningRate": 1e-5},
        }
    },
    "openrftConfig": OPENRFT_CONFIG,
}
OPENAI = {
    "model": "smollm2-135m-instruct",
    "training_file": "builtin:sst2/train",
    "suffix": "fuzz",
    "seed": 3,
    "metadata": {"team": "fuzz"},
    "method": {
        "type": "reinforcement",
        "reinforcement": {
            "grader": GRADER,
            "hyperparameters": {
                "n_epochs": 1,
                "batch_size": 8,
                "learning_rate_multiplier": 2,
                "compute_multiplier": 0.5,
                "reasoning_effort": "default",
            },
            "tools": [
                {"name": "add", "server_url": "http://127.0.0.1:9/add", "headers": {"x-key": "k"}}
            ],
            "max_episode_steps": 3,
        },
    },
    "openrft_config": OPENRFT_CONFIG,
}


def _keys(value: Any) -> set[str]:
    found: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found |= set(item)
            stack += list(item.values())
        elif isinstance(item, list):
            stack += item
    return found


KEYS = tuple(sorted(_keys(BEDROCK) | _keys(OPENAI) | {"jobTags", "vpcConfig", "integrations",
                                                      "hyperparameters", "invocationLogsConfig",
                                                      "sampling_params", "graders"}))  # fmt: skip
API_VALUES = st.one_of(
    junk,
    st.sampled_from(
        (
            "\ud800",
            "auto",
            "default",
            "high",
            "file-0000",
            "s3://b/k.jsonl",
            "arn:aws:lambda:us-east-1:000000000000:function:f",
            "http://127.0.0.1:9",
            "builtin:sst2/train",
            "/etc/passwd",
            "x.py:f",
        )
    ),
)


def _bodies(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        mutated(base, KEYS, API_VALUES).map(json_text),
        junk.map(json_text),
        texts,
        st.binary(max_size=20).map(lambda raw: raw.decode("latin-1")),
    ).map(lambda text: text.encode("utf-8", "surrogatepass"))


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    app = create_app(tmp_path_factory.mktemp("fuzz-api"), start_runner=False)
    headers = {"Authorization": f"Bearer {app.state.token}", "content-type": "application/json"}
    with TestClient(app, headers=headers, raise_server_exceptions=True) as test_client:
        yield test_client


def _answer(client: TestClient, path: str, body: bytes) -> tuple[int, Any]:
    response = client.post(path, content=body)
    assert response.status_code < 500, response.text[:2000]
    return response.status_code, response.json()


@fuzz(500, slow=True)
@given(body=_bodies(BEDROCK))
def test_bedrock_create_job_answers_4xx_in_bedrock_shape(client: TestClient, body: bytes) -> None:
    status, answer = _answer(client, "/model-customization-jobs", body)
    if status < 300:
        assert answer["jobArn"].startswith("arn:openrft:bedrock:")
        return
    assert 400 <= status < 500
    assert set(answer) == {"message", "__type"}, answer
    assert answer["__type"].endswith("Exception") and answer["message"]


@fuzz(500, slow=True)
@given(body=_bodies(OPENAI))
def test_openai_create_job_answers_4xx_in_openai_shape(client: TestClient, body: bytes) -> None:
    status, answer = _answer(client, "/v1/fine_tuning/jobs", body)
    if status < 300:
        assert answer["object"] == "fine_tuning.job"
        return
    assert 400 <= status < 500
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if status == 400 and _is_object(body):
        assert error["param"], error  # a field of the body, or "body" itself


def _is_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, RecursionError):
        return False


@pytest.mark.parametrize(
    ("path", "body"), [("/model-customization-jobs", BEDROCK), ("/v1/fine_tuning/jobs", OPENAI)]
)
def test_the_unmutated_bodies_create_jobs(client: TestClient, path: str, body: dict) -> None:
    """The fuzzing starts from bodies that are valid."""
    status, answer = _answer(client, path, json.dumps(body).encode())
    assert status in (200, 201), answer
