"""Environments served by an OpenEnv server (`env.openenv_url`; docs/openenv.md), the
environment standard of TRL and Unsloth. Each episode holds one session on the server's
WebSocket route `/ws`, where every message is JSON `{"type": ..., "data": ...}`:

    -> {"type": "reset", "data": {"seed": 7}}     <- {"type": "observation", "data": obs}
    -> {"type": "step", "data": action}           <- {"type": "observation", "data": obs}
    -> {"type": "close"}                          (the server frees the session and closes)
    <- {"type": "error", "data": {"code": ..., "message": ...}}   instead of an observation

with obs = {"observation": {...}, "reward": x | null, "done": b}. Each observation becomes a
user message (its text field if it has one, else its JSON); each reply becomes an action
(`env.openenv_action`): "json" reads the reply as a JSON object, "text:<field>" puts the reply
in that one field. An action that does not parse or does not fit the server's action schema
(GET /schema) is not sent: the model is told what was wrong, as a real API would, and
`action_errors` counts it. A session lost mid-episode fails the episode (its state lived on
the server); a reset is retried once on a new connection. Open sessions are bounded by the
server's max_concurrent_envs, learned from its first refusal (or by `max_sessions`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

from openrft.errors import ConfigError
from openrft.net import EndpointFailure, request_with_retries
from openrft.rollout.environment import EnvironmentFailure
from openrft.rollout.tool_calls import ParsedTurn

TEXT_FIELDS = ("prompt", "message", "text", "observation", "content")  # an observation's text
MAX_MESSAGE_BYTES = 100 * 2**20  # observations may carry screenshots (OpenEnv's client allows this)
CHECK_TIMEOUT_S = 30.0  # GET /health and /schema at job start
FULL_SERVER_WAIT_S = 0.5  # before asking a full server again (its other clients may leave)


@dataclass(frozen=True)
class OpenEnvSettings:
    url: str  # the server's base URL, http(s)://host:port[/prefix]
    action: str = "json"  # "json", "text:<field>" or "text" (the action's one string field)
    timeout_s: float = 600.0  # per message: a step may run a long simulation
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. an Authorization header
    # OpenEnv servers refuse sessions past their max_concurrent_envs (default 1), but no route
    # (/health, /schema, /metadata) states it: only a refusal does (CAPACITY_REACHED carries
    # max_sessions), and the service then holds itself to that. Set this to bound sessions from
    # the start, e.g. below the server's limit when other jobs share the server.
    max_sessions: int | None = None


class _Dropped(Exception):
    """The connection failed or closed: the session is gone."""


class _ServerError(Exception):
    """An error message in place of an observation (data: code, message and details)."""

    def __init__(self, data: Mapping[str, Any]):
        super().__init__(f"{data.get('code', 'UNKNOWN')}: {data.get('message', '')}")
        self.code = data.get("code")
        self.data = data


class SessionSlots:
    """The episodes holding a session, at most `limit` (None: unbounded until a refusal)."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.holders: set[Any] = set()
        self.changed = threading.Condition()

    @property
    def held(self) -> int:
        return len(self.holders)

    def acquire(self, holder: Any, timeout_s: float) -> bool:
        with self.changed:
            free = self.changed.wait_for(
                lambda: self.limit is None or self.held < self.limit, max(timeout_s, 0.0)
            )
            if free:
                self.holders.add(holder)
            return free

    def release(self, holder: Any) -> None:
        """Give back the holder's slot, if it holds one."""
        with self.changed:
            if holder in self.holders:
                self.holders.remove(holder)
                self.changed.notify()

    def learn(self, limit: Any) -> None:
        if isinstance(limit, int) and limit >= 1:
            with self.changed:
                self.limit = limit if self.limit is None else min(self.limit, limit)


class OpenEnvService:
    """One job's OpenEnv server: its action schema, the action mode and the session bound."""

    def __init__(self, settings: OpenEnvSettings):
        self.settings = settings
        self.url = settings.url.rstrip("/")
        self.ws_url = "ws" + self.url.removeprefix("http") + "/ws"  # http -> ws, https -> wss
        self.slots = SessionSlots(settings.max_sessions)
        self.action_schema: dict[str, Any] = {}
        self.validator: jsonschema.protocols.Validator | None = None
        self.text_field: str | None = None  # None: the reply is a JSON action

    def check(self) -> dict[str, Any]:
        """GET /health and /schema once at job start; the /schema answer (the action,
        observation and state JSON schemas). A server that cannot be used is a config error
        naming the field, not a job whose every episode fails."""
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError("env.openenv_url", f"{self.url!r}: use http://host:port")
        health = self._get("/health")
        if not isinstance(health, dict) or health.get("status") != "healthy":
            raise ConfigError("env.openenv_url", f"{self.url}/health answered {health!r}")
        schemas = self._get("/schema")
        action = schemas.get("action") if isinstance(schemas, dict) else None
        if not isinstance(action, dict) or not isinstance(action.get("properties"), dict):
            raise ConfigError("env.openenv_url", f"{self.url}/schema has no action object schema")
        validator = jsonschema.validators.validator_for(action)
        try:
            validator.check_schema(action)
        except jsonschema.SchemaError as error:
            raise ConfigError("env.openenv_url", f"{self.url}/schema: {error.message}") from error
        self.action_schema, self.validator = action, validator(action)
        self.text_field = _text_field(self.settings.action, action)
        return schemas

    def _get(self, path: str) -> Any:
        try:
            response = request_with_retries(
                "GET",
                self.url + path,
                headers=self.settings.headers,
                timeout_s=min(self.settings.timeout_s, CHECK_TIMEOUT_S),
                attempts=2,
            )
            return response.json()
        except (EndpointFailure, ValueError) as error:
            raise ConfigError("env.openenv_url", f"OpenEnv server: {error}") from error

    def connect(self, exits: contextlib.ExitStack) -> ClientConnection:
        """A new session's connection, closed when `exits` closes (entered as a context manager:
        websockets 17 warns about a bare connect())."""
        try:
            return exits.enter_context(
                connect(
                    self.ws_url,
                    additional_headers=dict(self.settings.headers),
                    open_timeout=min(self.settings.timeout_s, CHECK_TIMEOUT_S),
                    max_size=MAX_MESSAGE_BYTES,
                    ping_timeout=120,  # a busy server may answer keepalive pings late
                )
            )
        except (OSError, WebSocketException) as error:
            raise _Dropped(f"cannot connect to {self.ws_url}: {error!r}") from error

    def action_for(self, reply: str) -> tuple[dict[str, Any] | None, str]:
        """The action a reply stands for, or None and what is wrong with it (for the model)."""
        if self.text_field is not None:
            action: Any = {self.text_field: reply}
        else:
            try:
                action = _json_object(reply)
            except ValueError as error:
                return None, f"{error}. Reply with one JSON object: {self._fields()}"
        assert self.validator is not None, "check() first"
        problem = jsonschema.exceptions.best_match(self.validator.iter_errors(action))
        if problem is not None:
            where = ".".join(str(p) for p in problem.absolute_path) or "the action"
            return None, f"{where}: {problem.message}. The action's fields: {self._fields()}"
        return action, ""

    def _fields(self) -> str:
        required = set(self.action_schema.get("required", ()))
        return ", ".join(
            f"{name} ({spec.get('type', 'any')}{', required' if name in required else ''})"
            for name, spec in self.action_schema["properties"].items()
            if name != "metadata"  # every OpenEnv action has it; no model needs to fill it
        )

    def environment(self, item: dict[str, Any]) -> OpenEnvEnvironment:
        return OpenEnvEnvironment(self, item)

    def close(self) -> None:
        """Close the sessions of episodes nobody closed (a reset the runner gave up on)."""
        with self.slots.changed:
            leftover = list(self.slots.holders)
        for environment in leftover:
            environment.close()


class OpenEnvEnvironment:
    """One episode: one session on the server, behind the adapter the episode runner uses."""

    def __init__(self, service: OpenEnvService, item: dict[str, Any]):
        self.service = service
        self.item = item
        self.socket: ClientConnection | None = None
        self.exits = contextlib.ExitStack()  # closes the socket
        self.lock = threading.Lock()  # close() may come from another thread mid-step
        self.action_errors = 0

    def reset(self) -> list[dict[str, Any]]:
        seed = self.item.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            seed = row_seed(self.item)  # a row's G episodes face the same environment
        data = {"seed": seed}
        try:
            answer = self._open_session({"type": "reset", "data": data})
        except BaseException:
            self._drop()  # a failed reset is never closed by the runner: free the slot here
            raise
        return [*self.item.get("messages", []), _user(answer)]

    def _open_session(self, reset: dict[str, Any]) -> dict[str, Any]:
        s, slots = self.service.settings, self.service.slots
        deadline = time.monotonic() + s.timeout_s
        dropped_before = False
        while True:
            if not slots.acquire(self, deadline - time.monotonic()):
                raise EnvironmentFailure(
                    f"OpenEnv: no free session in {s.timeout_s:g} s ({slots.limit} at most)"
                )
            try:
                self.exits = contextlib.ExitStack()
                self.socket = self.service.connect(self.exits)
                return self._request(reset)
            except _Dropped as dropped:
                self._drop()
                if dropped_before:
                    raise EnvironmentFailure(f"OpenEnv reset, tried twice: {dropped}") from dropped
                dropped_before = True
            except _ServerError as error:
                if error.code != "CAPACITY_REACHED" or time.monotonic() > deadline:
                    raise EnvironmentFailure(f"OpenEnv reset: {error}") from error
                self._drop()  # the refusal states the server's limit: hold to it from now on
                slots.learn(error.data.get("max_sessions"))
                time.sleep(FULL_SERVER_WAIT_S)

    def step(self, turn: ParsedTurn) -> dict[str, Any]:
        if self.socket is None:
            raise EnvironmentFailure("OpenEnv step() without a session (lost or never opened)")
        action, problem = self.service.action_for(turn.content)
        if action is None:
            return self._refused(problem)
        try:
            answer = self._request({"type": "step", "data": action})
        except _ServerError as error:
            if error.code == "VALIDATION_ERROR":  # the server's own model refused the action
                return self._refused(_validation_errors(error.data))
            self._drop()
            raise EnvironmentFailure(f"OpenEnv step failed on the server: {error}") from error
        except _Dropped as lost:
            self._drop()
            raise EnvironmentFailure(
                f"OpenEnv session lost mid-episode ({lost}); its state lived on the server "
                "and is gone, so the episode cannot go on"
            ) from lost
        reward = answer.get("reward")
        return {
            "messages": [_user(answer)],
            "reward": None if reward is None else float(reward),
            "done": bool(answer.get("done")),
            "metrics": {"action_errors": self.action_errors},
        }

    def _refused(self, problem: str) -> dict[str, Any]:
        """An action the server never saw: the model hears why, like an API's error."""
        self.action_errors += 1
        message = {"role": "user", "content": f"Invalid action: {problem}"}
        metrics = {"action_errors": self.action_errors}
        return {"messages": [message], "reward": None, "done": False, "metrics": metrics}

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one message and read its answer's data (an observation)."""
        socket, timeout_s = self.socket, self.service.settings.timeout_s
        if socket is None:
            raise _Dropped("the session was closed")
        with contextlib.suppress(WebSocketException):
            socket.send(json.dumps(message))  # a full server refuses and closes: recv reads why
        try:
            raw = socket.recv(timeout=timeout_s)
        except TimeoutError as error:
            raise EnvironmentFailure(
                f"OpenEnv: no answer to {message['type']} in {timeout_s:g} s"
            ) from error
        except (OSError, WebSocketException) as error:
            raise _Dropped(f"connection to {self.service.ws_url} closed: {error}") from error
        try:
            answer = json.loads(raw)
        except ValueError as error:
            raise EnvironmentFailure(f"OpenEnv answered non-JSON: {raw[:200]!r}") from error
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, dict):
            raise EnvironmentFailure(f"OpenEnv answered {str(answer)[:200]}, not an observation")
        if answer.get("type") == "error":
            raise _ServerError(data)
        return data

    def _drop(self) -> None:
        """Close the socket (no goodbye) and give back the slot; safe to repeat."""
        with self.lock:
            self.socket, exits = None, self.exits
        with contextlib.suppress(Exception):
            exits.close()
        self.service.slots.release(self)

    def close(self) -> None:
        """Say goodbye (the server then frees the session before closing), close, never raise."""
        socket = self.socket
        if socket is not None:
            with contextlib.suppress(Exception):
                socket.send(json.dumps({"type": "close"}))
        self._drop()


def row_seed(item: Mapping[str, Any]) -> int:
    """A seed from the row's id (or its messages): the same on every machine and run, so a
    group's episodes, and a resumed run's, reset alike."""
    key = str(item.get("id") or json.dumps(item.get("messages"), sort_keys=True))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % (1 << 31)


def _text_field(mode: str, schema: dict[str, Any]) -> str | None:
    """The action field a reply fills in text mode; None in JSON mode."""
    if mode == "json":
        return None
    kind, _, name = mode.partition(":")
    strings = [n for n, spec in schema["properties"].items() if _takes_string(spec)]
    strings = [n for n in strings if n != "metadata"]
    name = name or (strings[0] if len(strings) == 1 else "")
    others = sorted(set(schema.get("required", ())) - {name})
    if kind != "text":
        problem = "use 'json' or 'text:<field>'"
    elif not name:
        problem = f"plain 'text' needs the action's one string field; it has {strings}"
    elif name not in strings:
        problem = f"{name!r} is not a string field of the action ({strings})"
    elif others:
        problem = f"the reply fills {name!r}, not the action's other required fields {others}"
    else:
        return name
    raise ConfigError("env.openenv_action", f"{mode!r}: {problem}")


def _takes_string(spec: Any) -> bool:
    if not isinstance(spec, dict):
        return False
    kinds = spec.get("type")
    if kinds is not None:
        return kinds == "string" or (isinstance(kinds, list) and "string" in kinds)
    branches = spec.get("anyOf") or spec.get("oneOf")
    return any(_takes_string(b) for b in branches) if branches else False


def _json_object(reply: str) -> dict[str, Any]:
    """The first JSON object in a reply (models wrap it in ``` fences or a sentence)."""
    start = reply.find("{")
    if start < 0:
        raise ValueError("your reply has no JSON object")
    try:
        value, _ = json.JSONDecoder().raw_decode(reply, start)
    except ValueError as error:
        raise ValueError(f"your reply is not valid JSON ({error})") from error
    return value


def _validation_errors(data: Mapping[str, Any]) -> str:
    errors = [e for e in data.get("errors") or () if isinstance(e, dict)]
    found = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in errors)
    return found or str(data.get("message", "the server refused the action"))


def _user(answer: Mapping[str, Any]) -> dict[str, str]:
    """An observation as the next user message: its text field, else its JSON (without what
    the answer carries beside it)."""
    observation = answer.get("observation")
    if not isinstance(observation, dict):
        return {"role": "user", "content": json.dumps(observation)}
    for name in TEXT_FIELDS:
        if isinstance(observation.get(name), str):
            return {"role": "user", "content": observation[name]}
    shown = {k: v for k, v in observation.items() if k not in ("done", "reward", "metadata")}
    return {"role": "user", "content": json.dumps(shown)}
