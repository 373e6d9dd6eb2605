"""Job creation on the job server refuses a job that will not fit in memory (the preflight
memory check, openrft.train.preflight), in each surface's error shape, naming the knob;
preflight.check = false lets it through."""

from __future__ import annotations

import json

import pytest

from .helpers import job_config

ABSURD = {"train": {"micro_batch_size": 64}, "rollout": {"max_new_tokens": 1_000_000}}
KNOBS = ("train.micro_batch_size", "rollout.max_new_tokens")


def _absurd(config: dict) -> dict:
    for section, values in ABSURD.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def test_native_job_creation_is_refused_with_422(idle_server, tmp_path, tiny_model_dir):
    config = _absurd(job_config(tmp_path / "job", tiny_model_dir))
    response = idle_server.client.post("/api/jobs", json={"config": config})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(detail.startswith(f"config field '{knob}'") for knob in KNOBS), detail
    assert idle_server.client.get("/api/jobs").json() == {"data": []}
    config["preflight"] = {"check": False}  # the override: queued as asked
    assert idle_server.client.post("/api/jobs", json={"config": config}).status_code in (200, 201)


def test_bedrock_job_creation_is_refused_with_a_validation_exception(
    idle_server, tmp_path, tiny_model_dir
):
    from .test_bedrock import create_body

    body = create_body(tmp_path, tiny_model_dir, inferenceMaxTokens=1_000_000)
    body["openrftConfig"]["train"]["micro_batch_size"] = 64
    response = idle_server.client.post("/model-customization-jobs", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["__type"] == "ValidationException"
    message = response.json()["message"]
    assert any(f"'{knob}'" in message for knob in KNOBS) and "exceeds" in message, message


def test_openai_job_creation_is_refused_as_invalid_request(idle_server, tmp_path, tiny_model_dir):
    from openai import BadRequestError, OpenAI

    from .test_openai import TINY, reinforcement, upload

    client = OpenAI(base_url=f"{idle_server.url}/v1", api_key=idle_server.token, max_retries=0)
    file = upload(client, tmp_path)
    with pytest.raises(BadRequestError) as info:
        client.fine_tuning.jobs.create(
            model=str(tiny_model_dir),
            training_file=file.id,
            method=reinforcement(),
            extra_body={"openrft_config": _absurd(json.loads(json.dumps(TINY)))},
        )
    error = info.value.body
    assert info.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert any(f"'{knob}'" in error["message"] for knob in KNOBS), error
