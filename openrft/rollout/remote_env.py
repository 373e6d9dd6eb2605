"""Environments on another machine, behind a small HTTP contract anyone can implement
(`env.environment = "http://host:port"`; docs/remote-environments.md has the contract):

    GET    /health                  -> {"status": "ok", ...}
    POST   /episodes                {"item": row}  -> {"episode_id": str, "messages": [...] | null}
    POST   /episodes/{id}/step      {"turn": k, "message": assistant message}
                                    -> {"messages": [...], "reward": x, "done": b, "metrics": {}}
    DELETE /episodes/{id}           -> anything 2xx

A step carries its turn number (0 first) so that a retried step is answered, not run twice:
a server keeps its last answer and repeats it when the same turn comes again. A refused
connection, a 5xx or a 429 is retried with back-off; a 4xx or a call that outlives
`env.remote_timeout_s` fails the episode (finish "error", counted), never the step.
`openrft env serve file.py:make_env` hosts a native environment behind this contract
(openrft/serve/env_host.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from openrft.errors import ConfigError
from openrft.net import EndpointFailure, request_with_retries
from openrft.rollout.environment import EnvironmentFailure
from openrft.rollout.tool_calls import ParsedTurn

CLOSE_TIMEOUT_S = 10.0  # a close is a courtesy: the service frees idle episodes itself


def is_remote(reference: str) -> bool:
    """`env.environment` names a service rather than a Python factory."""
    return reference.startswith(("http://", "https://"))


@dataclass(frozen=True)
class RemoteSettings:
    url: str  # the service's base URL, without a trailing slash
    timeout_s: float = 3600.0  # per call: a step may run a long reward in the customer's system
    attempts: int = 4  # tries of a call refused or answered 5xx/429
    backoff_s: float = 1.0  # wait before the second try, doubled before each later one
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. an Authorization header


class RemoteService:
    """One job's connection to an environment service (a pooled HTTP client, thread-safe)."""

    def __init__(self, settings: RemoteSettings):
        self.settings = settings
        self.client = httpx.Client(headers=dict(settings.headers))

    def call(self, method: str, path: str, body: Any = None, *, patient: bool = True) -> Any:
        """The JSON answer of one call, or EnvironmentFailure saying what went wrong. An
        impatient call (a close) is tried once, for at most CLOSE_TIMEOUT_S."""
        s = self.settings
        try:
            response = request_with_retries(
                method,
                s.url + path,
                json=body,
                timeout_s=s.timeout_s if patient else min(s.timeout_s, CLOSE_TIMEOUT_S),
                attempts=s.attempts if patient else 1,
                backoff_s=s.backoff_s,
                client=self.client,
            )
        except EndpointFailure as failure:
            raise EnvironmentFailure(f"remote environment: {failure}") from failure
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as error:
            raise EnvironmentFailure(
                f"remote environment: {s.url + path} answered non-JSON: {response.text[:200]!r}"
            ) from error

    def check(self) -> dict[str, Any]:
        """GET /health once at job start: an unreachable or broken service is a config error
        naming the field, not a job whose every episode fails."""
        try:
            answer = self.call("GET", "/health")
        except EnvironmentFailure as failure:
            raise ConfigError("env.environment", str(failure)) from failure
        if not isinstance(answer, dict) or answer.get("status") != "ok":
            raise ConfigError(
                "env.environment", f"{self.settings.url}/health answered {answer!r}, not ok"
            )
        return answer

    def environment(self, item: dict[str, Any]) -> RemoteEnvironment:
        return RemoteEnvironment(self, item)

    def close(self) -> None:
        self.client.close()


class RemoteEnvironment:
    """One episode on the service, behind the adapter the episode runner uses."""

    def __init__(self, service: RemoteService, item: dict[str, Any]):
        self.service = service
        self.item = item
        self.episode_id: str | None = None
        self.turn = 0

    def reset(self) -> list[dict[str, Any]] | None:
        answer = self.service.call("POST", "/episodes", {"item": self.item})
        if not isinstance(answer, dict) or not isinstance(answer.get("episode_id"), str):
            raise EnvironmentFailure(f"POST /episodes answered {answer!r}: no 'episode_id'")
        self.episode_id = answer["episode_id"]
        return answer.get("messages")

    def step(self, turn: ParsedTurn) -> Any:
        if self.episode_id is None:
            raise EnvironmentFailure("step() before the episode was created")
        body = {"turn": self.turn, "message": turn.message()}
        answer = self.service.call("POST", f"/episodes/{quote(self.episode_id)}/step", body)
        self.turn += 1
        return answer  # checked by the episode runner like a local step()'s answer

    def close(self) -> None:
        """Tell the service the episode is over; a service that does not hear it (down,
        slow) frees the episode itself after its idle timeout."""
        if self.episode_id is None:
            return
        with contextlib.suppress(EnvironmentFailure):
            self.service.call("DELETE", f"/episodes/{quote(self.episode_id)}", patient=False)
        self.episode_id = None
