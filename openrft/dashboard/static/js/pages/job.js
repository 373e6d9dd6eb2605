/**
 * The job page (`#/jobs/<id>`, `#/jobs/<id>/rollouts`, `#/jobs/<id>/details`): a header with
 * status, sub-steps, progress, failure message and Stop / Resume; then tabs for live metrics
 * (health alerts and charts), the rollout viewer, and details (config, checkpoints, events,
 * worker log). A running job's metrics are followed live over server-sent events (the session
 * cookie authorizes the stream); they are polled (`/metrics?after=N`) every 2 seconds while no
 * stream is open. With a read-only token, Stop / Resume / Delete are not shown.
 * @module pages/job
 */

import { computeAlerts } from "../alerts.js";
import { ApiError, del, get, isReadOnly, jobPath, post } from "../api.js";
import { h, replace } from "../dom.js";
import {
  ENDED,
  SUB_STEPS,
  datetime,
  duration,
  num,
  progressBar,
  statusBadge,
} from "../format.js";
import { JOB_CHARTS, MetricsFeed } from "../metrics.js";
import { every, handleError, toast } from "../shell.js";
import { ChartGrid, alertList, card, configView, tableHead } from "../views.js";
import { renderRollouts } from "./rollouts.js";

const LIVE_MS = 2000;
const IDLE_MS = 5000;
const RESTREAM_MS = 10000; // after a stream broke, poll this long before following again
const TABS = [
  ["metrics", "Metrics"],
  ["rollouts", "Rollouts"],
  ["details", "Details"],
];

function subStepPill(label, state) {
  return h(
    "span",
    { class: ["substep", `substep-${(state || "NotStarted").toLowerCase()}`], title: state || "NotStarted" },
    h("span", { class: "substep-dot", "aria-hidden": "true" }),
    label,
    h(
      "span",
      { class: "substep-state" },
      (state || "NotStarted").replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase(),
    ),
  );
}

/**
 * Render a job page into `root`.
 * @param {HTMLElement} root
 * @param {string} jobId
 * @param {string} tab "metrics", "rollouts" or "details"
 * @returns {function(): void} dispose
 */
export function renderJob(root, jobId, tab) {
  const feed = new MetricsFeed(jobId);
  let job = null;
  let disposed = false;
  let rollouts = null;
  let grid = null;
  let alertsBox = null;
  let events = [];
  let lastEventSeq = null;
  let lastDrawn = null;
  let rolloutsSettled = false; // the step list was read after the job ended
  let streamAfter = 0; // when the metrics may be followed live (again)

  const head = h("header", { class: "card job-head" }, h("div", { class: "loading" }, "Loading job…"));
  const tabs = h(
    "nav",
    { class: "tabs", role: "tablist" },
    TABS.map(([id, label]) =>
      h(
        "a",
        {
          href: `#/jobs/${encodeURIComponent(jobId)}${id === "metrics" ? "" : `/${id}`}`,
          class: ["tab", id === tab && "active"],
          role: "tab",
          "aria-selected": id === tab ? "true" : "false",
          dataset: { tab: id },
        },
        label,
        id === "metrics" ? h("span", { class: "tab-count", id: "alert-count", hidden: true }) : null,
      ),
    ),
  );
  const body = h("div", { class: "tab-body" });
  const crumb = h("span", null, jobId);
  replace(
    root,
    h(
      "div",
      { class: "page" },
      h("div", { class: "crumbs" }, h("a", { href: "#/" }, "Jobs"), h("span", { class: "sep" }, "/"), crumb),
      head,
      tabs,
      body,
    ),
  );

  // ---- header -------------------------------------------------------------------------

  async function act(action) {
    try {
      if (action === "delete") {
        if (!window.confirm(`Delete job ${job.name || job.id} and its run directory?`)) return;
        await del(jobPath(jobId));
        toast("Job deleted");
        window.location.hash = "#/";
        return;
      }
      job = await post(jobPath(jobId, action));
      if (action === "resume") feed.reset();
      toast(action === "stop" ? "Stop requested" : "Job queued to resume");
      lastDrawn = JSON.stringify(job);
      drawHead();
    } catch (error) {
      handleError(error);
    }
  }

  function drawHead() {
    crumb.textContent = job.name || job.id;
    document.title = `${job.name || job.id} · openrft`;
    const latest = job.latest || {};
    const canStop = job.status === "InProgress" || job.status === "Queued";
    const canResume = job.status === "Stopped" || job.status === "Failed";
    const fact = (label, value, extra = {}) =>
      h(
        "div",
        { class: "fact", ...extra },
        h("div", { class: "fact-label" }, label),
        h("div", { class: "fact-value" }, value),
      );
    const button = (id, label, className, enabled, action) =>
      h(
        "button",
        { type: "button", class: ["button", className], id, disabled: !enabled, onclick: action },
        label,
      );
    replace(
      head,
      h(
        "div",
        { class: "job-title-row" },
        h(
          "div",
          { class: "job-title" },
          h("h1", null, job.name || job.id),
          h("span", { id: "job-status" }, statusBadge(job.status)),
          h("code", { class: "job-id" }, job.id),
        ),
        isReadOnly()
          ? h(
              "div",
              { class: "job-actions" },
              h("span", { class: "muted", id: "read-only-note" }, "Read-only access: viewing only"),
            )
          : h(
              "div",
              { class: "job-actions" },
              button("stop-button", "Stop", "danger-outline", canStop, () => act("stop")),
              button("resume-button", "Resume", null, canResume, () => act("resume")),
              ENDED.has(job.status)
                ? button("delete-button", "Delete", "subtle", true, () => act("delete"))
                : null,
            ),
      ),
      h(
        "div",
        { class: "substeps" },
        SUB_STEPS.map(([key, label]) => subStepPill(label, job.status_details?.[key])),
      ),
      h(
        "div",
        { class: "facts" },
        fact("Progress", progressBar(job.progress)),
        fact("Train reward", num(latest["reward/mean"])),
        fact("Val reward", num(latest["val/reward/mean"])),
        fact("Created", datetime(job.created_at)),
        fact("Running time", duration(job.started_at, job.ended_at)),
        job.usage && job.usage.sampled_tokens !== undefined
          ? fact("Tokens sampled / trained", usageText(job.usage), {
              title: Object.entries(job.usage).map(([k, v]) => `${k}: ${v.toLocaleString()}`).join("\n"),
              "data-fact": "usage",
            })
          : null,
        fact("Model", String(job.config?.model?.name ?? "–").split("/").filter(Boolean).pop() || "–", {
          title: job.config?.model?.name ?? "",
        }),
      ),
      job.failure_message
        ? h(
            "div",
            { class: "failure", role: "alert" },
            h("strong", null, "Failure: "),
            h("pre", { class: "failure-text" }, job.failure_message),
          )
        : null,
    );
  }

  // ---- metrics tab --------------------------------------------------------------------

  function drawMetrics() {
    const rows = feed.rows;
    const alerts = computeAlerts(rows);
    const badge = document.getElementById("alert-count");
    if (badge) {
      badge.hidden = !alerts.length;
      badge.textContent = String(alerts.length);
      badge.classList.toggle("critical", alerts.some((a) => a.severity === "critical"));
    }
    if (tab !== "metrics") return;
    replace(alertsBox, alertList(alerts, rows.length));
    grid.update(
      JOB_CHARTS.filter((spec) => !spec.show || spec.show(rows)).map((spec) => ({
        ...spec,
        data: spec.build(rows),
      })),
    );
  }

  // ---- details tab --------------------------------------------------------------------

  const details = {};

  function buildDetails() {
    details.config = h("div");
    details.checkpoints = h("div", null, h("div", { class: "muted" }, "Loading…"));
    details.events = h("ol", { class: "events" });
    details.log = h("pre", { class: "code log" }, "Loading…");
    const logBox = h(
      "details",
      {
        class: "card collapsible",
        ontoggle: (event) => {
          if (event.target.open) loadLog();
        },
      },
      h("summary", null, h("h2", { class: "card-title" }, "Worker log")),
      details.log,
    );
    replace(
      body,
      h(
        "div",
        { class: "details-grid" },
        h(
          "details",
          { class: "card collapsible", open: true },
          h("summary", null, h("h2", { class: "card-title" }, "Config")),
          details.config,
        ),
        card("Checkpoints", details.checkpoints),
        card("Events", details.events),
        logBox,
      ),
    );
    drawConfig();
  }

  let drawnConfig = null;

  function drawConfig() {
    if (!details.config || !job) return;
    const text = JSON.stringify(job.config || {});
    if (text === drawnConfig && details.config.firstChild) return; // keep the user's selection
    drawnConfig = text;
    replace(details.config, configView(job.config || {}));
  }

  async function loadLog() {
    try {
      const text = await get(jobPath(jobId, "files/worker.log"));
      const lines = String(text).split("\n");
      details.log.textContent = lines.slice(-400).join("\n") || "(empty)";
    } catch (error) {
      details.log.textContent = `No worker log (${error.message}).`;
    }
  }

  async function pollDetails() {
    const eventQuery = lastEventSeq === null ? "" : `?after=${lastEventSeq}`;
    const [checkpoints, fresh] = await Promise.all([
      get(jobPath(jobId, "checkpoints")),
      get(jobPath(jobId, `events${eventQuery}`)),
    ]);
    if (disposed || tab !== "details") return;
    for (const event of fresh.data || []) {
      events.push(event);
      lastEventSeq = Math.max(lastEventSeq ?? -Infinity, event.seq);
    }
    replace(
      details.events,
      events.length
        ? [...events].reverse().map((event) =>
            h(
              "li",
              { class: ["event", `event-${String(event.level || "info").toLowerCase()}`] },
              h("span", { class: "event-time", title: event.time }, datetime(event.time)),
              h("span", { class: "event-level" }, event.level || "info"),
              h("span", { class: "event-message" }, event.message),
            ),
          )
        : h("li", { class: "muted" }, "No events yet."),
    );
    const list = checkpoints.data || [];
    replace(
      details.checkpoints,
      list.length
        ? h(
            "table",
            { class: "table compact" },
            tableHead("Step", ["Train reward", "num"], ["Val reward", "num"], "Saved", "Path"),
            h(
              "tbody",
              null,
              list.map((c) =>
                h(
                  "tr",
                  null,
                  h("td", null, String(c.step)),
                  h("td", { class: "num" }, num(c.metrics?.["reward/mean"])),
                  h("td", { class: "num" }, num(c.metrics?.["val/reward/mean"])),
                  h("td", null, datetime(c.created_at)),
                  h("td", { class: "path" }, h("code", null, c.path || "")),
                ),
              ),
            ),
          )
        : h("div", { class: "muted" }, "No checkpoints yet."),
    );
  }

  // ---- tabs and polling ---------------------------------------------------------------

  if (tab === "metrics") {
    alertsBox = h("div", { class: "alerts-box" });
    replace(body, alertsBox);
    grid = new ChartGrid(body);
    drawMetrics();
  } else if (tab === "rollouts") {
    rollouts = renderRollouts(body, jobId);
  }

  async function tick() {
    const previous = job?.status;
    job = await get(jobPath(jobId));
    if (disposed) return;
    if (previous && ENDED.has(previous) && !ENDED.has(job.status)) feed.reset(); // resumed
    const drawn = JSON.stringify(job);
    if (drawn !== lastDrawn) drawHead(); // unchanged: keep any text selection in the header
    lastDrawn = drawn;
    if (tab === "details" && !details.config) buildDetails();
    else drawConfig();
    if (tab === "metrics" && !ENDED.has(job.status) && !feed.source && Date.now() >= streamAfter) {
      const renew = streamAfter > 0; // the last stream broke: its cookie may have expired
      streamAfter = Date.now() + RESTREAM_MS;
      feed.follow((count) => count && !disposed && drawMetrics(), renew).catch(() => {});
    }
    const fresh = feed.live ? 0 : await feed.poll();
    if (disposed) return;
    if (fresh || !grid?.charts.size) drawMetrics();
    if (tab === "rollouts" && rollouts && !(rolloutsSettled && ENDED.has(job.status))) {
      const ended = ENDED.has(job.status); // read before: the last steps precede the end
      await rollouts.refresh();
      rolloutsSettled = ended;
    }
    if (tab === "details") await pollDetails();
  }

  function notFound() {
    replace(
      head,
      h("h1", null, "Job not found"),
      h(
        "p",
        { class: "muted" },
        `There is no job ${jobId}; it may have been deleted. `,
        h("a", { href: "#/" }, "Back to the job list"),
      ),
    );
    replace(body);
    tabs.hidden = true;
    stop();
  }

  async function guardedTick() {
    try {
      await tick();
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) notFound();
      else throw error;
    }
  }

  const stop = every(guardedTick, () => (job && ENDED.has(job.status) ? IDLE_MS : LIVE_MS));
  guardedTick().catch((error) => handleError(error));
  return () => {
    disposed = true;
    stop();
    feed.dispose();
    grid?.destroy();
    rollouts?.dispose();
  };
}

/**
 * "12,345 / 9,876": the tokens a job sampled and trained on so far (its `usage`).
 * @param {Object<string, number>} usage
 * @returns {string}
 */
function usageText(usage) {
  return `${usage.sampled_tokens.toLocaleString()} / ${(usage.trained_tokens ?? 0).toLocaleString()}`;
}
