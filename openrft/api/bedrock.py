"""The Bedrock-compatible API: Create/Get/List/StopModelCustomizationJob for
`customizationType = REINFORCEMENT_FINE_TUNING`, in Bedrock's shapes (docs/api.md).

Data locations (`s3Uri`) are `file-<id>` uploads or server paths; `lambdaArn` is an http(s)
URL of a Lambda-contract endpoint or a local grader reference. `hyperParameters` keep
Bedrock's names and ranges (openrft.config_parse.BEDROCK_ALIASES). An `openrftConfig` object
(openrft's own config as JSON) may add the settings Bedrock has no name for.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request

from openrft.api.views import iso, service_of
from openrft.config_parse import BEDROCK_ALIASES, BEDROCK_SECTION
from openrft.errors import ConfigError
from openrft.jobs.model import Job, JobStatus, parse_status
from openrft.jobs.service import JobService

router = APIRouter(tags=["bedrock"])
ARN_PREFIX = "arn:openrft:bedrock:local:000000000000"
RFT = "REINFORCEMENT_FINE_TUNING"
REASONING_EFFORTS = ("low", "medium", "high")
DETAILS = {
    "validation": "validationDetails",
    "dataProcessing": "dataProcessingDetails",
    "training": "trainingDetails",
}


def job_arn(job_id: str) -> str:
    return f"{ARN_PREFIX}:model-customization-job/{job_id}"


@router.post("/model-customization-jobs", status_code=201)
def create_job(request: Request, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    raw, grader_spec = bedrock_config(body)
    keep = ("jobName", "customModelName", "baseModelIdentifier", "roleArn", "trainingDataConfig")
    extra = {key: body[key] for key in keep if key in body}
    for key in ("validationDataConfig", "outputDataConfig", "customizationConfig"):
        if key in body:
            extra[key] = body[key]
    job = service_of(request).create_job(
        raw, name=body["jobName"], source="bedrock", extra=extra, grader_spec=grader_spec
    )
    return {"jobArn": job_arn(job.id)}


def bedrock_config(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """openrft's raw config (and a grader spec for a Lambda URL) from a Create request."""
    for key in ("jobName", "customModelName", "baseModelIdentifier"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise ConfigError(key, "is required (a non-empty string)")
    if body.get("customizationType") != RFT:
        got = body.get("customizationType")
        raise ConfigError("customizationType", f"must be {RFT!r}, got {got!r}")
    extension = body.get("openrftConfig") or {}
    if not isinstance(extension, dict):
        raise ConfigError("openrftConfig", "must be an object (openrft's config as JSON)")
    raw = copy.deepcopy(extension)
    raw.setdefault("model", {})["name"] = body["baseModelIdentifier"]
    data = raw.setdefault("data", {})
    data["train_file"] = _location(body.get("trainingDataConfig"), "trainingDataConfig")
    validators = (body.get("validationDataConfig") or {}).get("validators") or []
    if validators:
        data["validation_file"] = _location(validators[0], "validationDataConfig.validators[0]")
    rft = (body.get("customizationConfig") or {}).get("rftConfig") or {}
    hyper = dict(rft.get("hyperParameters") or {})
    effort = hyper.pop("reasoningEffort", None)  # accepted; the local models cannot use it
    if effort is not None and effort not in REASONING_EFFORTS:
        field = f"{BEDROCK_SECTION}.reasoningEffort"
        raise ConfigError(field, f"{effort!r} is not one of: {', '.join(REASONING_EFFORTS)}")
    raw[BEDROCK_SECTION] = hyper
    arn = ((rft.get("graderConfig") or {}).get("lambdaGrader") or {}).get("lambdaArn")
    if arn is None:
        return raw, None
    if not isinstance(arn, str) or not arn:
        raise ConfigError("graderConfig.lambdaGrader.lambdaArn", "must be a non-empty string")
    if arn.startswith(("http://", "https://")):
        return raw, {"type": "lambda", "name": "lambda", "url": arn}
    if arn.startswith("arn:aws:lambda:"):
        message = "AWS Lambda ARNs cannot be called here; give the function's http(s) URL"
        raise ConfigError("graderConfig.lambdaGrader.lambdaArn", message)
    raw.setdefault("reward", {})["grader"] = arn
    return raw, None


def _location(config: Any, where: str) -> str:
    uri = config.get("s3Uri") if isinstance(config, dict) else None
    if not isinstance(uri, str) or not uri:
        raise ConfigError(f"{where}.s3Uri", "is required")
    if uri.startswith("s3://"):
        message = "S3 is not reachable here: upload the file (POST /api/files) and pass file-<id>"
        raise ConfigError(f"{where}.s3Uri", message + ", or give a path on the server")
    return uri


@router.get("/model-customization-jobs")
def list_jobs(
    request: Request,
    statusEquals: str | None = None,  # noqa: N803 (Bedrock's parameter names)
    nameContains: str | None = None,  # noqa: N803
    maxResults: int = 100,  # noqa: N803
    nextToken: str | None = None,  # noqa: N803
) -> dict[str, Any]:
    service = service_of(request)
    jobs = service.store.list_jobs(
        parse_status(statusEquals, "statusEquals") if statusEquals else None
    )
    if nameContains:
        jobs = [job for job in jobs if nameContains in job.name]
    start = int(nextToken) if nextToken and nextToken.isdigit() else 0
    if not 1 <= maxResults <= 1000:
        raise ConfigError("maxResults", f"{maxResults} is out of range 1 to 1000")
    page = jobs[start : start + maxResults]
    more = start + maxResults < len(jobs)
    return {
        "modelCustomizationJobSummaries": [_summary(job, service) for job in page],
        "nextToken": str(start + maxResults) if more else None,
    }


@router.get("/model-customization-jobs/{job_identifier:path}")
def get_job(request: Request, job_identifier: str) -> dict[str, Any]:
    service = service_of(request)
    return job_view(service.store.get_job(_job_id(job_identifier)), service)


@router.post("/model-customization-jobs/{job_identifier:path}/stop")
def stop_job(request: Request, job_identifier: str) -> dict[str, Any]:
    service_of(request).stop_job(_job_id(job_identifier))
    return {}


def _job_id(identifier: str) -> str:
    return identifier.rsplit("/", 1)[-1]  # the id, or an ARN ending in /<id>


def _summary(job: Job, service: JobService) -> dict[str, Any]:
    view = job_view(job, service)
    keys = ("jobArn", "jobName", "status", "statusDetails", "lastModifiedTime", "creationTime")
    summary = {key: view[key] for key in keys}
    summary.update(
        endTime=view["endTime"],
        baseModelArn=view["baseModelArn"],
        customModelName=view["outputModelName"],
        customModelArn=view["outputModelArn"],
        customizationType=RFT,
    )
    return summary


def job_view(job: Job, service: JobService) -> dict[str, Any]:
    """GetModelCustomizationJob's response for a job (any job, whichever API created it)."""
    extra = job.extra
    model_name = extra.get("customModelName") or job.name
    completed = job.status is JobStatus.COMPLETED
    config_data = job.config.get("data", {})
    validation = config_data.get("validation_file")
    details = {
        DETAILS[stage]: {
            "status": value,
            "creationTime": iso(job.created_at),
            "lastModifiedTime": iso(job.updated_at),
        }
        for stage, value in job.status_details.items()
    }
    return {
        "jobArn": job_arn(job.id),
        "jobName": job.name,
        "outputModelName": model_name,
        "outputModelArn": f"{ARN_PREFIX}:custom-model/{model_name}" if completed else None,
        "outputModelPath": str(service.run_dir(job.id) / "final") if completed else None,
        "roleArn": extra.get("roleArn"),
        "status": job.status.value,
        "statusDetails": details,
        "failureMessage": job.failure_message,
        "creationTime": iso(job.created_at),
        "lastModifiedTime": iso(job.updated_at),
        "endTime": iso(job.ended_at),
        "baseModelArn": extra.get("baseModelIdentifier") or job.config["model"]["name"],
        "customizationType": RFT,
        "hyperParameters": _hyperparameters(job),
        "trainingDataConfig": extra.get("trainingDataConfig")
        or {"s3Uri": config_data.get("train_file")},
        "validationDataConfig": extra.get("validationDataConfig")
        or ({"validators": [{"s3Uri": validation}]} if validation else None),
        "outputDataConfig": extra.get("outputDataConfig")
        or {"s3Uri": str(service.run_dir(job.id))},
        "customizationConfig": extra.get("customizationConfig"),
    }


def _hyperparameters(job: Job) -> dict[str, str]:
    """The effective values under Bedrock's names (strings, as Bedrock returns them)."""
    values = {}
    for name, (target, _) in BEDROCK_ALIASES.items():
        section, key = target.split(".")
        value = job.config.get(section, {}).get(key)
        if value is not None:
            values[name] = str(value)
    return values
