"""The dashboard's auth in the real browser: the token only ever travels in the Authorization
header, the live metrics stream (EventSource) rides on the session cookie, no request URL
carries `token=`; and a read-only link for one job shows that job without the buttons that
change it. The job never runs (no runner): its metrics.jsonl is written by the test, so the
charts grow from the stream without any training."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

# Importing the dashboard tests' module skips this one too where chromium or playwright is
# missing.
from tests.dashboard.test_dashboard import (
    CHROMIUM,
    LAUNCH_ARGS,
    app_module,
    job_config,
    start_server,
    sync_api,
)

expect = sync_api.expect


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir) -> Iterator[dict[str, Any]]:
    """A server without a runner, one Queued job, and a writer that adds a metrics line to
    the job's metrics.jsonl every 0.3 s (what a running job does)."""
    root = tmp_path_factory.mktemp("dashboard-auth")
    app = app_module.create_app(root / "data", start_runner=False)
    url, server, thread = start_server(app)
    admin = {"Authorization": f"Bearer {app.state.token}"}
    config = job_config(root / "job", tiny_model_dir, 5)
    job = httpx.post(f"{url}/api/jobs", json={"config": config, "name": "live"}, headers=admin)
    job_id = job.json()["id"]
    metrics = root / "data" / "jobs" / job_id / "metrics.jsonl"
    stop = threading.Event()

    def write() -> None:
        step = 0
        while not stop.wait(0.3):
            step += 1
            line = {"step": step, "reward/mean": step / 100, "reward/std": 0.1, "loss": 1 / step}
            with metrics.open("a") as f:
                f.write(json.dumps(line) + "\n")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    yield {"url": url, "token": app.state.token, "job": job_id, "admin": admin}
    stop.set()
    writer.join()
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True
        )
        yield browser
        browser.close()


def open_job(browser: Any, served: dict[str, Any], token: str) -> tuple[Any, Any, list[Any]]:
    """A fresh browser context on the job page, signed in with `token` through the fragment;
    (context, page, every request the page made)."""
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    requests: list[Any] = []
    page.on("request", lambda request: requests.append(request))
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
    page.goto(f"{served['url']}/#/jobs/{served['job']}&token={token}")
    return context, page, requests


def points(page: Any) -> int:
    path = page.locator("[data-chart='reward'] path.series[data-name='mean']")
    return int(path.get_attribute("data-points") or 0)


def wait_for_growth(page: Any, than: int) -> None:
    page.wait_for_function(
        """(than) => Number(document.querySelector(
            "[data-chart='reward'] path.series[data-name='mean']")?.dataset.points || 0) > than""",
        arg=than,
        timeout=15_000,
    )


def check_requests(requests: list[Any], token: str) -> Any:
    """No URL carries a token; the metrics stream went with the cookie, not the header."""
    assert requests
    for request in requests:
        assert "token=" not in request.url, request.url
        assert token not in request.url, request.url
    streams = [r for r in requests if "/metrics/stream" in r.url]
    assert streams, [r.url for r in requests]
    headers = streams[0].all_headers()
    assert "authorization" not in headers
    assert "openrft_session_" in headers.get("cookie", "")
    return streams


def test_live_charts_come_over_the_cookie_authorized_stream(browser, served):
    context, page, requests = open_job(browser, served, served["token"])
    expect(page.locator("#stop-button")).to_be_visible(timeout=15_000)
    wait_for_growth(page, 0)
    first = points(page)
    wait_for_growth(page, first + 2)  # live: lines written after the page loaded
    streams = check_requests(requests, served["token"])
    polls = [r for r in requests if r.url.split("?")[0].endswith("/metrics")]
    assert len(polls) <= 2, [r.url for r in polls]  # the stream, not polling, fed the chart
    assert streams[0].method == "GET"
    assert "token" not in page.url
    cookies = context.cookies()
    session = [c for c in cookies if c["name"].startswith("openrft_session_")]
    assert session and session[0]["httpOnly"] and session[0]["sameSite"] == "Strict"
    assert session[0]["value"] != served["token"]
    assert not page.problems, page.problems
    context.close()


def test_a_read_only_link_shows_the_job_without_its_buttons(browser, served):
    made = httpx.post(
        f"{served['url']}/api/tokens",
        json={"scope": "read", "job_id": served["job"], "name": "shared"},
        headers=served["admin"],
    ).json()
    context, page, requests = open_job(browser, served, made["token"])
    expect(page.locator("#read-only-note")).to_be_visible(timeout=15_000)
    expect(page.locator("#access")).to_contain_text("Read-only")
    assert page.locator("#stop-button").count() == 0
    assert page.locator("#resume-button, #delete-button").count() == 0
    wait_for_growth(page, 0)
    wait_for_growth(page, points(page) + 1)  # live over the read-only token's cookie
    check_requests(requests, made["token"])
    page.goto(f"{served['url']}/#/")  # a one-job token is led back to its job
    expect(page).to_have_url(f"{served['url']}/#/jobs/{served['job']}", timeout=10_000)
    refused = page.evaluate(
        """async (path) => (await import('/ui/js/api.js')).post(path).then(
            () => 'allowed', (error) => `${error.status}: ${error.message}`)""",
        f"/api/jobs/{served['job']}/stop",
    )
    assert refused.startswith("403") and "read-only" in refused
    assert not page.problems, page.problems
    context.close()
    job = httpx.get(f"{served['url']}/api/jobs/{served['job']}", headers=served["admin"]).json()
    assert job["status"] == "Queued"


def test_the_server_refuses_the_token_in_a_url(served):
    reply = httpx.get(
        f"{served['url']}/api/jobs/{served['job']}", params={"token": served["token"]}
    )
    assert reply.status_code == 401
