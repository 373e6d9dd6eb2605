"""Upload limits and validation at upload, for the job server's file routes (docs/api.md).

`UploadLimit` is an ASGI middleware: a POST to /v1/files or /api/files larger than the limit
is answered 413 before its body is read (by Content-Length), or as soon as the bytes received
pass the limit (a chunked body); the multipart parser behind it spools to disk, so nothing
holds a whole upload in memory. The job server guards every request body with it, not only
uploads (`paths=None`: openrft.api.app). `validate_upload` checks a fine-tuning upload as
`openrft data validate` does and records the verdict beside DATA_DIR/files, where the OpenAI
file object reads it as `status` and `status_details`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from openrft.data.load import validate_file
from openrft.jobs.model import FileRecord
from openrft.jobs.service import JobService

DEFAULT_MAX_UPLOAD_MB = 512
UPLOAD_PATHS = frozenset({"/v1/files", "/api/files"})
CODE_SUFFIXES = (".py",)  # grader code: `openrft jobs` uploads it with purpose fine-tune too


class UploadTooLarge(Exception):
    pass


class UploadLimit:
    """Refuses uploads over `max_bytes` with 413 (OpenAI's error shape on /v1, else native).
    `paths`: the routes it guards (POSTs to them); None guards every request with a body."""

    def __init__(self, app: Any, max_bytes: int, paths: frozenset[str] | None = UPLOAD_PATHS):
        self.app, self.max_bytes, self.paths = app, max_bytes, paths

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if not _is_upload(scope, self.paths):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, send, declared)
            return
        received = 0
        state = {"over": False, "started": False}

        async def counted_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                state["over"] = True
                raise UploadTooLarge
            return message

        async def guarded_send(message: dict) -> None:
            # Once over the limit, whatever the app answers (FastAPI turns the parse failure
            # into a 400) is replaced by the 413.
            if state["over"]:
                if not state["started"]:
                    state["started"] = True
                    await self._refuse(scope, send, received)
                return
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except UploadTooLarge:
            if not state["started"]:
                await self._refuse(scope, send, received)

    async def _refuse(self, scope: dict, send: Any, size: int) -> None:
        limit_mb = self.max_bytes / (1 << 20)
        what = "upload" if scope["path"].rstrip("/") in UPLOAD_PATHS else "request body"
        message = (
            f"{what} too large: more than {limit_mb:g} MB (at least {size} bytes); the server's "
            "limit is `openrft server --max-upload-mb`"
        )
        if scope["path"].startswith("/v1/"):
            error = {"message": message, "type": "invalid_request_error", "param": "file"}
            body: dict[str, Any] = {"error": {**error, "code": "file_too_large"}}
        else:
            body = {"detail": message}
        payload = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _is_upload(scope: dict, paths: frozenset[str] | None) -> bool:
    if scope["type"] != "http":
        return False
    if paths is None:
        return scope.get("method") not in ("GET", "HEAD", "OPTIONS")
    return scope.get("method") == "POST" and scope.get("path", "").rstrip("/") in paths


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# -- validation ----------------------------------------------------------------------------


def _status_path(service: JobService, file_id: str) -> Path:
    # Beside DATA_DIR/files, not in the upload's folder: that folder holds only the upload.
    return service.data_dir.root / "file-status" / f"{file_id}.json"


def validate_upload(service: JobService, record: FileRecord) -> None:
    """Validates a fine-tuning data set as `openrft data validate` does; records the verdict."""
    if record.purpose != "fine-tune" or record.filename.endswith(CODE_SUFFIXES):
        return
    check = validate_file(service.data_dir.file_dir(record.id) / record.filename)
    details = None
    if check.errors:
        first = check.errors[0]
        where = f"line {first.line}: {first.field}: " if first.field else f"line {first.line}: "
        details = f"{where}{first.message}"
        if len(check.errors) > 1:
            details += f" (and {len(check.errors) - 1} more problems)"
    elif check.rows == 0:
        details = "the file has no rows"
    status = "error" if details else "processed"
    path = _status_path(service, record.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"status": status, "status_details": details}))


def upload_status(service: JobService, file_id: str) -> tuple[str, str | None]:
    """(status, status_details) for the OpenAI file object; "processed" when never checked."""
    try:
        saved = json.loads(_status_path(service, file_id).read_text())
    except (OSError, ValueError):
        return "processed", None
    return saved["status"], saved["status_details"]
