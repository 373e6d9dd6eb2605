"""The Bedrock-compatible API for jobs: Create/Get/List/StopModelCustomizationJob for
`customizationType = REINFORCEMENT_FINE_TUNING`, at the paths and in the shapes of botocore's
`bedrock` service model, so boto3 and the AWS CLI work unchanged (docs/aws.md, docs/api.md).
The custom models that jobs make: openrft.api.bedrock_models.

Data locations (`s3Uri`) are `file-<id>` uploads, server paths, or `s3://` URIs read through
the server's S3 endpoint; `lambdaArn` is a Lambda function ARN (a handler registered with the
server, or AWS Lambda), an http(s) URL of a Lambda-contract endpoint, or a local grader
reference (openrft.api.aws). `hyperParameters` keep
Bedrock's names and ranges (openrft.config_parse.BEDROCK_ALIASES). An `openrftConfig` object
(openrft's own config as JSON) may add the settings Bedrock has no name for. What openrft
cannot honour (reasoningEffort, distillation, invocation logs, several validators) is refused
with a ValidationException naming the field, never dropped.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request

from openrft.api.aws import aws_of
from openrft.api.bedrock_lambda import is_lambda_arn
from openrft.api.bedrock_shapes import (
    JOB_STATUSES,
    RFT,
    bedrock_status,
    check_choice,
    in_window,
    job_arn,
    job_summary,
    job_view,
    last_segment,
    page,
    sort_by_time,
)
from openrft.api.views import service_of
from openrft.config_parse import BEDROCK_SECTION, check_body
from openrft.errors import ConfigError
from openrft.jobs.model import Job
from openrft.jobs.service import JobService

router = APIRouter(tags=["bedrock"])
# Request members kept with the job, to answer Get in the caller's own terms. vpcConfig and
# customModelKmsKeyId are kept and echoed but change nothing here (docs/aws.md).
KEPT = (
    "jobName",
    "customModelName",
    "baseModelIdentifier",
    "roleArn",
    "clientRequestToken",
    "trainingDataConfig",
    "validationDataConfig",
    "outputDataConfig",
    "customizationConfig",
    "vpcConfig",
    "customModelKmsKeyId",
    "jobTags",
    "customModelTags",
)
HYPER = f"customizationConfig.rftConfig.{BEDROCK_SECTION}"
# Members that are objects when given (Bedrock's structures).
OBJECTS = ("trainingDataConfig", "validationDataConfig", "outputDataConfig", "customizationConfig",
           "vpcConfig", "openrftConfig")  # fmt: skip


@router.post("/model-customization-jobs", status_code=201)
def create_job(request: Request, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    service = service_of(request)
    # botocore fills clientRequestToken in and keeps it across its retries: a retried Create
    # answers with the job the first attempt made instead of starting a second one.
    earlier = _job_with_token(service, body.get("clientRequestToken"))
    if earlier is not None:
        return {"jobArn": job_arn(earlier.id)}
    raw, grader_spec, arn = bedrock_config(body)
    aws = aws_of(request)
    prepared = aws.prepare(service, raw, body, arn)
    extra = {key: body[key] for key in KEPT if key in body} | prepared.extra
    job = service.create_job(
        raw,
        name=body["jobName"],
        source="bedrock",
        extra=extra,
        grader_spec=prepared.grader_spec or grader_spec,
    )
    aws.created(job)
    return {"jobArn": job_arn(job.id)}


def _job_with_token(service: JobService, token: Any) -> Job | None:
    if not isinstance(token, str) or not token:
        return None
    jobs = service.store.list_jobs()
    return next((job for job in jobs if job.extra.get("clientRequestToken") == token), None)


def bedrock_config(
    body: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any] | None, str | None]:
    """openrft's raw config, a grader spec for a Lambda URL, and a Lambda ARN to resolve
    (openrft.api.aws), from a Create request. `s3://` data locations are left to resolve."""
    _check_request(body)
    extension = body.get("openrftConfig") or {}
    if not isinstance(extension, dict):
        raise ConfigError("openrftConfig", "must be an object (openrft's config as JSON)")
    raw = copy.deepcopy(extension)
    _section(raw, "model")["name"] = body["baseModelIdentifier"]
    data = _section(raw, "data")
    data["train_file"] = _training_location(body.get("trainingDataConfig"))
    validators = _member(body, "validationDataConfig").get("validators") or []
    if not isinstance(validators, list):
        raise ConfigError("validationDataConfig.validators", "must be a list of validators")
    if len(validators) > 1:
        raise ConfigError("validationDataConfig.validators", "takes one validator here")
    if validators:
        data["validation_file"] = _location(validators[0], "validationDataConfig.validators[0]")
    rft = _rft_config(body.get("customizationConfig"))
    raw[BEDROCK_SECTION] = _rft_hyperparameters(rft)
    return _grader(raw, rft)


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    """A table of openrftConfig that the request fills in; it must be an object if given."""
    table = raw.setdefault(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"openrftConfig.{name}", "must be an object")
    return table


def _member(table: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    """An optional object member of the request ({} when absent or null)."""
    value = table.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}{key}", f"must be an object, got {type(value).__name__}")
    return value


def _check_request(body: dict[str, Any]) -> None:
    check_body(body)  # before any copy or walk of a member: deep JSON exhausts the stack
    for key in OBJECTS:
        _member(body, key)
    for key in ("jobName", "customModelName", "baseModelIdentifier"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise ConfigError(key, "is required (a non-empty string)")
    if body.get("customizationType") != RFT:
        got = body.get("customizationType")
        raise ConfigError("customizationType", f"must be {RFT!r}, got {got!r}")
    if body.get("hyperParameters"):
        raise ConfigError(
            "hyperParameters", f"is for other customization types; {RFT} takes {HYPER}"
        )


def _rft_config(customization: Any) -> dict[str, Any]:
    customization = customization or {}
    if not isinstance(customization, dict):
        raise ConfigError("customizationConfig", "must be an object")
    others = sorted(set(customization) - {"rftConfig"})
    if others:
        raise ConfigError(f"customizationConfig.{others[0]}", f"{RFT} takes only rftConfig")
    rft = customization.get("rftConfig") or {}
    if not isinstance(rft, dict):
        raise ConfigError("customizationConfig.rftConfig", "must be an object")
    return rft


def _rft_hyperparameters(rft: dict[str, Any]) -> dict[str, Any]:
    hyper = dict(_member(rft, "hyperParameters", "customizationConfig.rftConfig."))
    if "reasoningEffort" in hyper:
        # Bedrock sets how long a reasoning model thinks; openrft's models have no such
        # control, and quietly training without it would not be what was asked for.
        raise ConfigError(
            f"{BEDROCK_SECTION}.reasoningEffort",
            "openrft has no reasoning-effort setting for its models; leave it out",
        )
    return hyper


def _grader(
    raw: dict[str, Any], rft: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any] | None, str | None]:
    where = "customizationConfig.rftConfig."
    grader = _member(rft, "graderConfig", where)
    arn = _member(grader, "lambdaGrader", f"{where}graderConfig.").get("lambdaArn")
    if arn is None:
        return raw, None, None
    if not isinstance(arn, str) or not arn:
        raise ConfigError("graderConfig.lambdaGrader.lambdaArn", "must be a non-empty string")
    if arn.startswith(("http://", "https://")):
        return raw, {"type": "lambda", "name": "lambda", "url": arn}, None
    if is_lambda_arn(arn):
        return raw, None, arn
    _section(raw, "reward")["grader"] = arn
    return raw, None, None


def _training_location(config: Any) -> str:
    if isinstance(config, dict) and config.get("invocationLogsConfig") is not None:
        raise ConfigError(
            "trainingDataConfig.invocationLogsConfig",
            "invocation logs are not kept here; give trainingDataConfig.s3Uri",
        )
    return _location(config, "trainingDataConfig")


def _location(config: Any, where: str) -> str:
    uri = config.get("s3Uri") if isinstance(config, dict) else None
    if not isinstance(uri, str) or not uri:
        raise ConfigError(f"{where}.s3Uri", "is required")
    return uri


@router.get("/model-customization-jobs")
def list_jobs(
    request: Request,
    creationTimeAfter: datetime | None = None,  # noqa: N803 (Bedrock's parameter names)
    creationTimeBefore: datetime | None = None,  # noqa: N803
    statusEquals: str | None = None,  # noqa: N803
    nameContains: str | None = None,  # noqa: N803
    maxResults: int = 100,  # noqa: N803
    nextToken: str | None = None,  # noqa: N803
    sortBy: str = "CreationTime",  # noqa: N803
    sortOrder: str = "Descending",  # noqa: N803
) -> dict[str, Any]:
    check_choice(statusEquals, "statusEquals", JOB_STATUSES)
    jobs = [
        job
        for job in service_of(request).store.list_jobs()
        if (statusEquals is None or bedrock_status(job) == statusEquals)
        and (not nameContains or nameContains in job.name)
        and in_window(job.created_at, creationTimeAfter, creationTimeBefore)
    ]
    jobs = sort_by_time(jobs, lambda job: job.created_at, sortBy, sortOrder)
    shown, token = page(jobs, maxResults, nextToken)
    summaries = [job_summary(job) for job in shown]
    return {"modelCustomizationJobSummaries": summaries, "nextToken": token}


@router.get("/model-customization-jobs/{job_identifier:path}")
def get_job(request: Request, job_identifier: str) -> dict[str, Any]:
    service = service_of(request)
    return job_view(service.store.get_job(last_segment(job_identifier)), service)


@router.post("/model-customization-jobs/{job_identifier:path}/stop")
def stop_job(request: Request, job_identifier: str) -> dict[str, Any]:
    service_of(request).stop_job(last_segment(job_identifier))
    return {}
