"""Auth for the job server (docs/api.md, "Auth").

- The admin token: one per data directory, generated on first start into DATA_DIR/token
  (mode 600); it may do everything. Scoped tokens (openrft.api.tokens) may do less: `read`
  tokens GET and HEAD only (and one job's routes, when made for a job), `agent` tokens one
  job's external-agent routes and reading that job.
- Every route except GET /health needs `Authorization: Bearer TOKEN`, or, for AWS SDKs, a SigV4
  signature made with the admin token as the secret access key (openrft.api.sigv4). A token in
  the URL (`?token=`) is refused: URLs end up in logs, histories and Referer headers.
- What a browser loads without headers (the dashboard's EventSource streams, file links) uses
  a session cookie instead, which the dashboard gets from `POST /api/session` (with the
  header): `HttpOnly; SameSite=Strict; Path=/`, accepted on GET and HEAD only, so a forged
  cross-site form can never change anything with it. Its value is not the token but an
  expiring HMAC (keyed by the admin token) of the token's id: a stolen cookie cannot be used
  as a bearer token, and revoking the token (or replacing DATA_DIR/token) ends its sessions.
- Failures are logged with the client's address and rate-limited per address
  (openrft.auth_limits, as `openrft serve` does): 429 with Retry-After, in the route's shape.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.responses import JSONResponse

from openrft.api import sigv4
from openrft.api.errors import error_response, surface
from openrft.api.tokens import TokenStore, parse_duration
from openrft.api.views import iso, service_of
from openrft.auth_limits import FailureLimiter, client_address, retry_after_header
from openrft.jobs.model import JobError

SAFE_METHODS = frozenset({"GET", "HEAD"})
SESSION_S = 24 * 3600  # a session cookie's life (less when its token expires sooner)
ADMIN = "admin"
log = logging.getLogger("openrft.api.auth")


class AuthError(JobError):
    status = 401


class Forbidden(JobError):
    status = 403


class TooManyFailures(JobError):
    status = 429
    error_type = "ThrottlingException"

    def __init__(self, retry_after_s: float):
        super().__init__("too many failed authentication attempts from this address; retry later")
        self.retry_after = retry_after_header(retry_after_s)


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: `scope` "admin", "read" or "agent"; `token_id` None for admin."""

    scope: str
    job_id: str | None = None
    token_id: str | None = None
    expires_at: float | None = None


def ensure_token(path: Path) -> str:
    """The server's token, created (mode 600) when the file does not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(0o600)  # never leave it readable by others
        if token:
            return token
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC, 0o600)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


# -- checking a request -----------------------------------------------------------------------


async def require_token(request: Request) -> Principal:
    """FastAPI dependency: who the request acts as, when its token may call this route; else
    401 (no or a wrong token; SigV4: 403 with AWS's error code), 403 (a scoped token out of
    its scope) or 429 (this address failed too often)."""
    principal = await authenticate(request)
    try:
        check_scope(principal, request)
    except Forbidden as refusal:
        _log_refusal(request, refusal)
        raise
    request.state.principal = principal
    return principal


async def authenticate(request: Request) -> Principal:
    """Who sent the request, whatever the route; failures are counted against its address."""
    limiter: FailureLimiter = request.app.state.limiter
    address = client_address(request)
    wait = limiter.retry_after(address)
    if wait:
        raise TooManyFailures(wait)
    try:
        return await _identify(request)
    except (AuthError, sigv4.SignatureError) as refusal:
        limiter.fail(address)
        _log_refusal(request, refusal)
        raise


def _log_refusal(request: Request, refusal: JobError) -> None:
    log.warning("openrft server: refused %s %s from %s: %s (%d)", request.method,
                request.url.path, client_address(request), refusal.message,
                refusal.status)  # fmt: skip


async def _identify(request: Request) -> Principal:
    app = request.app
    if "token" in request.query_params:
        raise AuthError(
            "a token in the URL (?token=) is not accepted: send it in the Authorization "
            "header (Authorization: Bearer TOKEN); browsers get a session cookie from "
            "POST /api/session (docs/api.md, Auth)"
        )
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme == sigv4.ALGORITHM:
        await sigv4.verify(request, app.state.aws_access_key_id, app.state.token)
        return Principal(ADMIN)
    if scheme.lower() == "bearer" and value.strip():
        return match_token(app, value.strip())
    cookie = request.cookies.get(cookie_name(app))
    if cookie and not scheme:
        if request.method not in SAFE_METHODS:
            raise AuthError(
                f"the session cookie is accepted on GET and HEAD only; {request.method} needs "
                "the Authorization header (Authorization: Bearer TOKEN)"
            )
        return _session(app, cookie)
    raise AuthError("missing bearer token (Authorization: Bearer TOKEN; see DATA_DIR/token)")


def match_token(app: Any, given: str) -> Principal:
    """The admin token or a live scoped token; compared in constant time."""
    if secrets.compare_digest(given.encode(), app.state.token.encode()):
        return Principal(ADMIN)
    record = app.state.tokens.find(given)
    if record is None:
        raise AuthError("wrong bearer token")
    if record.expired():
        raise AuthError(f"the token {record.id} expired at {iso(record.expires_at)}")
    return Principal(record.scope, record.job_id, record.id, record.expires_at)


def check_scope(principal: Principal, request: Request) -> None:
    """403 unless the principal's scope covers this route and method."""
    if principal.scope == ADMIN:
        return
    route = getattr(request.scope.get("route"), "path", "")
    job_id = request.path_params.get("job_id")
    own_job = route.startswith("/api/jobs/{job_id}") and (
        principal.job_id is None or job_id == principal.job_id
    )
    reading = request.method in SAFE_METHODS
    if principal.scope == "read":
        if not reading:
            raise Forbidden(f"read-only token: {request.method} is not allowed (GET and HEAD only)")
        if route.startswith("/api/tokens"):
            raise Forbidden("only the admin token may list tokens")
        if principal.job_id is None or own_job:
            return
        raise Forbidden(f"this read-only token may read job {principal.job_id} only")
    agent_route = route.startswith("/api/jobs/{job_id}/agent/")
    if principal.scope == "agent" and principal.job_id and own_job and (reading or agent_route):
        return
    raise Forbidden(
        f"this token is for the external agents of job {principal.job_id}: it may call that "
        "job's /agent/ routes and read the job, nothing else"
    )


def require_admin(principal: Annotated[Principal, Depends(require_token)]) -> Principal:
    if principal.scope != ADMIN:
        raise Forbidden("only the admin token (DATA_DIR/token) may manage tokens")
    return principal


async def throttled(request: Request, exc: Exception) -> JSONResponse:
    """TooManyFailures in the route's error shape, with Retry-After."""
    assert isinstance(exc, TooManyFailures)
    response = error_response(request, 429, exc.message, error_type=exc.error_type)
    if surface(request.url.path, request.headers.get("authorization", "")) == "openai":
        body = json.loads(response.body)
        body["error"]["code"] = "rate_limit_exceeded"  # what OpenAI answers
        response = JSONResponse(body, 429)
    response.headers["Retry-After"] = exc.retry_after
    return response


# -- the session cookie -----------------------------------------------------------------------


def cookie_name(app: Any) -> str:
    """Per data directory: browsers share cookies between the ports of one host."""
    return "openrft_session_" + hashlib.sha256(app.state.token.encode()).hexdigest()[:10]


def _mac(app: Any, token_id: str, expires: int) -> str:
    message = f"openrft-session|{token_id}|{expires}".encode()
    return hmac.new(app.state.token.encode(), message, hashlib.sha256).hexdigest()


def session_value(app: Any, principal: Principal, now: float | None = None) -> tuple[str, int]:
    """(the cookie's value, its life in seconds) for a principal."""
    now = now or time.time()
    expires = int(now + SESSION_S)
    if principal.expires_at is not None:
        expires = min(expires, int(principal.expires_at))
    token_id = principal.token_id or ADMIN
    return f"{token_id}.{expires}.{_mac(app, token_id, expires)}", max(0, int(expires - now))


def _session(app: Any, value: str) -> Principal:
    token_id, _, rest = value.partition(".")
    expires_text, _, mac = rest.partition(".")
    if not expires_text.isdigit() or not hmac.compare_digest(
        mac, _mac(app, token_id, int(expires_text))
    ):
        raise AuthError("invalid session cookie: sign in again")
    if int(expires_text) <= time.time():
        raise AuthError("the session cookie expired: sign in again")
    if token_id == ADMIN:
        return Principal(ADMIN)
    record = app.state.tokens.get(token_id)
    if record is None or record.expired():
        raise AuthError(f"the token {token_id} of this session was revoked or expired")
    return Principal(record.scope, record.job_id, record.id, record.expires_at)


# -- routes: the session, and tokens ----------------------------------------------------------

router = APIRouter(prefix="/api", tags=["auth"])


def _principal_view(principal: Principal, expires: float | None = None) -> dict[str, Any]:
    return {
        "scope": principal.scope,
        "job_id": principal.job_id,
        "token_id": principal.token_id,
        "expires_at": iso(expires if expires is not None else principal.expires_at),
    }


@router.post("/session")
async def open_session(request: Request, response: Response) -> dict[str, Any]:
    """Set the session cookie for the token in the header (any scope: the cookie can do no
    more than the token, and only GET and HEAD); answers what the token may do."""
    principal = await authenticate(request)  # a cookie cannot open a session: POST
    value, life = session_value(request.app, principal)
    response.set_cookie(
        cookie_name(request.app),
        value,
        max_age=life,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return _principal_view(principal, time.time() + life)


@router.delete("/session", status_code=204)
async def close_session(request: Request) -> Response:
    await authenticate(request)
    response = Response(status_code=204)
    response.delete_cookie(cookie_name(request.app), path="/", httponly=True, samesite="strict")
    return response


@router.post("/tokens", status_code=201, dependencies=[Depends(require_admin)])
def create_token(request: Request, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    """`{"scope": "read" | "agent", "job_id"?, "name"?, "expires"?: "7d" | seconds}`; the
    answer's `token` is shown this once."""
    scope, job_id = body.get("scope"), body.get("job_id")
    if job_id is not None:
        if not isinstance(job_id, str):
            raise JobError("job_id must be a string", "job_id")
        service_of(request).store.get_job(job_id)  # 404 for an unknown job
    expires = body.get("expires")
    seconds = parse_duration(str(expires)) if expires is not None else None
    name = body.get("name") or ""
    if not isinstance(name, str) or not isinstance(scope, str):
        raise JobError("scope and name must be strings", "scope")
    token, record = request.app.state.tokens.create(scope, job_id, name, seconds)
    return record.public() | {"token": token}


@router.get("/tokens", dependencies=[Depends(require_admin)])
def list_tokens(request: Request) -> dict[str, Any]:
    return {"data": [t.public() for t in request.app.state.tokens.tokens()]}


@router.delete("/tokens/{token_id}", status_code=204, dependencies=[Depends(require_admin)])
def revoke_token(request: Request, token_id: str) -> Response:
    request.app.state.tokens.revoke(token_id)
    return Response(status_code=204)


def install(app: Any, data_dir: Path, max_failures: int, window_s: float) -> None:
    """The auth state of an app (its token must already be set) and the routes above."""
    app.state.tokens = TokenStore(data_dir / "tokens.json")
    app.state.limiter = FailureLimiter(max_failures, window_s)
    app.add_exception_handler(TooManyFailures, throttled)
    app.include_router(router)
