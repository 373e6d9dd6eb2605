"""Bearer-token auth: one token per data directory, generated on first start into
DATA_DIR/token (mode 600). Every route except GET /health needs `Authorization: Bearer TOKEN`;
GET requests may pass `?token=TOKEN` instead, for what a browser loads without headers
(EventSource streams, images and report links on the dashboard). AWS SDKs may sign with
SigV4 instead (openrft.api.sigv4): access key id `app.state.aws_access_key_id`, the token as
the secret access key.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from fastapi import Request

from openrft.api import sigv4
from openrft.jobs.model import JobError


class AuthError(JobError):
    status = 401


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


async def require_token(request: Request) -> None:
    """FastAPI dependency: 401 unless the request carries the server's token (or, for AWS
    SDKs, a SigV4 signature made with it: 403 with AWS's error code if that is wrong)."""
    expected: str = request.app.state.token
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme == sigv4.ALGORITHM:
        await sigv4.verify(request, request.app.state.aws_access_key_id, expected)
        return
    given = value.strip() if scheme.lower() == "bearer" else ""
    if not given and request.method == "GET":
        given = request.query_params.get("token", "")
    if not given:
        raise AuthError("missing bearer token (Authorization: Bearer TOKEN; see DATA_DIR/token)")
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise AuthError("wrong bearer token")
