"""The Bedrock-compatible facade over plain HTTP: Create/Get/List/StopModelCustomizationJob
shapes, and hyperParameters checked against Bedrock's ranges (400 ValidationException naming
the field). boto3's own client against it: test_boto3.py."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from .helpers import job_config


def create_body(tmp_path, model_dir, **hyper) -> dict:
    config = job_config(tmp_path, model_dir)
    return {
        "jobName": "bedrock-job",
        "customModelName": "my-model",
        "roleArn": "arn:aws:iam::123456789012:role/ignored",
        "baseModelIdentifier": str(model_dir),
        "customizationType": "REINFORCEMENT_FINE_TUNING",
        "trainingDataConfig": {"s3Uri": config["data"]["train_file"]},
        "validationDataConfig": {"validators": [{"s3Uri": config["data"]["train_file"]}]},
        "outputDataConfig": {"s3Uri": "s3://ignored/"},
        "customizationConfig": {
            "rftConfig": {
                "graderConfig": {"lambdaGrader": {"lambdaArn": config["reward"]["grader"]}},
                "hyperParameters": {"epochCount": 1, "batchSize": 16, "learningRate": 1e-4,
                                    "trainingSamplePerPrompt": 2, "inferenceMaxTokens": 4,
                                    "evalInterval": 5, **hyper},
            }
        },
        "openrftConfig": {"train": {"threads": 1}},
    }  # fmt: skip


def test_create_get_list_stop(idle_server, tmp_path, tiny_model_dir):
    client = idle_server.client
    created = client.post("/model-customization-jobs", json=create_body(tmp_path, tiny_model_dir))
    assert created.status_code == 201, created.text
    arn = created.json()["jobArn"]
    assert arn.startswith("arn:openrft:") and ":model-customization-job/job-" in arn
    job_id = arn.rsplit("/", 1)[1]
    by_id = client.get(f"/model-customization-jobs/{job_id}").json()
    by_arn = client.get(f"/model-customization-jobs/{quote(arn, safe='')}").json()
    assert by_id == by_arn
    assert by_id["jobName"] == "bedrock-job" and by_id["outputModelName"] == "my-model"
    # Bedrock has no Queued status: a waiting job is InProgress, its stages NotStarted.
    assert by_id["status"] == "InProgress" and "outputModelArn" not in by_id
    assert by_id["customizationType"] == "REINFORCEMENT_FINE_TUNING"
    assert by_id["hyperParameters"]["batchSize"] == "16"
    assert by_id["hyperParameters"]["learningRate"] == "0.0001"
    assert by_id["statusDetails"]["trainingDetails"]["status"] == "NotStarted"
    assert by_id["creationTime"].endswith("Z") and "endTime" not in by_id
    native = client.get(f"/api/jobs/{job_id}").json()
    assert native["source"] == "bedrock" and native["config"]["train"]["prompts_per_step"] == 16
    assert native["config"]["rollout"]["samples_per_prompt"] == 2
    assert native["config"]["train"]["threads"] == 1

    client.post("/model-customization-jobs", json=create_body(tmp_path, tiny_model_dir))
    page = client.get("/model-customization-jobs", params={"maxResults": 1}).json()
    assert len(page["modelCustomizationJobSummaries"]) == 1 and page["nextToken"] == "1"
    rest = client.get("/model-customization-jobs", params={"nextToken": "1"}).json()
    assert rest["modelCustomizationJobSummaries"][0]["jobArn"] == arn
    assert rest["nextToken"] is None

    assert client.post(f"/model-customization-jobs/{quote(arn, safe='')}/stop").json() == {}
    stopped = client.get(f"/model-customization-jobs/{job_id}").json()
    assert stopped["status"] == "Stopped" and stopped["endTime"]
    only = client.get("/model-customization-jobs", params={"statusEquals": "Stopped"}).json()
    assert [s["jobArn"] for s in only["modelCustomizationJobSummaries"]] == [arn]
    again = client.post(f"/model-customization-jobs/{job_id}/stop")
    assert again.status_code == 409 and again.json()["__type"] == "ConflictException"
    missing = client.get("/model-customization-jobs/job-ffffffffffff")
    assert missing.status_code == 404
    assert missing.headers["x-amzn-errortype"] == "ResourceNotFoundException"


@pytest.mark.parametrize(
    ("hyper", "field"),
    [
        ({"batchSize": 8}, "hyperParameters.batchSize"),
        ({"learningRate": 0.5}, "hyperParameters.learningRate"),
        ({"trainingSamplePerPrompt": 32}, "hyperParameters.trainingSamplePerPrompt"),
        ({"epochCount": 0}, "hyperParameters.epochCount"),
        ({"evalInterval": 1000}, "hyperParameters.evalInterval"),
        ({"reasoningEffort": "low"}, "hyperParameters.reasoningEffort"),  # no equivalent here
        ({"batchSise": 16}, "hyperParameters.batchSise"),
    ],
)
def test_out_of_range_hyperparameters(idle_server, tmp_path, tiny_model_dir, hyper, field):
    body = create_body(tmp_path, tiny_model_dir, **hyper)
    response = idle_server.client.post("/model-customization-jobs", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["__type"] == "ValidationException"
    assert f"'{field}'" in response.json()["message"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b.update(customizationType="FINE_TUNING"), "customizationType"),
        (lambda b: b.pop("jobName"), "jobName"),
        (lambda b: b.update(trainingDataConfig={"s3Uri": "s3://bucket/x.jsonl"}), "s3Uri"),
        (lambda b: b["customizationConfig"]["rftConfig"]["graderConfig"]["lambdaGrader"].update(
            lambdaArn="arn:aws:lambda:us-east-1:1:function:f"), "lambdaArn"),
    ],
)  # fmt: skip
def test_bad_requests(idle_server, tmp_path, tiny_model_dir, change, field):
    body = create_body(tmp_path, tiny_model_dir)
    change(body)
    response = idle_server.client.post("/model-customization-jobs", json=body)
    assert response.status_code == 400 and field in response.json()["message"]


def test_a_lambda_url_becomes_a_lambda_grader(idle_server, tmp_path, tiny_model_dir):
    body = create_body(tmp_path, tiny_model_dir)
    grader = body["customizationConfig"]["rftConfig"]["graderConfig"]["lambdaGrader"]
    grader["lambdaArn"] = "http://127.0.0.1:9/grade"
    arn = idle_server.client.post("/model-customization-jobs", json=body).json()["jobArn"]
    job = idle_server.client.get(f"/api/jobs/{arn.rsplit('/', 1)[1]}").json()
    assert job["config"]["reward"]["grader"].endswith("/grader.json")
    spec = idle_server.client.get(f"/api/jobs/{job['id']}/files/grader.json").json()
    assert spec == {"type": "lambda", "name": "lambda", "url": "http://127.0.0.1:9/grade"}
