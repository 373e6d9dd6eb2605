"""API-key authentication for `openrft serve` (docs/serving.md, Authentication).

With a key, every route but GET /health needs `Authorization: Bearer KEY` (what the OpenAI
client sends as its api_key), or an AWS SigV4 signature made with the key as the secret access
key and `openrft` as the access key id (what boto3's `bedrock-runtime` client sends). Refusals
are 401 in the route's error shape: OpenAI's on /v1, Bedrock's on /model/. A client address
with `max_failures` refusals within `window_s` is answered 429 for `window_s`, so a key cannot
be guessed at network speed (openrft.auth_limits, the limiter the job server uses too).
Without a key the server is open, which `check_bind` allows on loopback only.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from fastapi import Request

from openrft.api import sigv4
from openrft.auth_limits import FailureLimiter, client_address
from openrft.errors import RFTError
from openrft.rollout.openai_chat import RequestError
from openrft.serve.bedrock_common import BedrockError

ACCESS_KEY_ID = "openrft"  # the SigV4 access key id; the API key is the secret access key
KEY_ENV = "OPENRFT_SERVE_API_KEY"
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
OPEN_PATHS = frozenset({"/health"})  # for load balancers and readiness probes
log = logging.getLogger(__name__)


def resolve_key(key: str | None, key_file: str | None) -> str | None:
    """The API key from --api-key, else --api-key-file's first line, else $OPENRFT_SERVE_API_KEY."""
    if key is None and key_file:
        try:
            lines = Path(key_file).read_text().splitlines()
        except OSError as exc:
            raise RFTError(f"cannot read --api-key-file {key_file}: {exc}") from exc
        key = lines[0].strip() if lines else ""
    if key is None:
        key = os.environ.get(KEY_ENV) or None
    # An empty key must not quietly mean "no auth".
    if key is not None and not key.strip():
        raise RFTError("the API key is empty (--api-key, --api-key-file or $" + KEY_ENV + ")")
    return key.strip() if key else None


def check_bind(host: str, key: str | None) -> None:
    """Refuses to serve without a key anywhere but loopback: anyone on the network could use
    the model (and fill the invocation log)."""
    if key is None and host not in LOOPBACK:
        raise RFTError(
            f"refusing to serve on {host} without an API key: pass --api-key KEY or "
            f"--api-key-file PATH (or set {KEY_ENV}), or bind to 127.0.0.1"
        )


class ApiKeyAuth:
    """A FastAPI dependency (for every route) that checks the key; `limiter` rate-limits
    failures."""

    def __init__(self, key: str, limiter: FailureLimiter | None = None):
        self.key = key
        self.limiter = limiter or FailureLimiter()

    async def __call__(self, request: Request) -> None:
        if request.url.path in OPEN_PATHS:
            return
        address = client_address(request)
        bedrock = request.url.path.startswith("/model/")
        if self.limiter.blocked(address):
            raise _refusal(bedrock, 429, "too many failed authentication attempts; retry later")
        reason, code = await self._check(request)
        if reason is None:
            return
        self.limiter.fail(address)
        log.warning("openrft serve: refused %s %s from %s: %s", request.method,
                    request.url.path, address, reason)  # fmt: skip
        raise _refusal(bedrock, 401, reason, code)

    async def _check(self, request: Request) -> tuple[str | None, str]:
        """(why the request is refused, its AWS error code), or (None, "") when it may pass."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme == sigv4.ALGORITHM:
            try:
                await sigv4.verify(request, ACCESS_KEY_ID, self.key)
            except sigv4.SignatureError as exc:
                return str(exc), exc.error_type
            return None, ""
        if scheme.lower() != "bearer" or not value.strip():
            return "missing API key (Authorization: Bearer KEY)", "UnrecognizedClientException"
        # Constant time: the comparison must not reveal how much of a guess was right.
        if not secrets.compare_digest(value.strip().encode(), self.key.encode()):
            return "wrong API key", "UnrecognizedClientException"
        return None, ""


def _refusal(
    bedrock: bool, status: int, message: str, code: str = "ThrottlingException"
) -> Exception:
    if bedrock:
        return BedrockError(message, code, status)
    openai_code = "rate_limit_exceeded" if status == 429 else "invalid_api_key"
    return RequestError(message, None, openai_code, status)
