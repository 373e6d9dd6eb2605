"""Bedrock's response shapes for openrft's jobs and the models they make (the `bedrock`
service model in botocore is the reference), and the filtering, sorting and paging its List
calls share.

A job answers as a model customization job whatever API created it. A Completed job's
`final/` model is a custom model named as its `customModelName` said, with the ARN
`arn:openrft:bedrock:local:000000000000:custom-model/<name>/<job-id>`, until
DeleteCustomModel removes it.

Get(ModelCustomizationJob|CustomModel) fill Bedrock's `trainingMetrics.trainingLoss` (the
last step's loss/total) and add `openrftUsage`, what the job used (openrft.metrics.usage):
an extension key, which botocore's parser leaves out of the parsed response (docs/aws.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from openrft.api.bedrock_outputs import output_error, outputs_pending
from openrft.api.views import iso
from openrft.config_parse import BEDROCK_ALIASES
from openrft.errors import ConfigError
from openrft.jobs import runfiles
from openrft.jobs.model import Job, JobStatus
from openrft.jobs.service import JobService
from openrft.metrics import names

T = TypeVar("T")
ACCOUNT = "000000000000"
ARN_PREFIX = f"arn:openrft:bedrock:local:{ACCOUNT}"
RFT = "REINFORCEMENT_FINE_TUNING"
# Bedrock's job statuses have no Queued: a job waiting for a worker is InProgress there, as it
# is on AWS (statusDetails still say NotStarted), so a script polling for the end never stops
# at a queued job.
JOB_STATUSES = ("InProgress", "Completed", "Failed", "Stopping", "Stopped")
MODEL_STATUSES = ("Active", "Creating", "Failed")
SORT_ORDERS = ("Ascending", "Descending")
USAGE = "openrftUsage"  # the extension key of what a job used
DELETED = "customModelDeletedAt"  # Job.extra key: when DeleteCustomModel removed the model
INPUTS = "s3Inputs"  # Job.extra key: {server path of a downloaded data file: its s3:// URI}
DETAILS = {
    "validation": "validationDetails",
    "dataProcessing": "dataProcessingDetails",
    "training": "trainingDetails",
}


def job_arn(job_id: str) -> str:
    return f"{ARN_PREFIX}:model-customization-job/{job_id}"


def last_segment(identifier: str) -> str:
    """The id in an ARN ending in /<id>, or the identifier itself."""
    return identifier.rsplit("/", 1)[-1]


def model_name(job: Job) -> str:
    return job.extra.get("customModelName") or job.name


def model_arn(job: Job) -> str:
    return f"{ARN_PREFIX}:custom-model/{model_name(job)}/{job.id}"


def has_model(job: Job) -> bool:
    """Whether the job's output model exists: the job completed (its S3 outputs written, if
    it has any) and the model is not deleted."""
    return bedrock_status(job) == "Completed" and DELETED not in job.extra


def bedrock_status(job: Job) -> str:
    """The job's status as Bedrock shows it: a job whose outputs are still being written to
    S3 has not ended yet (openrft.api.bedrock_outputs), and one whose outputs could not be
    written has failed."""
    if outputs_pending(job):
        return "Stopping" if job.status is JobStatus.STOPPED else JobStatus.IN_PROGRESS.value
    if output_error(job):
        return JobStatus.FAILED.value
    return JobStatus.IN_PROGRESS.value if job.status is JobStatus.QUEUED else job.status.value


def failure_message(job: Job) -> str | None:
    """Why the job failed, naming its data by the s3:// URIs the request gave (the worker
    names the server paths they were downloaded to)."""
    message = output_error(job) or job.failure_message
    for path, uri in job.extra.get(INPUTS, {}).items():
        message = message and message.replace(path, uri)
    return message


def end_time(job: Job) -> str | None:
    return None if outputs_pending(job) else iso(job.ended_at)


def present(shape: dict[str, Any]) -> dict[str, Any]:
    """The shape without its null members: AWS leaves absent what it has no value for."""
    return {key: value for key, value in shape.items() if value is not None}


def job_view(job: Job, service: JobService) -> dict[str, Any]:
    """GetModelCustomizationJob's response for a job (any job, whichever API created it)."""
    extra = job.extra
    completed = bedrock_status(job) == "Completed"
    details = {
        DETAILS[stage]: {
            "status": value,
            "creationTime": iso(job.created_at),
            "lastModifiedTime": iso(job.updated_at),
        }
        for stage, value in job.status_details.items()
    }
    return present(
        {
            "jobArn": job_arn(job.id),
            "jobName": job.name,
            "outputModelName": model_name(job),
            "outputModelArn": model_arn(job) if completed else None,
            "outputModelPath": str(service.run_dir(job.id) / "final") if has_model(job) else None,
            "clientRequestToken": extra.get("clientRequestToken"),
            "roleArn": extra.get("roleArn"),
            "status": bedrock_status(job),
            "statusDetails": details,
            "failureMessage": failure_message(job),
            "creationTime": iso(job.created_at),
            "lastModifiedTime": iso(job.updated_at),
            "endTime": end_time(job),
            "baseModelArn": base_model(job),
            "customizationType": RFT,
            **data_configs(job, service),
            "vpcConfig": extra.get("vpcConfig"),
            "customizationConfig": extra.get("customizationConfig"),
            **run_metrics(job, service),
        }
    )


def run_metrics(job: Job, service: JobService) -> dict[str, Any]:
    """`trainingMetrics` (Bedrock's one training number, trainingLoss: the loss/total of the
    last step that logged one; absent before) and `openrftUsage` (the usage totals so far),
    from the job's metrics.jsonl. Bedrock's `validationMetrics` hold a validation loss, which
    reinforcement fine-tuning does not compute: left out."""
    records = runfiles.read_metrics(service.run_dir(job.id))
    loss = next(
        (
            float(r[names.LOSS])
            for r in reversed(records)
            if isinstance(r.get(names.LOSS), int | float) and math.isfinite(r[names.LOSS])
        ),
        None,
    )
    training = None if loss is None else {"trainingLoss": loss}
    return {"trainingMetrics": training, USAGE: runfiles.read_usage(service.run_dir(job.id))}


def data_configs(job: Job, service: JobService) -> dict[str, Any]:
    """hyperParameters and the data configs, as Get and GetCustomModel both answer them."""
    extra = job.extra
    config_data = job.config.get("data", {})
    validation = config_data.get("validation_file")
    validators = [{"s3Uri": validation}] if validation else []
    return {
        "hyperParameters": _hyperparameters(job),
        "trainingDataConfig": extra.get("trainingDataConfig")
        or {"s3Uri": config_data.get("train_file")},
        "validationDataConfig": extra.get("validationDataConfig") or {"validators": validators},
        "outputDataConfig": extra.get("outputDataConfig")
        or {"s3Uri": str(service.run_dir(job.id))},
    }


def base_model(job: Job) -> str:
    return job.extra.get("baseModelIdentifier") or job.config["model"]["name"]


def job_summary(job: Job) -> dict[str, Any]:
    """An entry of ListModelCustomizationJobs."""
    completed = bedrock_status(job) == "Completed"
    return present(
        {
            "jobArn": job_arn(job.id),
            "baseModelArn": base_model(job),
            "jobName": job.name,
            "status": bedrock_status(job),
            "lastModifiedTime": iso(job.updated_at),
            "creationTime": iso(job.created_at),
            "endTime": end_time(job),
            "customModelArn": model_arn(job) if completed else None,
            "customModelName": model_name(job),
            "customizationType": RFT,
        }
    )


def _hyperparameters(job: Job) -> dict[str, str]:
    """The effective values under Bedrock's names (strings, as Bedrock returns them)."""
    values = {}
    for name, (target, _) in BEDROCK_ALIASES.items():
        section, key = target.split(".")
        value = job.config.get(section, {}).get(key)
        if value is not None:
            values[name] = str(value)
    return values


# -- List calls -------------------------------------------------------------------------------


def check_choice(value: str | None, field: str, choices: Sequence[str]) -> None:
    if value is not None and value not in choices:
        raise ConfigError(field, f"{value!r} is not one of: {', '.join(choices)}")


def in_window(timestamp: float, after: datetime | None, before: datetime | None) -> bool:
    """Strictly after `after` and before `before` (each optional), as Bedrock filters, to the
    millisecond that responses show: a creationTime read from a response and passed back as
    creationTimeAfter leaves that job out."""
    shown = _millis(datetime.fromtimestamp(timestamp, UTC))
    if after is not None and shown <= _millis(after):
        return False
    return before is None or shown < _millis(before)


def _millis(moment: datetime) -> int:
    """Whole milliseconds since the epoch, truncated as views.iso shows them; naive is UTC."""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return int(moment.replace(microsecond=0).timestamp()) * 1000 + moment.microsecond // 1000


def sort_by_time(
    items: list[T], key: Callable[[T], float], sort_by: str, sort_order: str
) -> list[T]:
    check_choice(sort_by, "sortBy", ("CreationTime",))
    check_choice(sort_order, "sortOrder", SORT_ORDERS)
    return sorted(items, key=key, reverse=sort_order == "Descending")


def page(items: list[T], max_results: int, next_token: str | None) -> tuple[list[T], str | None]:
    """One page and the token of the next (None on the last). Tokens are offsets into the
    filtered, sorted list, as this server hands them out."""
    if not 1 <= max_results <= 1000:
        raise ConfigError("maxResults", f"{max_results} is out of range 1 to 1000")
    if next_token is not None and not next_token.isdigit():
        raise ConfigError("nextToken", f"{next_token!r} is not a token this server gave")
    start = int(next_token or 0)
    end = start + max_results
    return items[start:end], str(end) if end < len(items) else None
