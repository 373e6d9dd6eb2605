"""The dashboard in a real browser (Playwright with Debian's chromium) against the real job
service: `create_app` served by uvicorn on a free loopback port, real tiny training jobs.

Three jobs run side by side: a short one (6 steps) for the list, charts, rollouts and compare
pages; one whose prompts (and name) carry an XSS payload; and a long one that is watched
growing live and then stopped from the UI. The alert rules are unit-tested in the page
through `page.evaluate` on crafted metrics. Screenshots go to /tmp/dashboard-*.png.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright for Python is not installed (pip install playwright)"
)
app_module = pytest.importorskip("openrft.api.app", reason="openrft.api is not available")

import uvicorn  # noqa: E402

expect = sync_api.expect

LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
XSS = "<img src=x onerror=alert(1)>"
REWARD_FILE = '''
def reward(response, item):
    """Reward short answers containing the reference letter: spread within every group."""
    letter = item["reference_answer"]
    return {"has_letter": float(letter in response), "brevity": 1.0 / (1 + len(response))}
'''
SHORT_STEPS = 6


# -- the server and its jobs ------------------------------------------------------------------


def write_dataset(path: Path, prompt_suffix: str = "", rows: int = 24) -> Path:
    letters = "abcdefgh"
    with path.open("w") as f:
        for i in range(rows):
            content = f"say the letter {letters[i % 8]} {i}{prompt_suffix}"
            row = {
                "messages": [{"role": "user", "content": content}],
                "reference_answer": letters[i % 8],
            }
            f.write(json.dumps(row) + "\n")
    return path


def job_config(directory: Path, model_dir: Path, steps: int, prompt_suffix: str = "") -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    reward = directory / "reward_fn.py"
    reward.write_text(REWARD_FILE)
    data = write_dataset(directory / "train.jsonl", prompt_suffix)
    return {
        "model": {"name": str(model_dir)},
        "data": {"train_file": str(data), "validation_size": 4},
        "reward": {"grader": f"{reward}:reward"},
        "rollout": {"samples_per_prompt": 4, "max_new_tokens": 6},
        "train": {
            "prompts_per_step": 2,
            "micro_batch_size": 4,
            "max_steps": steps,
            "learning_rate": 1e-3,
            "threads": 1,
        },
        "eval": {"interval": 2},
        "checkpoint": {"interval": 0},
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Service:
    """The running server: its URL, token, an authenticated client and the test jobs."""

    def __init__(self, url: str, token: str):
        self.url = url
        self.token = token
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        self.jobs: dict[str, dict[str, Any]] = {}

    def create(self, key: str, config: dict, name: str) -> dict:
        response = self.http.post("/api/jobs", json={"config": config, "name": name})
        assert response.status_code == 201, response.text
        self.jobs[key] = response.json()
        return self.jobs[key]

    def job(self, key: str) -> dict:
        return self.http.get(f"/api/jobs/{self.jobs[key]['id']}").json()

    def wait(self, key: str, done, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(key)
            if done(job):
                return job
            assert job["status"] != "Failed", job["failure_message"]
            assert time.monotonic() < deadline, f"timed out waiting on {key}: {job['status']}"
            time.sleep(0.3)


def start_server(app: Any) -> tuple[str, Any, threading.Thread]:
    """`app` served by uvicorn on a free loopback port: its URL, the server, its thread."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    app.state.server = server  # lets server-sent event streams end on shutdown
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}", server, thread


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_model_dir) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("dashboard")
    app = app_module.create_app(root / "data", concurrency=3, poll_s=0.2)
    url, server, thread = start_server(app)
    svc = Service(url, app.state.token)
    svc.create("short", job_config(root / "short", tiny_model_dir, SHORT_STEPS), "letters-short")
    svc.create("xss", job_config(root / "xss", tiny_model_dir, 2, f" {XSS}"), f"xss {XSS}")
    svc.create("long", job_config(root / "long", tiny_model_dir, 5000), "letters-long")
    try:
        yield svc
    finally:
        for job in svc.http.get("/api/jobs").json()["data"]:
            if job["status"] in ("Queued", "InProgress"):
                svc.http.post(f"/api/jobs/{job['id']}/stop")
        svc.http.close()
        server.should_exit = True  # the lifespan's shutdown stops the workers
        thread.join(timeout=60)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, service) -> Iterator[Any]:
    """A signed-in page: the token is given once in the URL fragment, like the server's link.
    Page errors and dialogs are recorded on `page.problems` (a dialog means injected script)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))

    def on_dialog(dialog: Any) -> None:
        page.problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(f"{service.url}/#token={service.token}")
    expect(page.locator(".jobs-table")).to_be_visible(timeout=15_000)
    yield page
    context.close()
    assert not page.problems, page.problems


def points(page, chart: str, series: str | None = None) -> list[int]:
    """The data-points counts of a chart's series paths (optionally one series by name)."""
    selector = f"[data-chart='{chart}'] path.series"
    if series:
        selector += f"[data-name='{series}']"
    counts = page.locator(selector).evaluate_all("ps => ps.map(p => p.dataset.points)")
    return [int(n) for n in counts]


def wait_for_more_points(page, chart: str, series: str, than: int) -> None:
    """Wait until the series draws more than `than` points (the page polls every 2 s)."""
    page.wait_for_function(
        """([chart, series, than]) => {
            const path = document.querySelector(
                `[data-chart='${chart}'] path.series[data-name='${series}']`);
            return Number(path?.dataset.points || 0) > than;
        }""",
        arg=[chart, series, than],
        timeout=15_000,
    )


def job_url(service: Service, key: str, tab: str = "") -> str:
    return f"{service.url}/#/jobs/{service.jobs[key]['id']}{'/' + tab if tab else ''}"


# -- tests ------------------------------------------------------------------------------------


def test_token_moves_from_the_url_to_storage_and_the_list_shows_jobs(page, service):
    assert "token" not in page.url
    assert page.evaluate("localStorage.getItem('openrft.token')") == service.token
    for key in ("short", "long"):
        row = page.locator(f"tr.job-row[data-id='{service.jobs[key]['id']}']")
        expect(row).to_be_visible()
        expect(row.locator(".job-name")).to_have_text(service.jobs[key]["name"])
        expect(row.locator(".badge")).to_be_visible()
    # the list refreshes by itself: the short job's row reaches Completed with its rewards
    service.wait("short", lambda j: j["status"] == "Completed")
    row = page.locator(f"tr.job-row[data-id='{service.jobs['short']['id']}']")
    expect(row.locator(".badge")).to_have_text("Completed", timeout=10_000)
    expect(row.locator(".progress-text")).to_have_text(f"{SHORT_STEPS} / {SHORT_STEPS}")
    page.screenshot(path="/tmp/dashboard-list.png")
    # a click opens the job
    row.click()
    expect(page.locator(".job-title h1")).to_have_text("letters-short")


def test_a_wrong_token_brings_up_the_token_form(browser, service):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{service.url}/#token=wrong-token")
    expect(page.locator("#token-input")).to_be_visible(timeout=10_000)
    expect(page.locator(".auth-reason")).to_contain_text("rejected")
    page.fill("#token-input", service.token)
    page.click(".auth-card button[type=submit]")
    expect(page.locator(".jobs-table")).to_be_visible(timeout=10_000)
    context.close()


def test_live_charts_grow_while_the_job_runs_and_stop_works(page, service):
    service.wait("long", lambda j: j["status"] == "InProgress" and j["progress"]["step"] >= 1)
    page.goto(job_url(service, "long"))
    expect(page.locator("#stop-button")).to_be_enabled(timeout=10_000)
    expect(page.locator("#resume-button")).to_be_disabled()
    wait_for_more_points(page, "reward", "mean", 0)
    first = points(page, "reward", "mean")[0]
    wait_for_more_points(page, "reward", "mean", first)
    assert points(page, "reward", "mean")[0] > first
    page.click("#stop-button")
    expect(page.locator("#job-status")).to_have_text("Stopped", timeout=60_000)
    expect(page.locator("#resume-button")).to_be_enabled()
    expect(page.locator("#stop-button")).to_be_disabled()


def test_job_page_shows_header_alerts_and_charts(page, service):
    service.wait("short", lambda j: j["status"] == "Completed")
    page.goto(job_url(service, "short"))
    expect(page.locator("#job-status")).to_have_text("Completed")
    expect(page.locator(".substep")).to_have_count(3)
    usage = service.http.get(f"/api/jobs/{service.jobs['short']['id']}").json()["usage"]
    expect(page.locator("[data-fact='usage'] .fact-value")).to_have_text(
        f"{usage['sampled_tokens']:,} / {usage['trained_tokens']:,}"
    )
    # every train step is a point; validation at 0, 2, 4, 6
    expect(page.locator("[data-chart='reward'] path.series[data-name='mean']")).to_have_attribute(
        "data-points", str(SHORT_STEPS)
    )
    assert points(page, "val", "validation") == [SHORT_STEPS // 2 + 1]
    assert page.locator("[data-chart='reward'] path.band").count() >= 1
    for chart in ("length", "entropy", "clip", "grad", "throughput", "components", "errors"):
        assert max(points(page, chart)) > 0, chart
    assert page.locator("[data-chart='kl']").count() == 0  # kl_coef 0: KL is null throughout
    # in-process rollouts report no sampler log-probs, but each weight sync is probed
    assert sum(points(page, "sampler", "sampler KL")) == 0
    assert max(points(page, "sampler", "probe gap")) > 0
    assert set(
        page.locator("[data-chart='components'] path.series").evaluate_all(
            "ps => ps.map(p => p.dataset.name)"
        )
    ) == {"brevity", "has_letter"}
    # 6 new tokens always hit the limit: the truncation alert explains it
    expect(page.locator(".alert[data-alert='truncation']")).to_be_visible()
    # hovering shows the step and values
    box = page.locator("[data-chart='reward'] svg").bounding_box()
    page.mouse.move(box["x"] + box["width"] - 20, box["y"] + box["height"] / 2)
    expect(page.locator("[data-chart='reward'] .tooltip-title")).to_have_text(f"step {SHORT_STEPS}")
    page.screenshot(path="/tmp/dashboard-job.png", full_page=True)
    # details: config, checkpoints, events
    page.click(".tab[data-tab='details']")
    expect(page.locator(".config")).to_contain_text("max_steps = 6")
    expect(page.locator(".events .event").first).to_be_visible(timeout=10_000)
    expect(page.locator(".table.compact tbody tr").first).to_be_visible()


def test_rollout_viewer_shows_completions_and_filters(page, service):
    job_id = service.jobs["short"]["id"]
    service.wait("short", lambda j: j["status"] == "Completed")
    records = service.http.get(f"/api/jobs/{job_id}/rollouts", params={"step": SHORT_STEPS}).json()
    records = records["data"]
    page.goto(job_url(service, "short", "rollouts"))
    count = page.locator("#rollout-count")
    total = len(records)
    expect(count).to_have_text(f"Showing {total} of {total} prompts", timeout=10_000)
    steps = page.locator("#rollout-step option").evaluate_all("os => os.map(o => o.value)")
    assert sorted(map(int, steps)) == list(range(1, SHORT_STEPS + 1))
    assert page.locator("#rollout-step").input_value() == str(SHORT_STEPS)  # latest by default
    expect(page.locator(".completion")).to_have_count(sum(len(r["completions"]) for r in records))
    first = records[0]["completions"][0]
    card = page.locator(".rollout").first.locator(".completion").first
    expect(card.locator(".completion-text")).to_have_text(first["text"] or "(empty completion)")
    expect(card.locator(".adv")).to_contain_text("adv")
    expect(card.locator(".components")).to_contain_text("brevity")

    # no learning signal: groups whose completions all scored the same
    flat = sum(len({c["score"] for c in r["completions"]}) == 1 for r in records)
    page.check("input[data-filter='noSignal']")
    expect(count).to_have_text(f"Showing {flat} of {total} prompts")
    page.uncheck("input[data-filter='noSignal']")
    # has errors: this grader never fails
    page.check("input[data-filter='errors']")
    expect(count).to_have_text(f"Showing 0 of {total} prompts")
    page.uncheck("input[data-filter='errors']")
    # text search across prompts
    prompt = records[0]["prompt"][-1]["content"]
    page.fill("#rollout-search", prompt.upper())
    expect(count).to_have_text(f"Showing 1 of {total} prompts")
    page.fill("#rollout-search", "")
    expect(count).to_have_text(f"Showing {total} of {total} prompts")
    page.screenshot(path="/tmp/dashboard-rollouts.png", full_page=True)
    # another step
    page.select_option("#rollout-step", "1")
    expect(page.locator(".step-stats")).to_contain_text("Step 1:")


def test_untrusted_text_is_shown_literally(page, service):
    service.wait("xss", lambda j: j["progress"]["step"] >= 1 or j["status"] == "Completed")
    job_id = service.jobs["xss"]["id"]
    row = page.locator(f"tr.job-row[data-id='{job_id}'] .job-name")
    expect(row).to_have_text(f"xss {XSS}")
    page.goto(job_url(service, "xss", "rollouts"))
    expect(page.locator(".message-text").first).to_contain_text(XSS, timeout=10_000)
    expect(page.locator(".job-title h1")).to_have_text(f"xss {XSS}")
    assert page.locator("#app img").count() == 0
    page.wait_for_timeout(300)
    assert not [p for p in page.problems if p.startswith("dialog")]


def test_compare_page_draws_one_series_per_job(page, service):
    service.wait("short", lambda j: j["status"] == "Completed")
    page.check(f"tr.job-row[data-id='{service.jobs['short']['id']}'] input.select-job")
    expect(page.locator("#compare-button")).to_be_disabled()
    page.check(f"tr.job-row[data-id='{service.jobs['long']['id']}'] input.select-job")
    expect(page.locator("#compare-button")).to_be_enabled()
    page.click("#compare-button")
    expect(page).to_have_url(
        f"{service.url}/#/compare?ids={service.jobs['short']['id']},{service.jobs['long']['id']}"
    )
    reward = page.locator("[data-chart='reward'] path.series")
    expect(reward).to_have_count(2, timeout=10_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll(\"[data-chart='reward'] path.series\")]"
        ".every(p => Number(p.dataset.points) > 0)",
        timeout=10_000,
    )
    names = reward.evaluate_all("ps => ps.map(p => p.dataset.name)")
    assert names == ["letters-short", "letters-long"]
    colors = reward.evaluate_all("ps => ps.map(p => p.getAttribute('stroke'))")
    assert len(set(colors)) == 2
    legend = page.locator("[data-chart='reward'] .legend-item")
    expect(legend).to_have_text(["letters-short", "letters-long"])
    page.screenshot(path="/tmp/dashboard-compare.png", full_page=True)


ALERT_CASES = """
async () => {
  const a = await import('/ui/js/alerts.js');
  const steps = (n, f) => Array.from({length: n}, (_, i) => ({step: i + 1, ...f(i + 1)}));
  const ids = (rows) => a.computeAlerts(rows).map((x) => x.id).sort();
  const healthy = steps(12, (s) => ({
    'reward/mean': 0.3 + s * 0.02, 'policy/entropy': 2.0, 'completion/length_mean': 40,
    'completion/truncated_ratio': 0.05, 'reward/error_rate': 0, 'reward/frac_zero_std_groups': 0.2,
    ...(s % 4 === 0 ? {'val/reward/mean': 0.28 + s * 0.02} : {}),
  }));
  // train keeps rising, validation falls: gaps 0.06, 0.16, 0.3 at steps 4, 8, 12
  const overfit = steps(12, (s) => ({
    'reward/mean': 0.5 + s * 0.03,
    ...(s === 4 ? {'val/reward/mean': 0.5} : s === 8 ? {'val/reward/mean': 0.52} : {}),
    ...(s === 12 ? {'val/reward/mean': 0.5} : {}),
  }));
  // a big but shrinking gap is not flagged
  const closing = steps(12, (s) => ({
    'reward/mean': 0.9,
    ...(s === 4 ? {'val/reward/mean': 0.4} : s === 8 ? {'val/reward/mean': 0.5} : {}),
    ...(s === 12 ? {'val/reward/mean': 0.6} : {}),
  }));
  const entropy = steps(6, (s) => ({'policy/entropy': s < 6 ? 3.0 : 0.2}));
  const lowEntropy = steps(2, () => ({'policy/entropy': 0.01}));
  const longer = steps(8, (s) => ({'completion/length_mean': s <= 3 ? 20 : 90}));
  const truncated = steps(6, () => ({'completion/truncated_ratio': 0.8}));
  const errors = steps(5, () => ({'reward/error_rate': 0.1}));
  const valErrors = [{step: 0, 'val/reward/error_rate': 1.0}];
  const flat = steps(6, () => ({'reward/frac_zero_std_groups': 0.9}));
  const fewFlat = steps(2, () => ({'reward/frac_zero_std_groups': 1.0}));
  const one = a.computeAlerts(errors)[0];
  return {
    healthy: ids(healthy), empty: ids([]), overfit: ids(overfit), closing: ids(closing),
    entropy: ids(entropy), lowEntropy: ids(lowEntropy), longer: ids(longer),
    truncated: ids(truncated), errors: ids(errors), valErrors: ids(valErrors), flat: ids(flat),
    fewFlat: ids(fewFlat), shuffled: ids([...overfit].reverse()),
    fields: [one.severity, typeof one.title, typeof one.detail, typeof one.action],
    both: ids([...flat.map((r, i) => ({...r, ...truncated[i]}))]),
  };
}
"""


def test_alert_rules(page):
    result = page.evaluate(ALERT_CASES)
    assert result["healthy"] == []
    assert result["empty"] == []
    assert result["overfit"] == ["train-val-gap"]
    assert result["shuffled"] == ["train-val-gap"]
    assert result["closing"] == []
    assert result["entropy"] == ["entropy-collapse"]
    assert result["lowEntropy"] == ["entropy-collapse"]
    assert result["longer"] == ["length-blowup"]
    assert result["truncated"] == ["truncation"]
    assert result["errors"] == ["grader-errors"]
    assert result["valErrors"] == ["grader-errors"]
    assert result["flat"] == ["no-learning-signal"]
    assert result["fewFlat"] == []
    assert result["both"] == ["no-learning-signal", "truncation"]
    assert result["fields"] == ["critical", "string", "string", "string"]


ESCAPING_AND_FILTERS = """
async () => {
  const f = await import('/ui/js/rollout-filters.js');
  const dom = await import('/ui/js/dom.js');
  const record = (scores, errors = []) => ({
    prompt: [{role: 'user', content: 'Q'}], reference_answer: 'A',
    completions: scores.map((score, i) => ({text: `t${i}`, score, error: errors[i] || null})),
  });
  const el = dom.h('div', null, '<b>x</b>');
  let refused = false;
  try { dom.h('img', {onerror: 'alert(1)'}); } catch { refused = true; }
  return {
    same: f.hasNoSignal(record([1, 1, 1])), spread: f.hasNoSignal(record([1, 0, 1])),
    errors: f.errorCount(record([null, 1], [{kind: 'timeout', message: 'slow'}])),
    search: f.filterRollouts(
      [record([1]), {...record([1]), prompt: [{role: 'user', content: 'Needle'}]}],
      {text: 'needle'}).length,
    parts: f.contentText([{type: 'text', text: 'a'}, {type: 'text', text: 'b'}]),
    html: el.innerHTML, refused,
  };
}
"""


def test_rollout_filters_and_safe_dom(page):
    result = page.evaluate(ESCAPING_AND_FILTERS)
    assert result["same"] is True
    assert result["spread"] is False
    assert result["errors"] == 1
    assert result["search"] == 1
    assert result["parts"] == "a\nb"
    assert result["html"] == "&lt;b&gt;x&lt;/b&gt;"
    assert result["refused"] is True


def episode_record() -> dict:
    """A rollouts.jsonl episode as openrft writes it (episode_record of a real Episode)."""
    from openrft.rollout.episodes import Episode, Turn
    from openrft.train.rollouts import episode_record as record
    from openrft.types import Completion

    call = {"id": "call_1", "type": "function",
            "function": {"name": "multiply", "arguments": '{"a": 3, "b": 4}'}}  # fmt: skip
    turns = (
        Turn(Completion((1, 2), "", "stop"), {"role": "assistant", "content": "",
             "tool_calls": [call]},
             ({"role": "tool", "tool_call_id": "call_1", "name": "multiply", "content": "12"},),
             (5,), reward=0.25, tool_calls=1),
        Turn(Completion((3,), "", "stop"), {"role": "assistant", "content": f"use {XSS}",
             "tool_calls": [{**call, "id": "call_2"}]},
             ({"role": "tool", "tool_call_id": "call_2", "name": "multiply",
               "content": "Error (timeout): no answer in 30 s"},),
             (6,), reward=0.0, tool_calls=1, tool_errors={"timeout": 1}),
        Turn(Completion((4,), "It is 12.", "stop"), {"role": "assistant", "content": "It is 12."},
             reward=1.0),
    )  # fmt: skip
    episode = Episode(({"role": "user", "content": "3 * 4?"},), turns, "stop")
    return {"text": "It is 12.", "score": 1.0, "finish_reason": "stop", "tokens": 7,
            "advantage": 0.5, **record(episode)}  # fmt: skip


EPISODE_VIEW = """
async (completion) => {
  const m = await import('/ui/js/episode.js');
  const view = m.episodeView(completion);
  document.body.appendChild(view);
  const turns = [...view.querySelectorAll('.turn')];
  return {
    roles: turns.map(t => t.querySelector('.message-role').textContent),
    rewards: [...view.querySelectorAll('.turn-reward')].map(c => c.textContent),
    calls: [...view.querySelectorAll('.tool-call .tool-name')].map(c => c.textContent),
    open: turns.filter(t => t.tagName === 'DETAILS').map(t => t.open),
    errors: [...view.querySelectorAll('.tool-error .chip-error')].map(c => c.textContent),
    stats: view.querySelector('.episode-stats').textContent,
    injected: view.querySelectorAll('img').length,
  };
}
"""


def test_rollout_viewer_shows_an_episode_turn_by_turn(page):
    result = page.evaluate(EPISODE_VIEW, episode_record())
    assert result["roles"] == [
        "assistant · turn 1", "tool result · multiply", "assistant · turn 2",
        "tool result · multiply", "assistant · turn 3",
    ]  # fmt: skip
    assert result["rewards"] == ["reward 0.25", "reward 0", "reward 1"]
    assert result["calls"] == ["call multiply", "call multiply"]
    assert result["open"] == [False, True]  # results folded; the failed call shown open
    assert result["errors"] == ["timeout"]
    assert "3 turns · 2 tool calls" in result["stats"] and "timeout ×1" in result["stats"]
    assert result["injected"] == 0  # model text stays text
