"""S3 URIs and Lambda ARNs in the Bedrock-compatible API, against real servers on loopback:
moto's S3 (ThreadedMotoServer), the job server with a Lambda handler registered, and boto3's
own `bedrock` and `s3` clients. A job reads its data from a bucket, is graded by the handler
its ARN names, and writes its metrics, model and report under the output URI; an S3 data
file with a bad row fails the job naming the URI and line; unknown ARNs, missing objects and
a server without S3 are refused at Create. The relay to AWS Lambda's Invoke API is checked
against a stand-in Lambda endpoint."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from moto.server import ThreadedMotoServer

from openrft.api import ServerThread, create_app
from openrft.api.aws import AwsBridge, AwsSettings, attach
from openrft.api.bedrock_lambda import LambdaFunctions
from openrft.api.bedrock_outputs import OUTPUT, WRITTEN, job_prefix, write_outputs
from openrft.api.bedrock_shapes import bedrock_status, has_model
from openrft.api.s3 import S3
from openrft.errors import ConfigError
from openrft.jobs.model import Job, JobStatus
from openrft.net import background
from openrft.rewards import lambda_host

from .helpers import Served, api_client, clean_aws_environment, write_dataset
from .test_boto3 import bedrock, error_of

RFT = "REINFORCEMENT_FINE_TUNING"
ARN = "arn:aws:lambda:us-east-1:123456789012:function:letters"
HANDLER = '''
def lambda_handler(event, context):
    """Bedrock's reward contract: a list of samples in, one score per sample out."""
    results = []
    for sample in event:
        answer = sample["messages"][-1]["content"]
        hit = float(sample["metadata"]["reference_answer"] in answer)
        results.append({
            "id": sample["id"],
            "aggregate_reward_score": hit + 1.0 / (1 + len(answer)),
            "metrics_list": [{"name": "lambda_letter", "value": hit, "type": "Reward"}],
        })
    return results
'''
PREFIX = "runs/model-customization-job-"


@pytest.fixture
def s3_url(aws_environment) -> Iterator[str]:
    """moto's S3 on a free loopback port; the server's boto3 finds these keys in the env."""
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_REGION", "us-east-1")):  # fmt: skip
        aws_environment.setenv(name, value)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    url = f"http://{host}:{port}"
    yield url
    httpx.post(f"{url}/moto-api/reset")  # moto's state is the process's: leave it empty
    moto.stop()


@pytest.fixture
def aws_environment(monkeypatch, tmp_path) -> Any:
    """test_boto3's clean AWS environment, and the monkeypatch to add to it."""
    clean_aws_environment(monkeypatch, tmp_path)
    return monkeypatch


@pytest.fixture
def handler_file(tmp_path) -> Path:
    path = tmp_path / "lambda_function.py"
    path.write_text(HANDLER)
    return path


@pytest.fixture
def aws_server(tmp_path, s3_url, handler_file) -> Iterator[Served]:
    """A job server with S3 through moto and the `letters` Lambda function registered."""
    app = create_app(tmp_path / "data", poll_s=0.2)
    app.state.service.runner.shutdown_grace_s = 20.0
    attach(app, AwsSettings(s3_endpoint_url=s3_url, lambdas={"letters": str(handler_file)}))
    thread = ServerThread(app).start()
    token = app.state.token
    served = Served(thread.url, token, tmp_path / "data", api_client(thread.url, token), thread)
    yield served
    served.stop()


def s3_client(url: str) -> Any:
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1")


def create_args(name: str, train: str, **changes: Any) -> dict[str, Any]:
    args = {
        "jobName": name,
        "customModelName": f"{name}-model",
        "roleArn": "arn:aws:iam::123456789012:role/unused",
        "baseModelIdentifier": "",  # set by the caller
        "customizationType": RFT,
        "trainingDataConfig": {"s3Uri": train},
        "outputDataConfig": {"s3Uri": "s3://rft-output/runs/"},
        "customizationConfig": {
            "rftConfig": {
                "graderConfig": {"lambdaGrader": {"lambdaArn": ARN}},
                "hyperParameters": {"epochCount": 1, "batchSize": 16,
                                    "trainingSamplePerPrompt": 2, "inferenceMaxTokens": 8},
            }
        },
    }  # fmt: skip
    return {**args, **changes}


def wait_ended(client: Any, arn: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    job = client.get_model_customization_job(jobIdentifier=arn)
    while job["status"] in ("InProgress", "Stopping"):
        assert time.monotonic() < deadline, f"{arn} still {job['status']}"
        time.sleep(0.2)
        job = client.get_model_customization_job(jobIdentifier=arn)
    return job


def read_csv(s3: Any, key: str) -> list[dict[str, str]]:
    body = s3.get_object(Bucket="rft-output", Key=key)["Body"].read().decode()
    return list(csv.DictReader(io.StringIO(body)))


# -- a job from S3 to S3, graded by a registered Lambda function ------------------------------


def test_s3_data_lambda_arn_and_outputs(aws_server, s3_url, tmp_path, tiny_model_dir, handler_file):
    s3 = s3_client(s3_url)
    for bucket in ("rft-data", "rft-output"):
        s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(write_dataset(tmp_path / "t", rows=16)), "rft-data", "letters/train.jsonl")
    s3.upload_file(str(write_dataset(tmp_path / "v", rows=4)), "rft-data", "letters/val.jsonl")
    s3.upload_file(str(write_dataset(tmp_path / "b", rows=4, bad_line=3)), "rft-data", "bad.jsonl")
    client = bedrock(aws_server.url, aws_server.token)
    base = {"baseModelIdentifier": str(tiny_model_dir)}

    bad_arn = client.create_model_customization_job(
        **create_args("bad-rows", "s3://rft-data/bad.jsonl", **base)
    )["jobArn"]
    validation = {"validators": [{"s3Uri": "s3://rft-data/letters/val.jsonl"}]}
    arn = client.create_model_customization_job(
        **create_args(
            "letters", "s3://rft-data/letters/train.jsonl", **base, validationDataConfig=validation
        )
    )["jobArn"]

    bad = wait_ended(client, bad_arn)
    assert bad["status"] == "Failed"
    assert (
        "s3://rft-data/bad.jsonl:3: messages[0].role: unknown role 'bot'" in bad["failureMessage"]
    ), bad["failureMessage"]
    assert bad["trainingDataConfig"] == {"s3Uri": "s3://rft-data/bad.jsonl"}

    job = wait_ended(client, arn)
    assert job["status"] == "Completed", job.get("failureMessage")
    assert job["outputDataConfig"] == {"s3Uri": "s3://rft-output/runs/"}
    assert job["validationDataConfig"] == validation and "endTime" in job
    job_id = arn.rsplit("/", 1)[1]
    prefix = f"{PREFIX}{job_id}/"
    listed = s3.list_objects_v2(Bucket="rft-output", Prefix=prefix)["Contents"]
    keys = {item["Key"].removeprefix(prefix) for item in listed}
    assert {
        "training_artifacts/step_wise_training_metrics.csv",
        "training_artifacts/metrics.jsonl",
        "validation_artifacts/post_fine_tuning_validation/validation_metrics.csv",
        "model/adapter_model.safetensors",
        "model/adapter_config.json",
        "report/report.md",
        "report/summary.json",
    } <= keys, keys

    training = read_csv(s3, prefix + "training_artifacts/step_wise_training_metrics.csv")
    assert [row["step_number"] for row in training] == ["1"]
    assert float(training[0]["training_reward_mean"]) > 0 and training[0]["training_loss"]
    validation_rows = read_csv(
        s3, prefix + "validation_artifacts/post_fine_tuning_validation/validation_metrics.csv"
    )
    assert [row["step_number"] for row in validation_rows][0] == "0"
    assert all(row["validation_reward_mean"] for row in validation_rows)
    lines = s3.get_object(Bucket="rft-output", Key=prefix + "training_artifacts/metrics.jsonl")
    steps = [json.loads(line) for line in lines["Body"].read().splitlines()]
    trained = [step for step in steps if "reward/mean" in step]
    assert "reward/lambda_letter/mean" in trained[0]  # the handler's metrics_list, via Lambda
    weights = s3.get_object(Bucket="rft-output", Key=prefix + "model/adapter_model.safetensors")
    local = aws_server.data_dir / "jobs" / job_id / "final" / "adapter_model.safetensors"
    assert weights["Body"].read() == local.read_bytes()
    bad_id = bad_arn.rsplit("/", 1)[1]
    failed = s3.list_objects_v2(Bucket="rft-output", Prefix=f"{PREFIX}{bad_id}/")
    assert failed["KeyCount"] == 0  # it failed before it had metrics, a model or a report

    native = aws_server.client.get(f"/api/jobs/{job_id}").json()
    assert native["config"]["data"]["train_file"].startswith(str(aws_server.data_dir / "files"))
    grader = json.loads(Path(native["config"]["reward"]["grader"]).read_text())
    assert grader["type"] == "lambda" and grader["url"].endswith("/functions/letters/invoke")

    # A restarted server hosts its functions on a new port: jobs that may run again follow.
    service = aws_server.thread.app.state.service
    functions = LambdaFunctions({"letters": str(handler_file)})
    functions.start()
    try:
        functions.refresh(service)
        bad_grader = service.run_dir(bad_id) / "grader.json"
        url = functions.url + "/functions/letters/invoke"
        assert json.loads(bad_grader.read_text())["url"] == url != grader["url"]
    finally:
        functions.close()


# -- refusals at Create -------------------------------------------------------------------------


def test_create_refusals(aws_server, s3_url, tiny_model_dir):
    s3 = s3_client(s3_url)
    for bucket in ("rft-data", "rft-output"):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket="rft-data", Key="train.jsonl", Body=b"{}\n")
    client = bedrock(aws_server.url, aws_server.token)
    base = {"baseModelIdentifier": str(tiny_model_dir)}

    def refused(args: dict[str, Any]) -> str:
        code, message, status = error_of(lambda: client.create_model_customization_job(**args))
        assert (code, status) == ("ValidationException", 400), message
        return message

    unknown = ARN.replace(":letters", ":nobody")
    args = create_args("x", "s3://rft-data/train.jsonl", **base)
    args["customizationConfig"]["rftConfig"]["graderConfig"]["lambdaGrader"]["lambdaArn"] = unknown
    message = refused(args)
    assert unknown in message and "registered: letters" in message
    args["customizationConfig"]["rftConfig"]["graderConfig"]["lambdaGrader"]["lambdaArn"] = (
        "arn:aws:lambda:us-east-1:123:function:letters"  # not a 12-digit account
    )
    assert "not a Lambda function ARN" in refused(args)
    message = refused(create_args("x", "s3://rft-data/missing.jsonl", **base))
    assert "s3://rft-data/missing.jsonl" in message and "NoSuchKey" in message
    elsewhere = {"outputDataConfig": {"s3Uri": "s3://no-such-bucket/out/"}}
    message = refused(create_args("x", "s3://rft-data/train.jsonl", **base, **elsewhere))
    assert "outputDataConfig.s3Uri" in message and "no-such-bucket" in message
    message = refused(create_args("x", "s3://rft-data/", **base))
    assert "names a folder" in message
    assert aws_server.client.get("/api/jobs").json()["data"] == []


def test_a_server_without_s3_or_lambdas(idle_server, tiny_model_dir):
    client = bedrock(idle_server.url, idle_server.token)
    args = create_args("x", "s3://rft-data/train.jsonl", baseModelIdentifier=str(tiny_model_dir))
    args["customizationConfig"]["rftConfig"]["graderConfig"]["lambdaGrader"] = {
        "lambdaArn": "builtin:exact_match"
    }
    code, message, _ = error_of(lambda: client.create_model_customization_job(**args))
    assert code == "ValidationException" and "trainingDataConfig.s3Uri" in message
    assert "S3 is not configured on this server" in message and "--s3-endpoint-url" in message
    args = create_args("x", "s3://rft-data/train.jsonl", baseModelIdentifier=str(tiny_model_dir))
    code, message, _ = error_of(lambda: client.create_model_customization_job(**args))
    assert code == "ValidationException" and ARN in message and "registered: none" in message


# -- what Bedrock shows while outputs are written --------------------------------------------


@pytest.mark.parametrize(
    ("status", "written", "shown"),
    [
        (JobStatus.COMPLETED, None, "InProgress"),
        (JobStatus.STOPPED, None, "Stopping"),
        (JobStatus.COMPLETED, {"endedAt": 5.0, "objects": 3}, "Completed"),
        (JobStatus.COMPLETED, {"endedAt": 4.0, "objects": 3}, "InProgress"),  # an earlier end
        (JobStatus.COMPLETED, {"endedAt": 5.0, "error": "cannot write"}, "Failed"),
        (JobStatus.FAILED, {"endedAt": 5.0, "objects": 0}, "Failed"),
    ],
)
def test_status_while_outputs_are_written(status, written, shown):
    extra = {OUTPUT: "s3://rft-output/runs/", **({WRITTEN: written} if written else {})}
    job = Job(id="job-abcdef", name="j", status=status, config={}, ended_at=5.0, extra=extra)
    assert bedrock_status(job) == shown
    assert has_model(job) == (shown == "Completed")


def test_a_stopped_run_writes_what_it_has(s3_url, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = [{"step": 0, "epoch": 0.0, "val/reward/mean": 0.25},
             {"step": 1, "epoch": 0.5, "reward/mean": 0.5, "loss/total": 0.1},
             {"step": 2, "epoch": 1.0, "reward/mean": 0.75, "policy/kl": None},
             {"step": 2, "val/reward/mean": 0.5}]  # fmt: skip
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (run_dir / "report.md").write_text("# report\n")
    (run_dir / "checkpoints").mkdir()  # checkpoints stay on the server; no final/ yet
    s3 = s3_client(s3_url)
    s3.create_bucket(Bucket="rft-output")
    prefix = job_prefix("s3://rft-output/runs", "job-0123456789ab")
    assert str(prefix) == f"s3://rft-output/{PREFIX}job-0123456789ab"
    assert write_outputs(S3(s3_url), run_dir, prefix) == 4
    listed = s3.list_objects_v2(Bucket="rft-output", Prefix=prefix.key + "/")["Contents"]
    assert sorted(item["Key"].removeprefix(prefix.key + "/") for item in listed) == [
        "report/report.md",
        "training_artifacts/metrics.jsonl",
        "training_artifacts/step_wise_training_metrics.csv",
        "validation_artifacts/post_fine_tuning_validation/validation_metrics.csv",
    ]
    training = read_csv(s3, prefix.key + "/training_artifacts/step_wise_training_metrics.csv")
    assert [(row["step_number"], row["training_reward_mean"], row["training_loss"])
            for row in training] == [("1", "0.5", "0.1"), ("2", "0.75", "")]  # fmt: skip
    key = prefix.key + "/validation_artifacts/post_fine_tuning_validation/validation_metrics.csv"
    rows = [(row["step_number"], row["epoch_number"], row["validation_reward_mean"])
            for row in read_csv(s3, key)]  # fmt: skip
    assert rows == [("0", "0.0", "0.25"), ("2", "1.0", "0.5")]


# -- AWS Lambda's Invoke API --------------------------------------------------------------------


def lambda_stand_in(handler_file: Path) -> FastAPI:
    """The two Lambda calls the relay makes, as AWS answers them, running `handler_file`."""
    handler = lambda_host.load_handler(str(handler_file))
    app = FastAPI()
    missing = {"x-amzn-ErrorType": "ResourceNotFoundException"}

    @app.get("/2015-03-31/functions/{name}")
    def get_function(name: str) -> Response:
        if not name.endswith(":function:letters"):
            return JSONResponse({"message": f"Function not found: {name}"}, 404, missing)
        return JSONResponse({"Configuration": {"FunctionArn": name}})

    @app.post("/2015-03-31/functions/{name}/invocations")
    async def invoke(name: str, request: Request) -> Response:
        answer = lambda_host.invoke_handler(handler, json.loads(await request.body()))
        headers = {"X-Amz-Function-Error": "Unhandled"} if answer.status_code == 500 else {}
        return Response(answer.body, 200, headers, media_type="application/json")

    return app


def test_lambda_arns_through_aws_lambda_invoke(aws_environment, tmp_path, handler_file):
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        aws_environment.setenv(name, value)
    raising = tmp_path / "raising.py"
    raising.write_text("def lambda_handler(event, context):\n    raise ValueError('no')\n")
    remote = "arn:aws:lambda:eu-west-1:123456789012:function:letters"
    turns = [{"role": "user", "content": "say a"}, {"role": "assistant", "content": "a"}]
    request = [{"id": "r:0", "messages": turns, "metadata": {"reference_answer": "a"}}]
    with background(lambda_stand_in(handler_file)) as endpoint:
        bridge = AwsBridge(AwsSettings(lambda_endpoint_url=endpoint.rstrip("/"),
                                       lambdas={"local": str(raising)}))  # fmt: skip
        bridge.functions.start()
        try:
            route = bridge.functions.route(remote)
            assert route == f"/aws/{remote}"
            spec = bridge.functions.grader_spec(route)
            answer = httpx.post(spec["url"], json=request)
            assert answer.status_code == 200, answer.text
            assert answer.json()[0]["aggregate_reward_score"] == 1.5
            with pytest.raises(ConfigError, match="AWS Lambda has no function .*:nobody"):
                bridge.functions.route(remote.replace(":letters", ":nobody"))
            local = bridge.functions.route(ARN.replace(":letters", ":local"))
            failed = httpx.post(bridge.functions.url + local, json=request)
            assert failed.status_code == 500 and failed.json()["errorType"] == "ValueError"
        finally:
            bridge.close()
