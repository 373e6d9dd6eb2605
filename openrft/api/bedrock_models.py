"""The Bedrock-compatible API for custom models: GetCustomModel, ListCustomModels and
DeleteCustomModel, at botocore's paths and in its shapes (docs/aws.md).

A custom model is a Completed job's `final/` directory, named as the job's `customModelName`
said (openrft.api.bedrock_shapes). GetCustomModel and DeleteCustomModel take its ARN or its
name; a name two models share means the newest. Deleting removes `final/` and leaves the job
and its checkpoints.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from datetime import datetime
from pathlib import PurePath
from typing import Any

from fastapi import APIRouter, Request

from openrft.api.bedrock_shapes import (
    ACCOUNT,
    DELETED,
    MODEL_STATUSES,
    RFT,
    base_model,
    check_choice,
    data_configs,
    has_model,
    in_window,
    job_arn,
    last_segment,
    model_arn,
    model_name,
    page,
    present,
    run_metrics,
    sort_by_time,
)
from openrft.api.views import iso, service_of
from openrft.jobs.model import Job, JobNotFound
from openrft.jobs.service import JobService

router = APIRouter(tags=["bedrock"])


def find_model(service: JobService, identifier: str) -> Job:
    """The job whose model `identifier` (an ARN or a name) names; 404 when there is none."""
    if identifier.startswith("arn:"):
        try:
            job = service.store.get_job(last_segment(identifier))
        except JobNotFound:
            job = None
        if job is not None and has_model(job) and model_arn(job) == identifier:
            return job
    else:
        for job in service.store.list_jobs():  # newest first
            if has_model(job) and model_name(job) == identifier:
                return job
    raise JobNotFound(f"no custom model {identifier}", "modelIdentifier")


def _created(job: Job) -> float:
    """A model exists from the moment its job completed."""
    return job.ended_at or job.updated_at


def model_view(job: Job, service: JobService) -> dict[str, Any]:
    """GetCustomModel's response; `modelPath` (where the weights are) is openrft's own."""
    return present(
        {
            "modelArn": model_arn(job),
            "modelName": model_name(job),
            "jobName": job.name,
            "jobArn": job_arn(job.id),
            "baseModelArn": base_model(job),
            "customizationType": RFT,
            **data_configs(job, service),
            "creationTime": iso(_created(job)),
            "customizationConfig": job.extra.get("customizationConfig"),
            "modelStatus": "Active",
            "modelPath": str(service.run_dir(job.id) / "final"),
            **run_metrics(job, service),  # trainingMetrics, and openrftUsage
        }
    )


def model_summary(job: Job) -> dict[str, Any]:
    base = base_model(job)
    return {
        "modelArn": model_arn(job),
        "modelName": model_name(job),
        "creationTime": iso(_created(job)),
        "baseModelArn": base,
        "baseModelName": PurePath(base).name or base,
        "customizationType": RFT,
        "ownerAccountId": ACCOUNT,
        "modelStatus": "Active",
    }


@router.get("/custom-models")
def list_models(
    request: Request,
    creationTimeBefore: datetime | None = None,  # noqa: N803 (Bedrock's parameter names)
    creationTimeAfter: datetime | None = None,  # noqa: N803
    nameContains: str | None = None,  # noqa: N803
    baseModelArnEquals: str | None = None,  # noqa: N803
    foundationModelArnEquals: str | None = None,  # noqa: N803
    maxResults: int = 100,  # noqa: N803
    nextToken: str | None = None,  # noqa: N803
    sortBy: str = "CreationTime",  # noqa: N803
    sortOrder: str = "Descending",  # noqa: N803
    isOwned: bool | None = None,  # noqa: N803
    modelStatus: str | None = None,  # noqa: N803
) -> dict[str, Any]:
    check_choice(modelStatus, "modelStatus", MODEL_STATUSES)
    # Every model here is this server's own and Active (it exists once its job completed).
    listed = isOwned is not False and modelStatus in (None, "Active")
    jobs = [
        job
        for job in service_of(request).store.list_jobs()
        if listed
        and has_model(job)
        and (not nameContains or nameContains in model_name(job))
        and baseModelArnEquals in (None, base_model(job))
        and foundationModelArnEquals in (None, base_model(job))
        and in_window(_created(job), creationTimeAfter, creationTimeBefore)
    ]
    jobs = sort_by_time(jobs, _created, sortBy, sortOrder)
    shown, token = page(jobs, maxResults, nextToken)
    return {"modelSummaries": [model_summary(job) for job in shown], "nextToken": token}


@router.get("/custom-models/{model_identifier:path}")
def get_model(request: Request, model_identifier: str) -> dict[str, Any]:
    service = service_of(request)
    return model_view(find_model(service, model_identifier), service)


@router.delete("/custom-models/{model_identifier:path}")
def delete_model(request: Request, model_identifier: str) -> dict[str, Any]:
    service = service_of(request)
    job = find_model(service, model_identifier)
    now = time.time()
    service.store.modify(job.id, lambda fresh: replace(fresh, extra={**fresh.extra, DELETED: now}))
    shutil.rmtree(service.run_dir(job.id) / "final", ignore_errors=True)
    return {}
