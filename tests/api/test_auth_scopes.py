"""Auth on the job server (openrft.api.auth, openrft.api.tokens), against real servers on
127.0.0.1: no token in URLs; the session cookie on GET only; failed attempts rate-limited per
address (429 with Retry-After in each API's shape) and forgiven after the window; read-only
tokens (all jobs or one); per-job agent tokens; revoked and expired tokens refused."""

from __future__ import annotations

import json
import logging
import stat
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from openrft.api.server import ServerThread
from openrft.auth_limits import FailureLimiter
from openrft.cli import main
from openrft.paths import AGENT_FILE

from .helpers import Served, job_config


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_job(served: Served, tmp_path: Any, model_dir: Any, name: str) -> str:
    config = job_config(tmp_path / name, model_dir)
    reply = served.client.post("/api/jobs", json={"config": config, "name": name})
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def new_token(served: Served, **body: Any) -> dict[str, Any]:
    reply = served.client.post("/api/tokens", json=body)
    assert reply.status_code == 201, reply.text
    return reply.json()


def test_a_token_in_the_url_is_refused(idle_server):
    url, token = idle_server.url, idle_server.token
    for headers in ({}, bearer(token)):  # refused even beside a good header: it leaked
        reply = httpx.get(f"{url}/api/jobs", params={"token": token}, headers=headers)
        assert reply.status_code == 401
        assert "Authorization header" in reply.json()["detail"]
    openai_shape = httpx.get(f"{url}/v1/fine_tuning/jobs", params={"token": token})
    assert (
        openai_shape.status_code == 401
        and "Authorization" in openai_shape.json()["error"]["message"]
    )
    assert httpx.get(f"{url}/api/jobs", headers=bearer(token)).status_code == 200


def test_the_session_cookie_works_on_gets_only(idle_server, tmp_path, tiny_model_dir):
    url = idle_server.url
    job = make_job(idle_server, tmp_path, tiny_model_dir, "cookie")
    opened = httpx.post(f"{url}/api/session", headers=bearer(idle_server.token))
    assert opened.status_code == 200 and opened.json()["scope"] == "admin"
    set_cookie = opened.headers["set-cookie"]
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age="):
        assert attribute.lower() in set_cookie.lower(), set_cookie
    name, _, value = set_cookie.split(";")[0].partition("=")
    assert idle_server.token not in value  # the cookie is not the token
    with httpx.Client(base_url=url, cookies={name: value}, timeout=30) as browser:
        assert browser.get("/api/jobs").status_code == 200
        assert browser.get(f"/api/jobs/{job}/files/config.toml").status_code == 200  # a link
        with browser.stream("GET", f"/api/jobs/{job}/metrics/stream") as stream:  # EventSource
            assert stream.status_code == 200
            assert next(stream.iter_lines()) == "event: status"
        for method, path in (("POST", f"/api/jobs/{job}/stop"), ("DELETE", f"/api/jobs/{job}"),
                             ("POST", "/api/session"), ("POST", "/api/tokens")):  # fmt: skip
            refused = browser.request(method, path, json={"scope": "read"})
            assert refused.status_code == 401, (method, path)
            assert "GET and HEAD only" in refused.json()["detail"] or path == "/api/session"
        assert idle_server.client.get(f"/api/jobs/{job}").json()["status"] == "Queued"
    assert httpx.get(f"{url}/api/jobs", headers=bearer(value)).status_code == 401  # not a token
    forged = value.rsplit(".", 1)[0] + "." + "0" * 64
    assert httpx.get(f"{url}/api/jobs", cookies={name: forged}).status_code == 401
    closed = httpx.delete(f"{url}/api/session", headers=bearer(idle_server.token))
    assert closed.status_code == 204 and "max-age=0" in closed.headers["set-cookie"].lower()


def test_failed_attempts_are_rate_limited_and_then_forgiven(idle_server, caplog):
    app = idle_server.thread.app
    app.state.limiter = FailureLimiter(max_failures=3, window_s=1.0)
    url, good = idle_server.url, bearer(idle_server.token)
    caplog.set_level(logging.WARNING, logger="openrft.api.auth")
    for _ in range(3):
        assert httpx.get(f"{url}/api/jobs", headers=bearer("guess")).status_code == 401
    assert "refused GET /api/jobs from 127.0.0.1: wrong bearer token" in caplog.text
    blocked = httpx.get(f"{url}/api/jobs", headers=good)  # even the right token, for now
    assert blocked.status_code == 429 and 1 <= int(blocked.headers["retry-after"]) <= 1
    assert "too many failed" in blocked.json()["detail"]
    openai_shape = httpx.get(f"{url}/v1/fine_tuning/jobs", headers=good)
    assert openai_shape.status_code == 429
    assert openai_shape.json()["error"]["code"] == "rate_limit_exceeded"
    bedrock_shape = httpx.get(f"{url}/model-customization-jobs", headers=good)
    assert bedrock_shape.status_code == 429
    assert bedrock_shape.headers["x-amzn-errortype"] == "ThrottlingException"
    assert "retry-after" in bedrock_shape.headers
    time.sleep(1.1)
    assert httpx.get(f"{url}/api/jobs", headers=good).status_code == 200


def test_a_read_only_token_reads_and_changes_nothing(idle_server, tmp_path, tiny_model_dir, capsys):
    job = make_job(idle_server, tmp_path, tiny_model_dir, "shared")
    data = str(idle_server.data_dir)
    assert main(["server", "token", "create", "--read-only", "--data-dir", data]) == 0
    printed = capsys.readouterr().out
    token = printed.split("token (shown this once): ")[1].split()[0]
    assert f"#token={token}" in printed  # the dashboard link
    with httpx.Client(base_url=idle_server.url, headers=bearer(token), timeout=30) as reader:
        readable = [f"/api/jobs/{job}", f"/api/jobs/{job}/files/config.toml", "/openapi.json"]
        readable += ["/api/jobs", "/v1/fine_tuning/jobs", "/model-customization-jobs"]
        for path in readable:
            assert reader.get(path).status_code == 200, path
        for method, path in (("POST", "/api/jobs"), ("POST", f"/api/jobs/{job}/stop"),
                             ("DELETE", f"/api/jobs/{job}"), ("POST", "/api/tokens"),
                             ("POST", "/v1/fine_tuning/jobs")):  # fmt: skip
            refused = reader.request(method, path, json={})
            assert refused.status_code == 403, (method, path, refused.text)
        assert "read-only" in reader.post(f"/api/jobs/{job}/stop").json()["detail"]
        assert reader.get("/api/tokens").status_code == 403
        assert reader.post("/api/session").json()["scope"] == "read"  # the dashboard's cookie
    assert idle_server.client.get(f"/api/jobs/{job}").json()["status"] == "Queued"


def test_a_read_only_token_for_one_job_reads_that_job_only(idle_server, tmp_path, tiny_model_dir):
    mine = make_job(idle_server, tmp_path, tiny_model_dir, "mine")
    other = make_job(idle_server, tmp_path, tiny_model_dir, "other")
    token = new_token(idle_server, scope="read", job_id=mine, name="for a colleague")["token"]
    with httpx.Client(base_url=idle_server.url, headers=bearer(token), timeout=30) as reader:
        assert reader.get(f"/api/jobs/{mine}").status_code == 200
        assert reader.get(f"/api/jobs/{mine}/events").status_code == 200
        for path in (f"/api/jobs/{other}", f"/api/jobs/{other}/metrics", "/api/jobs", "/api/files"):
            assert reader.get(path).status_code == 403, path
    assert (
        idle_server.client.post(
            "/api/tokens", json={"scope": "read", "job_id": "job-0000"}
        ).status_code
        == 404
    )


@pytest.fixture
def agent_proxy() -> Iterator[str]:
    """A stand-in for a job's agent proxy (openrft.rollout.agent_proxy): hands out rollouts."""
    proxy = FastAPI()

    @proxy.post("/rollouts")
    def take() -> dict[str, Any]:
        return {"rollout_id": "r-1", "api_key": "r-1", "item": {"messages": []}}

    @proxy.get("/models")
    def models() -> dict[str, Any]:
        return {"data": [{"id": "policy"}]}

    with ServerThread(proxy) as thread:
        yield thread.url + "/"


def test_an_agent_token_calls_its_jobs_agent_routes_only(
    idle_server, tmp_path, tiny_model_dir, agent_proxy
):
    jobs = [make_job(idle_server, tmp_path, tiny_model_dir, n) for n in ("agents", "another")]
    for job in jobs:
        agent_file = idle_server.data_dir / "jobs" / job / AGENT_FILE
        agent_file.write_text(json.dumps({"url": agent_proxy}))
    mine, other = jobs
    created = new_token(idle_server, scope="agent", job_id=mine)
    assert created["scope"] == "agent" and created["job_id"] == mine
    with httpx.Client(
        base_url=idle_server.url, headers=bearer(created["token"]), timeout=30
    ) as agent:
        offer = agent.post(f"/api/jobs/{mine}/agent/v1/rollouts")
        assert offer.status_code == 200, offer.text
        assert offer.json()["base_url"].endswith(f"/api/jobs/{mine}/agent/v1/")
        assert agent.get(f"/api/jobs/{mine}").status_code == 200  # reading its job
        refused = agent.post(f"/api/jobs/{other}/agent/v1/rollouts")
        assert refused.status_code == 403 and mine in refused.json()["detail"]
        for method, path in (("GET", "/api/jobs"), ("POST", f"/api/jobs/{mine}/stop"),
                             ("GET", f"/api/jobs/{other}"), ("GET", "/v1/fine_tuning/jobs"),
                             ("DELETE", f"/api/jobs/{mine}"), ("GET", "/api/tokens")):  # fmt: skip
            assert agent.request(method, path).status_code == 403, (method, path)
    admin_offer = idle_server.client.post(f"/api/jobs/{other}/agent/v1/rollouts")
    assert admin_offer.status_code == 200
    no_job = idle_server.client.post("/api/tokens", json={"scope": "agent"})
    assert no_job.status_code == 400 and "job" in no_job.json()["detail"]


def test_revoked_and_expired_tokens_are_refused(idle_server, capsys):
    client, data = idle_server.client, str(idle_server.data_dir)
    kept = new_token(idle_server, scope="read", name="kept")
    revoked = new_token(idle_server, scope="read")
    short = new_token(idle_server, scope="read", expires="1s")
    for made in (kept, revoked, short):
        assert (
            httpx.get(f"{idle_server.url}/api/jobs", headers=bearer(made["token"])).status_code
            == 200
        )
    session = httpx.post(f"{idle_server.url}/api/session", headers=bearer(revoked["token"]))
    cookie = dict(session.cookies)
    stored = idle_server.data_dir / "tokens.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    text = stored.read_text()
    assert all(made["token"] not in text for made in (kept, revoked, short))  # hashes only
    listed = client.get("/api/tokens").json()["data"]
    assert {t["id"] for t in listed} == {kept["id"], revoked["id"], short["id"]}
    assert all("token" not in t and "sha256" not in t for t in listed)
    assert main(["server", "token", "revoke", revoked["id"], "--data-dir", data]) == 0  # the CLI
    assert client.delete(f"/api/tokens/{revoked['id']}").status_code == 404  # already gone
    time.sleep(1.05)
    for made, why in ((revoked, "wrong bearer token"), (short, "expired")):
        reply = httpx.get(f"{idle_server.url}/api/jobs", headers=bearer(made["token"]))
        assert reply.status_code == 401 and why in reply.json()["detail"]
    assert httpx.get(f"{idle_server.url}/api/jobs", cookies=cookie).status_code == 401
    assert (
        httpx.get(f"{idle_server.url}/api/jobs", headers=bearer(kept["token"])).status_code == 200
    )
    capsys.readouterr()
    assert main(["server", "token", "list", "--data-dir", data]) == 0
    listing = capsys.readouterr().out
    assert kept["id"] in listing and short["id"] in listing and revoked["id"] not in listing
    assert "expired" in listing
