"""The job page's charts of a scaled-out job (docs/scale.md), in the real browser: the
workers chart (Ray actors alive, restarts), the off-policy lag chart, and the exposed
grading time in the step-time chart appear when the metrics carry them, and only then."""

from __future__ import annotations

import pytest

# Importing the dashboard tests' module skips this one too where chromium or playwright is
# missing.
from tests.dashboard.test_dashboard import (
    CHROMIUM,
    LAUNCH_ARGS,
    app_module,
    start_server,
    sync_api,
)

CHARTS = """
async () => {
  const m = await import('/ui/js/metrics.js');
  const local = [{step: 1, 'time/step_s': 2, 'time/reward_s': 1, 'time/reward_exposed_s': 0.2}];
  const scaled = [1, 2].map((step) => ({
    step, 'time/step_s': 2, 'time/reward_exposed_s': 0.1, 'time/rollout_wait_s': 0.5,
    'cluster/rollout_workers': 2, 'cluster/reward_workers': 4, 'cluster/worker_restarts': step - 1,
    'off_policy/lag_mean': step - 1, 'off_policy/lag_max': step - 1, 'off_policy/dropped_groups': 0,
  }));
  const shown = (rows) => m.JOB_CHARTS.filter((c) => !c.show || c.show(rows)).map((c) => c.id);
  const series = (id, rows) => m.JOB_CHARTS.find((c) => c.id === id).build(rows).series
    .map((s) => [s.name, s.points]);
  return {local: shown(local), scaled: shown(scaled), workers: series('workers', scaled),
          lag: series('off_policy', scaled), time: series('time', local)};
}
"""


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    app = app_module.create_app(tmp_path_factory.mktemp("dashboard") / "data", concurrency=1)
    url, server, thread = start_server(app)
    yield url, app.state.token
    server.should_exit = True
    thread.join(timeout=30)


def test_scaled_out_jobs_get_workers_and_lag_charts(url):
    base, token = url
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True
        )
        page = browser.new_page()
        page.goto(f"{base}/#token={token}")
        result = page.evaluate(CHARTS)
        browser.close()
    assert "workers" not in result["local"] and "off_policy" not in result["local"]
    assert {"workers", "off_policy"} <= set(result["scaled"])
    assert result["workers"] == [
        ["rollout workers", [[1, 2], [2, 2]]],
        ["grader workers", [[1, 4], [2, 4]]],
        ["restarts", [[1, 0], [2, 1]]],
    ]
    assert result["lag"][0] == ["mean lag", [[1, 0], [2, 1]]]
    assert ["reward exposed", [[1, 0.2]]] in result["time"]
