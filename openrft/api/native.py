"""The native API (`/api`): files, jobs, metrics (JSON and server-sent events), rollouts,
events, checkpoints and run-directory files. Shapes are in docs/api.md, "Native API"."""

from __future__ import annotations

import tomllib
from typing import Annotated, Any

from fastapi import APIRouter, Body, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse, StreamingResponse

from openrft.api.sse import metrics_stream
from openrft.api.views import event_view, file_view, iso, job_view, service_of
from openrft.errors import ConfigError
from openrft.jobs import runfiles
from openrft.jobs.model import JobError, parse_status

router = APIRouter(prefix="/api", tags=["native"])


# -- files ---------------------------------------------------------------------------------


@router.post("/files")
def upload_file(
    request: Request,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()] = "fine-tune",
) -> dict[str, Any]:
    record = service_of(request).save_upload(file.filename or "upload", file.file, purpose)
    return file_view(record)


@router.get("/files")
def list_files(request: Request) -> dict[str, Any]:
    return {"data": [file_view(r) for r in service_of(request).store.list_files()]}


@router.get("/files/{file_id}")
def get_file(request: Request, file_id: str) -> dict[str, Any]:
    return file_view(service_of(request).store.get_file(file_id))


@router.get("/files/{file_id}/content")
def file_content(request: Request, file_id: str) -> FileResponse:
    path = service_of(request).file_path(file_id)
    return FileResponse(path, filename=path.name)


# -- jobs ----------------------------------------------------------------------------------


@router.post("/jobs", status_code=201)
def create_job(request: Request, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    """`{"config": {...}}` or `{"config_toml": "..."}`, optional `"name"`."""
    if isinstance(body.get("config_toml"), str):
        try:
            raw = tomllib.loads(body["config_toml"])
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config_toml", f"not valid TOML: {exc}") from exc
    elif isinstance(body.get("config"), dict):
        raw = body["config"]
    else:
        raise ConfigError("config", "give 'config' (an object) or 'config_toml' (a string)")
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError("name", f"must be a string, got {name!r}")
    service = service_of(request)
    return job_view(service.create_job(raw, name=name or None), service)


@router.get("/jobs")
def list_jobs(request: Request, status: str | None = None) -> dict[str, Any]:
    wanted = parse_status(status, "status") if status else None
    service = service_of(request)
    return {"data": [job_view(job, service) for job in service.store.list_jobs(wanted)]}


@router.get("/jobs/{job_id}")
def get_job(request: Request, job_id: str) -> dict[str, Any]:
    """The job, with what it has used so far (tokens, graded samples, judge tokens, tool
    calls: openrft.metrics.usage), summed from its metrics."""
    service = service_of(request)
    job = service.store.get_job(job_id)  # 404 before any file is read
    usage = runfiles.read_usage(service.run_dir(job.id))
    return job_view(job, service) | {"usage": usage}


@router.post("/jobs/{job_id}/stop")
def stop_job(request: Request, job_id: str) -> dict[str, Any]:
    service = service_of(request)
    return job_view(service.stop_job(job_id), service)


@router.post("/jobs/{job_id}/resume")
def resume_job(request: Request, job_id: str) -> dict[str, Any]:
    service = service_of(request)
    return job_view(service.resume_job(job_id), service)


@router.delete("/jobs/{job_id}", status_code=204)
def delete_job(request: Request, job_id: str) -> Response:
    service_of(request).delete_job(job_id)
    return Response(status_code=204)


# -- what a job's run directory holds ---------------------------------------------------------


@router.get("/jobs/{job_id}/metrics")
def metrics(request: Request, job_id: str, after: int | None = None) -> dict[str, Any]:
    service = service_of(request)
    service.store.get_job(job_id)
    data = runfiles.read_metrics(service.run_dir(job_id), after)
    last = max((m.get("step", 0) for m in data), default=after if after is not None else -1)
    return {"data": data, "last_step": last}


@router.get("/jobs/{job_id}/metrics/stream")
def metrics_events(request: Request, job_id: str, after: int | None = None) -> StreamingResponse:
    service = service_of(request)
    service.store.get_job(job_id)
    server = getattr(request.app.state, "server", None)
    stream = metrics_stream(service, job_id, after, lambda: bool(server and server.should_exit))
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


@router.get("/jobs/{job_id}/rollouts/steps")
def rollout_steps(request: Request, job_id: str) -> dict[str, Any]:
    service = service_of(request)
    service.store.get_job(job_id)
    return {"steps": runfiles.rollout_steps(service.run_dir(job_id))}


@router.get("/jobs/{job_id}/rollouts")
def rollouts(request: Request, job_id: str, step: int = Query(...)) -> dict[str, Any]:
    service = service_of(request)
    service.store.get_job(job_id)
    return {"step": step, "data": runfiles.rollouts_for_step(service.run_dir(job_id), step)}


@router.get("/jobs/{job_id}/events")
def events(request: Request, job_id: str, after: int = 0) -> dict[str, Any]:
    store = service_of(request).store
    store.get_job(job_id)
    return {"data": [event_view(e) for e in store.list_events(job_id, after)]}


@router.get("/jobs/{job_id}/checkpoints")
def checkpoints(request: Request, job_id: str) -> dict[str, Any]:
    service = service_of(request)
    service.store.get_job(job_id)
    found = runfiles.list_checkpoints(service.run_dir(job_id))
    return {"data": [{**c, "created_at": iso(c["created_at"])} for c in found]}


@router.get("/jobs/{job_id}/files/{path:path}")
def run_file(request: Request, job_id: str, path: str, offset: int | None = None) -> Response:
    """A file of the run directory; `?offset=N` returns its bytes from N on (to follow a log)."""
    service = service_of(request)
    service.store.get_job(job_id)
    file = runfiles.safe_path(service.run_dir(job_id), path)
    if offset is None:
        return FileResponse(file)
    if offset < 0:
        raise JobError("offset must be >= 0", "offset")
    with file.open("rb") as f:
        f.seek(offset)
        content = f.read()
    return Response(content, media_type="application/octet-stream")
