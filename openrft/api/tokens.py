"""Scoped tokens of the job server (docs/api.md, "Auth"), beside its admin token (DATA_DIR/token).

- `read`: GET and HEAD only, to share a dashboard; with a job id, that job's routes only.
- `agent`: one job's external agents (openrft.api.agents): that job's agent routes, and
  reading that job; nothing else.

They live in DATA_DIR/tokens.json (mode 600, replaced atomically under a lock file, so the
CLI and a running server may both write it; the server re-reads it when it changes): each
token's sha256, never the token itself, which is shown once, when it is created. A token may
expire; revoking one removes it. Created, listed and revoked by `openrft server token ...`
or, with the admin token, `POST /api/tokens`, `GET /api/tokens`, `DELETE /api/tokens/{id}`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from openrft.jobs.model import JobError

SCOPES = ("read", "agent")
FILE_NAME = "tokens.json"
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class TokenNotFound(JobError):
    status = 404


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_duration(text: str) -> float:
    """Seconds in "90", "45s", "30m", "12h" or "7d"; a JobError (400) otherwise."""
    match = DURATION.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise JobError(f"not a duration: {text!r} (e.g. 3600, 30m, 12h, 7d)", "expires")
    return float(match.group(1)) * UNITS[match.group(2)]


@dataclass(frozen=True)
class ScopedToken:
    id: str
    scope: str  # "read" or "agent"
    job_id: str | None
    name: str
    created_at: float
    expires_at: float | None
    sha256: str

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def public(self) -> dict[str, Any]:
        """What listing shows: everything but the hash."""
        view = asdict(self)
        del view["sha256"]
        return view | {"expired": self.expired()}


class TokenStore:
    """DATA_DIR/tokens.json. Reads are cached until the file changes (any process may write)."""

    def __init__(self, path: Path):
        self.path = path
        self._cache: tuple[tuple[int, int, int] | None, list[ScopedToken]] = (None, [])
        self._lock = threading.Lock()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size

    def tokens(self) -> list[ScopedToken]:
        signature = self._signature()
        with self._lock:
            if signature is not None and signature == self._cache[0]:
                return self._cache[1]
            tokens = self._read() if signature is not None else []
            self._cache = (signature, tokens)
            return tokens

    def _read(self) -> list[ScopedToken]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise JobError(f"cannot read {self.path}: {exc}") from exc
        return [ScopedToken(**entry) for entry in raw.get("tokens", [])]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[ScopedToken]]:
        """The tokens, to change in place; written back (atomically, mode 600) on exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.with_name(FILE_NAME + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            tokens = self._read()
            yield tokens
            self._write(tokens)
        finally:
            os.close(lock)  # releases the lock

    def _write(self, tokens: list[ScopedToken]) -> None:
        tmp = self.path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"tokens": [asdict(t) for t in tokens]}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def create(
        self,
        scope: str,
        job_id: str | None = None,
        name: str = "",
        expires_in_s: float | None = None,
    ) -> tuple[str, ScopedToken]:
        """(the token, to show once; its record). An agent token needs a job id."""
        if scope not in SCOPES:
            raise JobError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}", "scope")
        if scope == "agent" and not job_id:
            raise JobError("an agent token is for one job: give its job id", "job_id")
        if expires_in_s is not None and expires_in_s <= 0:
            raise JobError("expires_in_s must be positive", "expires_in_s")
        token = f"{scope}_{secrets.token_urlsafe(32)}"
        now = time.time()
        record = ScopedToken(
            id=f"tok-{secrets.token_hex(6)}",
            scope=scope,
            job_id=job_id or None,
            name=name,
            created_at=now,
            expires_at=now + expires_in_s if expires_in_s else None,
            sha256=digest(token),
        )
        with self._locked() as tokens:
            tokens.append(record)
        return token, record

    def revoke(self, token_id: str) -> ScopedToken:
        with self._locked() as tokens:
            for i, record in enumerate(tokens):
                if record.id == token_id:
                    return tokens.pop(i)
        raise TokenNotFound(f"no token {token_id}", "token_id")

    def get(self, token_id: str) -> ScopedToken | None:
        return next((t for t in self.tokens() if t.id == token_id), None)

    def find(self, token: str) -> ScopedToken | None:
        """The record of `token` (expired or not), compared in constant time with every one."""
        wanted = digest(token)
        found = None
        for record in self.tokens():
            if secrets.compare_digest(record.sha256, wanted):
                found = record
        return found
