"""Every route of the job server, enumerated from `app.routes` (a new route is covered without
touching this file): path parameters that try to climb out of the data directory get a 4xx,
never a 5xx, and nothing outside it is read or deleted; a body over the upload limit gets 413
on every route that takes one, by Content-Length and by a running count (chunked)."""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount

from openrft.api.app import create_app
from openrft.api.server import ServerThread

from .helpers import job_config

MB = 1 << 20
SECRET = "outside-the-data-dir-7f3a"
TRAVERSALS = (
    "..%2F..%2Fetc%2Fpasswd",
    "..%2F..%2F..%2Foutside.txt",
    "%2E%2E%2F%2E%2E%2Ftoken",
    "..%5C..%5Coutside.txt",
    "....%2F%2F....%2F%2Fetc%2Fpasswd",
    "%252E%252E%252Ftoken",
    "..",
)
# For {x:path} parameters too; sent as they are (http.client), since httpx, like a browser,
# would resolve the dot segments before sending.
PATH_TRAVERSALS = ("../../outside.txt", "sub/../../../token", "%2Fetc%2Fpasswd", "/etc/passwd")
PARAM = re.compile(r"{(\w+)(:\w+)?}")
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture
def served(tmp_path: Path, tiny_model_dir: Path) -> Iterator[dict[str, Any]]:
    """A server (no runner, 1 MB limit) with a job and a file, and a secret beside its data."""
    (tmp_path / "outside.txt").write_text(SECRET)
    app = create_app(tmp_path / "data", start_runner=False, max_upload_mb=1)
    with ServerThread(app) as thread:
        headers = {"Authorization": f"Bearer {app.state.token}"}
        with httpx.Client(base_url=thread.url, headers=headers, timeout=30) as client:
            job = client.post("/api/jobs", json={"config": job_config(tmp_path, tiny_model_dir)})
            upload = client.post("/api/files", files={"file": ("a.jsonl", b"{}\n")})
            yield {
                "app": app,
                "client": client,
                "token": app.state.token,
                "outside": tmp_path / "outside.txt",
                "real": {"job_id": job.json()["id"], "file_id": upload.json()["id"]},
            }


def routes(app: Any) -> list[tuple[str, set[str]]]:
    """(path template, methods) of every route, mounts (the dashboard's assets) included."""
    found = []
    for route in iter_route_contexts(app.routes):  # through the included routers
        if isinstance(route.original_route, Mount):
            found.append((route.path + "/{path:path}", {"GET"}))
        elif route.methods:
            found.append((route.path, set(route.methods) - {"HEAD"}))
    assert len(found) > 40, found
    return found


def fill(template: str, real: dict[str, str], target: str, value: str) -> str:
    def one(match: re.Match) -> str:
        name = match.group(1)
        return value if name == target else real.get(name, "config.toml")

    return PARAM.sub(one, template)


def send(base: str, token: str, method: str, url: str) -> tuple[int, str]:
    """The request with its path exactly as given (no dot-segment resolution)."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    body = None if method == "GET" else b"{}"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        connection.request(method, url, body=body, headers=headers)
        reply = connection.getresponse()
        return reply.status, reply.read().decode(errors="replace")
    finally:
        connection.close()


def test_path_parameters_cannot_climb_out_of_the_data_dir(served):
    real, token = served["real"], served["token"]
    base = str(served["client"].base_url).rstrip("/")
    covered = set()
    for template, methods in routes(served["app"]):
        for name, kind in PARAM.findall(template):
            values = TRAVERSALS + (PATH_TRAVERSALS if kind == ":path" else ())
            for method in sorted(methods):
                for value in values:
                    url = fill(template, real, name, value)
                    status, text = send(base, token, method, url)
                    where = f"{method} {url} -> {status}: {text[:200]}"
                    assert 400 <= status < 500, where
                    assert SECRET not in text and "root:x:0:0" not in text, where
                    assert token not in text, where
                    covered.add((method, template))
    assert served["outside"].read_text() == SECRET  # nothing deleted or overwritten
    assert served["client"].get(f"/api/jobs/{real['job_id']}").status_code == 200
    templates = {t for _, t in covered}
    for expected in ("/api/jobs/{job_id}/files/{path:path}", "/v1/files/{file_id}/content",
                     "/custom-models/{model_identifier:path}", "/api/tokens/{token_id}",
                     "/api/jobs/{job_id}/agent/v1/{path:path}", "/ui/{path:path}"):  # fmt: skip
        assert expected in templates, expected


def test_a_body_over_the_limit_is_refused_on_every_route_that_takes_one(served):
    client, real = served["client"], served["real"]
    big = b"x" * (MB + 1)
    checked = []
    for template, methods in routes(served["app"]):
        for method in sorted(methods & BODY_METHODS):
            url = fill(template, real, "", "")
            headers = {"content-type": "application/json"}
            reply = client.request(method, url, content=big, headers=headers)
            assert reply.status_code == 413, f"{method} {url}: {reply.status_code} {reply.text}"
            assert "--max-upload-mb" in reply.text
            checked.append((method, template))
    assert ("POST", "/api/jobs") in checked and ("POST", "/v1/fine_tuning/jobs") in checked
    assert ("POST", "/model-customization-jobs") in checked and ("POST", "/api/tokens") in checked

    def chunks() -> Iterator[bytes]:  # no Content-Length: only the running count stops it
        for _ in range(4):
            yield b" " * (MB // 2)

    chunked = client.post("/api/jobs", content=chunks(), headers=headers)
    assert chunked.status_code == 413
    assert client.get("/api/jobs").json()["data"][0]["id"] == real["job_id"]  # nothing created
