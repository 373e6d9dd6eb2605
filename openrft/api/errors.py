"""Errors to HTTP responses, in each API surface's own shape.

| error | native (`/api`) | Bedrock | OpenAI (`/v1`) |
|---|---|---|---|
| ConfigError, other RFTError (names the field) | 422 | 400 ValidationException | 400 |
| JobError: bad request / not found / conflict / auth | 400 / 404 / 409 / 401 | same codes | same |
| SignatureError (SigV4, openrft.api.sigv4) | 403 | 403, its own error type | 403 |

Native bodies are `{"detail": ...}`; Bedrock's `{"message": ...}` with `x-amzn-ErrorType`;
OpenAI's `{"error": {"message", "type", "param", "code"}}` (what the openai client reads).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from openrft.errors import ConfigError, RFTError
from openrft.jobs.model import JobError

BEDROCK_TYPES = {
    400: "ValidationException",
    401: "AccessDeniedException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    409: "ConflictException",
    422: "ValidationException",
}
OPENAI_CODES = {401: "invalid_api_key", 403: "invalid_api_key", 404: "not_found", 409: "conflict"}
BEDROCK_PATHS = ("/model-customization-jobs", "/custom-models")
AWS_SIGNED = "AWS4-HMAC-SHA256 "


def surface(path: str, authorization: str = "") -> str:
    """Whose error shape a request gets: by its path, except that an AWS-signed request (an
    AWS SDK, whatever it called) always gets Bedrock's, the one its parser reads."""
    if authorization.startswith(AWS_SIGNED):
        return "bedrock"
    if path == "/v1" or path.startswith("/v1/"):
        return "openai"
    if path.startswith(BEDROCK_PATHS):
        return "bedrock"
    return "native"


def error_response(
    request: Request,
    status: int,
    message: str,
    param: str | None = None,
    error_type: str | None = None,
) -> JSONResponse:
    """The error in the request's surface's shape; `error_type` overrides Bedrock's code
    (x-amzn-ErrorType, what botocore reports as Error.Code) chosen by status."""
    kind = surface(request.url.path, request.headers.get("authorization", ""))
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if kind == "openai":
        status = 400 if status == 422 else status
        body: dict[str, Any] = {
            "error": {
                "message": message,
                "type": "invalid_request_error" if status < 500 else "server_error",
                "param": param,
                "code": OPENAI_CODES.get(status),
            }
        }
    elif kind == "bedrock":
        status = 400 if status == 422 else status
        error_type = error_type or BEDROCK_TYPES.get(status, "InternalServerException")
        headers["x-amzn-ErrorType"] = error_type
        body = {"message": message, "__type": error_type}
    else:
        body = {"detail": message}
    return JSONResponse(body, status_code=status, headers=headers)


async def _job_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JobError)
    error_type = getattr(exc, "error_type", None)
    return error_response(request, exc.status, exc.message, exc.param, error_type)


async def _rft_error(request: Request, exc: Exception) -> JSONResponse:
    param = exc.field if isinstance(exc, ConfigError) else None
    return error_response(request, 422, str(exc), param)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    param = None
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query"))
        param = param or where
        problems.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return error_response(request, 422, "; ".join(problems), param)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if (
        exc.status_code in (404, 405)
        and surface(request.url.path, request.headers.get("authorization", "")) == "bedrock"
    ):
        # No route: a Bedrock call openrft does not serve (ListFoundationModels, tags, ...).
        message = f"openrft does not serve {request.method} {request.url.path} (docs/aws.md)"
        return error_response(request, 404, message, error_type="UnknownOperationException")
    return error_response(request, exc.status_code, str(exc.detail))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(JobError, _job_error)
    app.add_exception_handler(RFTError, _rft_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
