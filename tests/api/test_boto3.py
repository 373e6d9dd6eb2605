"""boto3's own `bedrock` client against a real server on loopback: SigV4 signing checked for
real (wrong secret, unknown key, tampered body, stale date, missing signed header, payload
hash), bearer tokens still accepted, every RFT call of the service model in the shapes
botocore sends and parses, and docs/aws.md's example script run verbatim on the tiny model
until its job completes and its custom model is found, listed and deleted."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.auth
import httpx
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from openrft.api import ServerThread, create_app

from .helpers import REWARD_FILE, Served, clean_aws_environment, write_dataset

DOCS = Path(__file__).parents[2] / "docs" / "aws.md"
RFT = "REINFORCEMENT_FINE_TUNING"
NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch, tmp_path) -> None:
    """Keep the developer's AWS setup out: no profile, config file, session or bearer token
    (boto3 would send that bearer token, and only over https)."""
    clean_aws_environment(monkeypatch, tmp_path)


def bedrock(url: str, secret: str, key_id: str = "openrft", **config: Any) -> Any:
    return boto3.client(
        "bedrock",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=NO_RETRIES.merge(Config(**config)),
    )


def client_of(served: Served) -> Any:
    return bedrock(served.url, served.token)


def error_of(call: Callable[[], Any]) -> tuple[str, str, int]:
    with pytest.raises(ClientError) as caught:
        call()
    response = caught.value.response
    status = response["ResponseMetadata"]["HTTPStatusCode"]
    return response["Error"]["Code"], response["Error"]["Message"], status


@pytest.fixture
def files(tmp_path, tiny_model_dir) -> dict[str, str]:
    """The example's environment: base model, data and grader as server paths."""
    reward = tmp_path / "reward_fn.py"
    reward.write_text(REWARD_FILE)
    return {
        "BASE_MODEL": str(tiny_model_dir),
        "TRAIN_FILE": str(write_dataset(tmp_path / "train", rows=16)),
        "VALIDATION_FILE": str(write_dataset(tmp_path / "validation", rows=4)),
        "GRADER": f"{reward}:reward",
    }


def create_args(files: dict[str, str], name: str = "job-a", **changes: Any) -> dict[str, Any]:
    rft = {
        "graderConfig": {"lambdaGrader": {"lambdaArn": files["GRADER"]}},
        "hyperParameters": {"epochCount": 1, "batchSize": 16, "trainingSamplePerPrompt": 2},
    }
    args = {
        "jobName": name,
        "customModelName": f"{name}-model",
        "roleArn": "arn:aws:iam::123456789012:role/unused",
        "baseModelIdentifier": files["BASE_MODEL"],
        "customizationType": RFT,
        "trainingDataConfig": {"s3Uri": files["TRAIN_FILE"]},
        "outputDataConfig": {"s3Uri": "s3://unused/"},
        "customizationConfig": {"rftConfig": rft},
    }
    return {**args, **changes}


def example_script() -> str:
    text = DOCS.read_text()
    marker = "<!-- test_boto3.py runs the python block below -->\n```python\n"
    return text.split(marker, 1)[1].split("```", 1)[0]


# -- the example, a real job and its custom model ------------------------------------------


def test_the_docs_example_and_custom_models(start_server, files, monkeypatch, capsys):
    served = start_server()
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK", served.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "openrft")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", served.token)
    for name, value in files.items():
        monkeypatch.setenv(name, value)
    exec(compile(example_script(), str(DOCS), "exec"), {"__name__": "__main__"})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["job", "letters-rft", "Completed"], lines
    assert lines[1:3] == ["listed letters-rft Completed", "listed letters-rft-spare Stopped"]
    assert re.fullmatch(
        r"model letters-model Active arn:openrft:\S+/letters-model/job-\w+", lines[3]
    )
    assert lines[4:] == [f"custom model letters-model {Path(files['BASE_MODEL']).name}"]

    client = client_of(served)
    jobs = client.list_model_customization_jobs(statusEquals="Completed")
    [summary] = jobs["modelCustomizationJobSummaries"]
    job = client.get_model_customization_job(jobIdentifier=summary["jobArn"])
    model_arn = job["outputModelArn"]
    assert summary["customModelArn"] == model_arn and summary["customModelName"] == "letters-model"
    assert job["hyperParameters"]["batchSize"] == "16" and isinstance(job["endTime"], datetime)
    assert job["statusDetails"]["trainingDetails"]["status"] == "Completed"
    model = client.get_custom_model(modelIdentifier=model_arn)
    assert model == {**client.get_custom_model(modelIdentifier="letters-model"),
                     "ResponseMetadata": model["ResponseMetadata"]}  # fmt: skip
    assert model["jobArn"] == summary["jobArn"] and model["jobName"] == "letters-rft"
    assert model["baseModelArn"] == files["BASE_MODEL"] and model["customizationType"] == RFT
    assert model["trainingDataConfig"] == {"s3Uri": files["TRAIN_FILE"]}
    assert model["trainingMetrics"] == job["trainingMetrics"]  # the last step's loss
    assert isinstance(job["trainingMetrics"]["trainingLoss"], float)
    raw = served.client.get("/custom-models/letters-model").json()
    assert (Path(raw["modelPath"]) / "adapter_model.safetensors").is_file()  # the LoRA weights

    def names(**filters: Any) -> list[str]:
        return [m["modelName"] for m in client.list_custom_models(**filters)["modelSummaries"]]

    created, only = model["creationTime"], ["letters-model"]
    assert names(nameContains="letters", baseModelArnEquals=files["BASE_MODEL"]) == only
    assert names(creationTimeAfter=created - timedelta(seconds=5), modelStatus="Active") == only
    assert names(creationTimeBefore=created - timedelta(seconds=5)) == []
    assert names(nameContains="other") == names(isOwned=False) == names(modelStatus="Failed") == []
    pages = client.get_paginator("list_custom_models").paginate(PaginationConfig={"PageSize": 1})
    assert [m["modelName"] for p in pages for m in p["modelSummaries"]] == only

    deleted = client.delete_custom_model(modelIdentifier="letters-model")
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert not Path(raw["modelPath"]).exists()
    for identifier in ("letters-model", model_arn):
        code, message, status = error_of(lambda i=identifier: client.get_custom_model(
            modelIdentifier=i))  # fmt: skip
        assert (code, status) == ("ResourceNotFoundException", 404) and "letters-model" in message
    code, _, _ = error_of(lambda: client.delete_custom_model(modelIdentifier=model_arn))
    assert code == "ResourceNotFoundException" and names() == []
    after = client.get_model_customization_job(jobIdentifier=summary["jobArn"])
    assert after["outputModelArn"] == model_arn  # the job keeps naming the model it made


# -- jobs: create, get, list, stop without running them --------------------------------------


def test_create_get_stop(idle_server, files):
    client = client_of(idle_server)
    args = create_args(files, validationDataConfig={"validators": [{"s3Uri": files["TRAIN_FILE"]}]})
    arn = client.create_model_customization_job(**args, clientRequestToken="once-only")["jobArn"]
    again = client.create_model_customization_job(**args, clientRequestToken="once-only")
    assert again["jobArn"] == arn  # a retried Create answers with the same job
    assert len(idle_server.client.get("/api/jobs").json()["data"]) == 1
    job_id = arn.rsplit("/", 1)[1]
    job = client.get_model_customization_job(jobIdentifier=arn)
    assert job == {**client.get_model_customization_job(jobIdentifier=job_id),
                   "ResponseMetadata": job["ResponseMetadata"]}  # fmt: skip
    assert job["status"] == "InProgress"  # waiting for a worker: Bedrock has no Queued
    assert job["statusDetails"]["trainingDetails"]["status"] == "NotStarted"
    assert job["jobName"] == "job-a" and job["outputModelName"] == "job-a-model"
    assert job["roleArn"] == args["roleArn"] and job["clientRequestToken"] == "once-only"
    assert job["customizationConfig"] == args["customizationConfig"]
    assert job["validationDataConfig"] == args["validationDataConfig"]
    assert job["hyperParameters"]["trainingSamplePerPrompt"] == "2"
    assert isinstance(job["creationTime"], datetime) and "outputModelArn" not in job
    assert "endTime" not in job

    client.stop_model_customization_job(jobIdentifier=arn)
    stopped = client.get_model_customization_job(jobIdentifier=job_id)
    assert stopped["status"] == "Stopped" and stopped["endTime"] >= stopped["creationTime"]
    code, message, status = error_of(lambda: client.stop_model_customization_job(
        jobIdentifier=arn))  # fmt: skip
    assert (code, status) == ("ConflictException", 409) and "Stopped" in message
    for call in (client.get_model_customization_job, client.stop_model_customization_job):
        code, _, status = error_of(lambda c=call: c(jobIdentifier="job-ffffffffffff"))
        assert (code, status) == ("ResourceNotFoundException", 404)
    code, message, status = error_of(client.list_foundation_models)  # a call not served here
    assert (code, status) == ("UnknownOperationException", 404) and "/foundation-models" in message


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"customizationType": "FINE_TUNING"}, "customizationType"),
        ({"trainingDataConfig": {"s3Uri": "s3://bucket/train.jsonl"}}, "s3Uri"),
        ({"hyperParameters": {"epochCount": "1"}}, "hyperParameters"),
        ({"customizationConfig": {"distillationConfig": {
            "teacherModelConfig": {"teacherModelIdentifier": "a.b"}}}}, "distillationConfig"),
        ({"trainingDataConfig": {"invocationLogsConfig": {
            "invocationLogSource": {"s3Uri": "s3://b/logs"}}}}, "invocationLogsConfig"),
        ({"validationDataConfig": {"validators": [{"s3Uri": "a"}, {"s3Uri": "b"}]}},
         "validators"),
        ({"reasoningEffort": "low"}, "reasoningEffort"),
        ({"batchSize": 1024}, "batchSize"),
        ({"learningRate": 0.5}, "learningRate"),
        ({"lambdaArn": "arn:aws:lambda:us-east-1:123456789012:function:grade"}, "lambdaArn"),
    ],
)  # fmt: skip
def test_create_refusals(idle_server, files, change, field):
    args = create_args(files)
    rft = args["customizationConfig"]["rftConfig"]
    if "lambdaArn" in change:
        rft["graderConfig"]["lambdaGrader"].update(change)
    elif field in ("reasoningEffort", "batchSize", "learningRate"):
        rft["hyperParameters"].update(change)
    else:
        args.update(change)
    call = lambda: client_of(idle_server).create_model_customization_job(**args)  # noqa: E731
    code, message, status = error_of(call)
    assert (code, status) == ("ValidationException", 400) and field in message, message
    assert idle_server.client.get("/api/jobs").json()["data"] == []


def test_list_filters_sorting_and_pages(idle_server, files):
    client = client_of(idle_server)
    arns = [
        client.create_model_customization_job(**create_args(files, name))["jobArn"]
        for name in ("alpha-1", "beta-2", "alpha-3")
    ]
    client.stop_model_customization_job(jobIdentifier=arns[1])
    summaries = client.list_model_customization_jobs()["modelCustomizationJobSummaries"]
    created = {job["jobName"]: job["creationTime"] for job in summaries}  # to the millisecond

    def names(**filters: Any) -> list[str]:
        page = client.list_model_customization_jobs(**filters)
        return [job["jobName"] for job in page["modelCustomizationJobSummaries"]]

    assert names() == ["alpha-3", "beta-2", "alpha-1"]  # newest first, as Bedrock's default
    assert names(sortBy="CreationTime", sortOrder="Ascending") == ["alpha-1", "beta-2", "alpha-3"]
    assert names(statusEquals="InProgress") == ["alpha-3", "alpha-1"]
    assert names(statusEquals="Stopped", nameContains="beta") == ["beta-2"]
    assert names(nameContains="alpha", sortOrder="Ascending") == ["alpha-1", "alpha-3"]
    assert names(creationTimeAfter=created["alpha-1"]) == ["alpha-3", "beta-2"]
    assert names(creationTimeBefore=created["alpha-3"]) == ["beta-2", "alpha-1"]
    first = client.list_model_customization_jobs(maxResults=2)
    assert len(first["modelCustomizationJobSummaries"]) == 2 and first["nextToken"]
    rest = client.list_model_customization_jobs(maxResults=2, nextToken=first["nextToken"])
    assert [s["jobName"] for s in rest["modelCustomizationJobSummaries"]] == ["alpha-1"]
    assert "nextToken" not in rest
    summary = rest["modelCustomizationJobSummaries"][0]
    assert summary["jobArn"] == arns[0] and summary["customizationType"] == RFT
    assert summary["customModelName"] == "alpha-1-model" and summary["status"] == "InProgress"
    pages = list(client.get_paginator("list_model_customization_jobs").paginate(
        PaginationConfig={"PageSize": 1}))  # fmt: skip
    assert len(pages) == 3
    assert [p["modelCustomizationJobSummaries"][0]["jobArn"] for p in pages] == arns[::-1]

    for bad, field in [
        ({"maxResults": 1001}, "maxResults"),
        ({"nextToken": "not-mine"}, "nextToken"),
        ({"sortOrder": "Sideways"}, "sortOrder"),
        ({"statusEquals": "Queued"}, "statusEquals"),
    ]:
        code, message, _ = error_of(lambda b=bad: client.list_model_customization_jobs(**b))
        assert code == "ValidationException" and field in message


# -- signing ------------------------------------------------------------------------------


def test_signature_failures(idle_server, files, monkeypatch):
    url, token = idle_server.url, idle_server.token
    code, message, status = error_of(bedrock(url, "not-the-token").list_custom_models)
    assert (code, status) == ("InvalidSignatureException", 403)
    assert "signature we calculated does not match" in message
    code, message, _ = error_of(
        bedrock(url, token, key_id="AKIAIOSFODNN7EXAMPLE").list_custom_models
    )
    assert code == "UnrecognizedClientException" and "'openrft'" in message

    tampered = client_of(idle_server)
    tampered.meta.events.register(
        "before-send.bedrock.CreateModelCustomizationJob",
        lambda request, **_: setattr(request, "body", request.body.replace(b"job-a", b"job-b")),
    )
    code, message, _ = error_of(
        lambda: tampered.create_model_customization_job(**create_args(files))
    )
    assert code == "InvalidSignatureException" and "does not match" in message

    hashed = client_of(idle_server)  # a signed X-Amz-Content-SHA256 that is not the body's
    hashed.meta.events.register(
        "before-sign.bedrock",
        lambda request, **_: request.headers.add_header("X-Amz-Content-SHA256", "0" * 64),
    )
    code, message, _ = error_of(lambda: hashed.create_model_customization_job(**create_args(files)))
    assert code == "InvalidSignatureException" and "x-amz-content-sha256" in message

    def drop_date(request: Any, **_: Any) -> None:
        del request.headers["X-Amz-Date"]

    dateless = client_of(idle_server)
    dateless.meta.events.register("before-send.bedrock", drop_date)
    code, message, _ = error_of(dateless.list_custom_models)
    assert code == "InvalidSignatureException" and "x-amz-date" in message
    assert idle_server.client.get("/api/jobs").json()["data"] == []

    stale = datetime.now(UTC) - timedelta(minutes=20)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: stale)
    code, message, status = error_of(client_of(idle_server).list_model_customization_jobs)
    assert (code, status) == ("InvalidSignatureException", 403) and "expired" in message
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: stale + timedelta(minutes=6))
    assert client_of(idle_server).list_custom_models()["modelSummaries"] == []  # 14 min: fine


@pytest.fixture
def keyed_server(tmp_path) -> Iterator[ServerThread]:
    app = create_app(tmp_path / "keyed", start_runner=False, aws_access_key_id="AKIDOPENRFT")
    with ServerThread(app) as server:
        yield server


def test_a_configured_access_key_id(keyed_server):
    token = keyed_server.app.state.token
    assert (
        bedrock(keyed_server.url, token, "AKIDOPENRFT").list_custom_models()["modelSummaries"] == []
    )
    code, _, _ = error_of(bedrock(keyed_server.url, token).list_custom_models)
    assert code == "UnrecognizedClientException"


def test_bearer_tokens_still_work(idle_server):
    url, token = idle_server.url, idle_server.token
    bearer = {"Authorization": f"Bearer {token}"}
    listed = httpx.get(f"{url}/custom-models", headers=bearer).json()
    assert listed == {"modelSummaries": [], "nextToken": None}
    unsigned = bedrock(url, token, signature_version=UNSIGNED)
    code, _, status = error_of(unsigned.list_custom_models)
    assert (code, status) == ("AccessDeniedException", 401)
    unsigned.meta.events.register(
        "before-send.bedrock",
        lambda request, **_: request.headers.__setitem__("Authorization", f"Bearer {token}"),
    )
    assert unsigned.list_model_customization_jobs()["modelCustomizationJobSummaries"] == []


# -- what a job used: trainingMetrics, and openrftUsage past botocore's parser ---------------


def test_training_loss_and_usage(idle_server, files):
    client = client_of(idle_server)
    arn = client.create_model_customization_job(**create_args(files))["jobArn"]
    job = client.get_model_customization_job(jobIdentifier=arn)
    assert "trainingMetrics" not in job  # no step yet
    run_dir = idle_server.data_dir / "jobs" / arn.rsplit("/", 1)[1]
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        {"step": 1, "loss/total": 0.5, "usage/prompt_tokens": 100, "usage/sampled_tokens": 40},
        {"step": 2, "loss/total": -0.25, "usage/prompt_tokens": 100, "usage/sampled_tokens": 60},
        {"step": 2, "val/reward/mean": 0.5},
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))

    job = client.get_model_customization_job(jobIdentifier=arn)
    assert job["trainingMetrics"] == {"trainingLoss": -0.25}  # the last step's loss
    assert "openrftUsage" not in job and "validationMetrics" not in job  # parsed as before
    raw = idle_server.client.get(f"/model-customization-jobs/{arn}").json()
    usage = {"prompt_tokens": 200, "sampled_tokens": 100}
    assert raw["openrftUsage"] == usage
    # botocore drops keys its service model does not name; an after-call hook sees them.
    seen: dict[str, Any] = {}

    def keep_usage(http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
        seen.update(json.loads(http_response.content).get("openrftUsage", {}))

    client.meta.events.register("after-call.bedrock.GetModelCustomizationJob", keep_usage)
    client.get_model_customization_job(jobIdentifier=arn)
    assert seen == usage
