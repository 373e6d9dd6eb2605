"""The OpenAI-compatible API (`/v1`): files and reinforcement fine-tuning jobs, in OpenAI's
shapes, so the official `openai` client works against the server:

    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=TOKEN)
    job = client.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=f.id,
        method={"type": "reinforcement", "reinforcement": {"grader": {...}}})

The grader JSON goes to RUN_DIR/grader.json (reward.grader points at it) after a build check.
Hyperparameter mapping and status mapping: docs/api.md. An `openrft_config` object in the
body (`extra_body=` in the client) adds openrft settings OpenAI has no name for. A field
openrft cannot honour (reasoning_effort, integrations, the deprecated top-level
hyperparameters, an unknown key) is refused with a 400 naming it, never dropped. A succeeded
job's `result_files` and `trained_tokens` come from its metrics (openai_results.py). What a job
used (prompt, sampled and trained tokens, graded samples, judge tokens, tool calls:
openrft.metrics.usage) is `openrft_usage` on a retrieved job and in each checkpoint's
`metrics`: OpenAI's job object has no usage field, and the client keeps unknown keys in
`model_extra` (docs/api.md).
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

from fastapi import APIRouter, Body, File, Form, Request, UploadFile
from fastapi.responses import FileResponse

from openrft.api.openai_results import job_results
from openrft.api.uploads import upload_status, validate_upload
from openrft.api.views import service_of
from openrft.config_parse import check_body
from openrft.errors import ConfigError, RFTError
from openrft.jobs import runfiles
from openrft.jobs.model import FileRecord, Job, JobConflict, JobStatus
from openrft.jobs.service import JobService
from openrft.metrics.usage import usage_totals

router = APIRouter(prefix="/v1", tags=["openai"])
HYPER = "method.reinforcement.hyperparameters"
# OpenAI hyperparameter -> (openrft field, how the value converts)
HYPERPARAMETERS: dict[str, tuple[str, Any]] = {
    "n_epochs": ("train.epochs", lambda v: v),
    "batch_size": ("train.prompts_per_step", lambda v: v),
    "learning_rate_multiplier": ("train.learning_rate", lambda v: _number(v) * 1e-5),
    "eval_interval": ("eval.interval", lambda v: v),
    "eval_samples": ("eval.max_prompts", lambda v: v),
    "compute_multiplier": (
        "rollout.samples_per_prompt",
        lambda v: min(64, max(2, round(_number(v) * 8))),
    ),
}
PARAMS = {target: f"{HYPER}.{name}" for name, (target, _) in HYPERPARAMETERS.items()}
PARAMS |= {"model.name": "model", "data.train_file": "training_file", "train.seed": "seed"}
PARAMS |= {"data.validation_file": "validation_file", "reward.grader": "method"}
# "default" asks for the model's own reasoning effort; openrft's models have no reasoning
# mode, so that is the only value openrft can honour.
REASONING_EFFORTS = ("default", "low", "medium", "high")
BODY_FIELDS = ("model", "training_file", "validation_file", "suffix", "seed", "metadata",
               "method", "hyperparameters", "integrations", "openrft_config")  # fmt: skip
REINFORCEMENT_FIELDS = ("grader", "hyperparameters", "tools", "max_episode_steps")
USAGE = "openrft_usage"  # an extension key: what a job used (openrft.metrics.usage)


# -- files ---------------------------------------------------------------------------------


def file_object(record: FileRecord, service: JobService) -> dict[str, Any]:
    status, details = upload_status(service, record.id)
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": int(record.created_at),
        "filename": record.filename,
        "purpose": record.purpose,
        "status": status,
        "status_details": details,
    }


@router.post("/files")
def upload_file(
    request: Request,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()] = "fine-tune",
) -> dict[str, Any]:
    service = service_of(request)
    record = service.save_upload(file.filename or "upload", file.file, purpose)
    validate_upload(service, record)  # as OpenAI does: status "processed" or "error"
    return file_object(record, service)


@router.get("/files")
def list_files(request: Request) -> dict[str, Any]:
    service = service_of(request)
    data = [file_object(r, service) for r in service.store.list_files()]
    return {"object": "list", "data": data, "has_more": False}


@router.get("/files/{file_id}")
def get_file(request: Request, file_id: str) -> dict[str, Any]:
    service = service_of(request)
    return file_object(service.store.get_file(file_id), service)


@router.get("/files/{file_id}/content")
def file_content(request: Request, file_id: str) -> FileResponse:
    return FileResponse(service_of(request).file_path(file_id))


# -- jobs ----------------------------------------------------------------------------------


@router.post("/fine_tuning/jobs")
def create_job(request: Request, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    service = service_of(request)
    try:
        raw, grader = openai_config(body)
        check_grader(grader)
        keep = ("model", "training_file", "validation_file", "suffix", "seed", "metadata")
        extra = {key: body.get(key) for key in keep} | {"method": body["method"]}
        name = body.get("suffix") or f"ft-{body['model']}"
        job = service.create_job(raw, name, "openai", extra, grader_spec=grader)
    except ConfigError as exc:
        if exc.field not in PARAMS:
            raise
        detail = str(exc).split(": ", 1)[-1]
        raise ConfigError(PARAMS[exc.field], f"{detail} (openrft's {exc.field})") from exc
    return job_object(job, service)


def openai_config(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """openrft's raw config and the grader JSON from a fine_tuning.jobs.create body."""
    check_body(body)  # before any copy or walk of a member: deep JSON exhausts the stack
    for key in ("model", "training_file"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise ConfigError(key, "is required (a string)")
    for key in ("suffix", "validation_file"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise ConfigError(key, f"must be a string, got {type(body[key]).__name__}")
    _refuse_unhonoured(body)
    method = body.get("method")
    if not isinstance(method, dict) or method.get("type") != "reinforcement":
        raise ConfigError("method.type", "only 'reinforcement' fine-tuning is supported here")
    settings = method.get("reinforcement") or {}
    _refuse_unknown(settings, REINFORCEMENT_FIELDS, "method.reinforcement")
    grader = settings.get("grader")
    if not isinstance(grader, dict):
        raise ConfigError("method.reinforcement.grader", "is required (a grader object)")
    _refuse_grader_reasoning(grader, "method.reinforcement.grader")
    raw = copy.deepcopy(body.get("openrft_config") or {})
    if not isinstance(raw, dict):
        raise ConfigError("openrft_config", "must be an object (openrft's config as JSON)")
    _set(raw, "model.name", body["model"])
    _set(raw, "data.train_file", body["training_file"])
    if body.get("validation_file"):
        _set(raw, "data.validation_file", body["validation_file"])
    if body.get("seed") is not None:
        _set(raw, "train.seed", body["seed"])
    _agent_tools(raw, settings)
    hyper = settings.get("hyperparameters") or {}
    if not isinstance(hyper, dict):
        raise ConfigError(HYPER, "must be an object")
    for name, value in hyper.items():
        if value == "auto" or value is None:
            continue
        if name == "reasoning_effort":
            _check_reasoning_effort(value)
            continue
        if name not in HYPERPARAMETERS:
            raise ConfigError(f"{HYPER}.{name}", "unknown hyperparameter")
        target, convert = HYPERPARAMETERS[name]
        try:
            _set(raw, target, convert(value))
        except (ValueError, OverflowError) as exc:  # round(inf) overflows
            raise ConfigError(f"{HYPER}.{name}", str(exc)) from exc
    return raw, grader


def _refuse_unhonoured(body: dict[str, Any]) -> None:
    """Top-level fields openrft has no equivalent for: a 400 naming each, never a silent drop."""
    _refuse_unknown(body, BODY_FIELDS, "")
    if body.get("hyperparameters"):
        raise ConfigError(
            "hyperparameters",
            "the top-level hyperparameters are OpenAI's deprecated form; put them in "
            "method.reinforcement.hyperparameters",
        )
    if body.get("integrations"):
        raise ConfigError(
            "integrations",
            "openrft has no integrations (Weights & Biases); its metrics are in the job's "
            "metrics.jsonl, the dashboard and the job's result file",
        )


def _refuse_unknown(table: Any, known: tuple[str, ...], where: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(where or "<body>", "must be an object")
    for key in table:
        if key not in known:
            field = f"{where}.{key}" if where else key
            raise ConfigError(field, f"unknown field; openrft reads: {', '.join(known)}")


def _check_reasoning_effort(value: Any) -> None:
    """OpenAI sets how long a reasoning model thinks; openrft's models have no such control,
    so anything but the model's default would be trained without being honoured."""
    field = f"{HYPER}.reasoning_effort"
    if value not in REASONING_EFFORTS:
        raise ConfigError(field, f"{value!r} is not one of {', '.join(REASONING_EFFORTS)}")
    if value != "default":
        raise ConfigError(
            field,
            f"{value!r} cannot be honoured: openrft's models have no reasoning-effort setting; "
            "leave it out or use 'default'",
        )


def _refuse_grader_reasoning(grader: dict[str, Any], where: str) -> None:
    """A model grader's sampling_params.reasoning_effort: openrft's judge does not pass it on
    to the grading model (docs/judge.md), so the facade refuses it. Walks `multi` graders."""
    sampling = grader.get("sampling_params")
    if isinstance(sampling, dict) and sampling.get("reasoning_effort") is not None:
        raise ConfigError(
            f"{where}.sampling_params.reasoning_effort",
            "openrft's model graders do not send reasoning_effort to the grading model; "
            "leave it out",
        )
    subgraders = grader.get("graders")
    if isinstance(subgraders, dict):
        for key, sub in subgraders.items():
            if isinstance(sub, dict):
                _refuse_grader_reasoning(sub, f"{where}.graders.{key}")


def _agent_tools(raw: dict[str, Any], settings: dict[str, Any]) -> None:
    """Agent RFT (Azure's preview): `reinforcement.tools: [{name, server_url, headers}]` as
    tool endpoints openrft calls during episodes, `max_episode_steps` as env.max_turns."""
    tools = settings.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not tools:
            raise ConfigError("method.reinforcement.tools", "must be a list of tools")
        endpoints: dict[str, str] = {}
        headers: dict[str, str] = {}
        for i, tool in enumerate(tools):
            where = f"method.reinforcement.tools[{i}]"
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise ConfigError(where, "needs a name and a server_url")
            url = tool.get("server_url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ConfigError(f"{where}.server_url", f"{url!r} is not an http(s) URL")
            endpoints[tool["name"]] = url
            tool_headers = tool.get("headers") or {}
            if not isinstance(tool_headers, dict):
                raise ConfigError(f"{where}.headers", "must be an object")
            for key, value in tool_headers.items():
                if headers.get(key, value) != value:
                    raise ConfigError(f"{where}.headers", f"{key} differs between tools")
                headers[key] = str(value)
        _set(raw, "env.tool_endpoints", endpoints)
        if headers:
            _set(raw, "env.tool_headers", headers)
    if settings.get("max_episode_steps") is not None:
        _set(raw, "env.max_turns", settings["max_episode_steps"])


def check_grader(spec: dict[str, Any]) -> None:
    """Build the grader once, so a bad grader fails the request, naming what is wrong."""
    from openrft.rewards import build_grader

    try:
        build_grader(spec)
    except RFTError as exc:
        raise ConfigError("method.reinforcement.grader", str(exc)) from exc


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    section, key = dotted.split(".")
    table = raw.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(section, "must be an object")
    table[key] = value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"must be a positive number or 'auto', got {value!r}")
    return float(value)


@router.get("/fine_tuning/jobs")
def list_jobs(request: Request, after: str | None = None, limit: int = 20) -> dict[str, Any]:
    service = service_of(request)
    jobs = service.store.list_jobs()
    if after:
        ids = [job.id for job in jobs]
        jobs = jobs[ids.index(after) + 1 :] if after in ids else []
    page = jobs[: max(1, min(limit, 100))]
    data = [job_object(job, service) for job in page]
    return {"object": "list", "data": data, "has_more": len(jobs) > len(page)}


@router.get("/fine_tuning/jobs/{job_id}")
def retrieve_job(request: Request, job_id: str) -> dict[str, Any]:
    service = service_of(request)
    job = service.store.get_job(job_id)
    usage = runfiles.read_usage(service.run_dir(job.id))
    return job_object(job, service) | {USAGE: usage}


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    service = service_of(request)
    return job_object(service.stop_job(job_id, "cancel"), service)


@router.post("/fine_tuning/jobs/{job_id}/pause")
def pause_job(request: Request, job_id: str) -> dict[str, Any]:
    service = service_of(request)
    return job_object(service.stop_job(job_id, "pause"), service)


@router.post("/fine_tuning/jobs/{job_id}/resume")
def resume_job(request: Request, job_id: str) -> dict[str, Any]:
    service = service_of(request)
    job = service.store.get_job(job_id)
    if job.stop_reason != "pause" or job.status not in (JobStatus.STOPPED, JobStatus.STOPPING):
        raise JobConflict(f"job {job_id} is {openai_status(job)}; only paused jobs resume")
    return job_object(service.resume_job(job_id), service)


@router.get("/fine_tuning/jobs/{job_id}/events")
def list_events(
    request: Request, job_id: str, after: str | None = None, limit: int = 20
) -> dict[str, Any]:
    store = service_of(request).store
    store.get_job(job_id)
    events = list(reversed(store.list_events(job_id)))  # newest first, as OpenAI lists them
    if after and after.startswith("ftevent-") and after[8:].isdigit():
        events = [e for e in events if e.seq < int(after[8:])]
    page = events[: max(1, min(limit, 100))]
    data = [
        {
            "id": f"ftevent-{e.seq}",
            "object": "fine_tuning.job.event",
            "created_at": int(e.time),
            "level": {"warning": "warn"}.get(e.level, e.level),
            "message": e.message,
            "data": e.data,
            "type": "message",
        }
        for e in page
    ]
    return {"object": "list", "data": data, "has_more": len(events) > len(page)}


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
def list_checkpoints(request: Request, job_id: str) -> dict[str, Any]:
    service = service_of(request)
    service.store.get_job(job_id)
    found = list(reversed(runfiles.list_checkpoints(service.run_dir(job_id))))
    records = runfiles.read_metrics(service.run_dir(job_id)) if found else []
    data = [
        {
            "id": f"ftckpt-{job_id}-{c['step']}",
            "object": "fine_tuning.job.checkpoint",
            "created_at": int(c["created_at"]),
            "fine_tuned_model_checkpoint": c["path"],
            "fine_tuning_job_id": job_id,
            "step_number": c["step"],
            "metrics": {
                "step": c["step"],
                "train_loss": c["metrics"].get("loss/total"),
                "train_mean_reward": c["metrics"].get("reward/mean"),
                "full_valid_mean_reward": c["metrics"].get("val/reward/mean"),
                USAGE: usage_totals(records, last_step=c["step"]),  # up to the checkpoint
            },
        }
        for c in found
    ]
    return {"object": "list", "data": data, "has_more": False}


def openai_status(job: Job) -> str:
    status = job.status
    if status is JobStatus.QUEUED:
        return "queued"
    if status is JobStatus.IN_PROGRESS:
        checked = job.status_details.get("dataProcessing") == "Completed"
        return "running" if checked else "validating_files"
    if status in (JobStatus.STOPPING, JobStatus.STOPPED):
        return "paused" if job.stop_reason == "pause" else "cancelled"
    return {JobStatus.COMPLETED: "succeeded", JobStatus.FAILED: "failed"}[status]


def job_object(job: Job, service: JobService) -> dict[str, Any]:
    extra, config = job.extra, job.config
    validation_file = extra.get("validation_file") or config["data"]["validation_file"] or None
    method = extra.get("method") or {"type": "reinforcement", "reinforcement": {}}
    completed = job.status is JobStatus.COMPLETED
    result_files, trained_tokens = job_results(job, service, openai_status(job))
    error = None
    if job.status is JobStatus.FAILED:
        error = {"code": "job_failed", "message": job.failure_message or "", "param": None}
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "model": extra.get("model") or config["model"]["name"],
        "created_at": int(job.created_at),
        "finished_at": int(job.ended_at) if job.ended_at and job.ended else None,
        "fine_tuned_model": str(service.run_dir(job.id) / "final") if completed else None,
        "status": openai_status(job),
        "training_file": extra.get("training_file") or config["data"]["train_file"],
        "validation_file": validation_file,
        "hyperparameters": {
            "n_epochs": config["train"]["epochs"],
            "batch_size": config["train"]["prompts_per_step"],
            "learning_rate_multiplier": config["train"]["learning_rate"] / 1e-5,
        },
        "method": method,
        "error": error,
        "seed": config["train"]["seed"],
        "result_files": result_files,
        "trained_tokens": trained_tokens,
        "organization_id": "openrft",
        "estimated_finish": None,
        "integrations": [],
        "metadata": extra.get("metadata"),
        "user_provided_suffix": extra.get("suffix"),
        "progress": job.progress,
        "updated_at": int(job.updated_at),
    }
