/**
 * The job list (`#/`): every job with its status, sub-step, progress and latest rewards,
 * refreshed every few seconds. Rows open the job; checkboxes select jobs to compare.
 * @module pages/jobs
 */

import { get } from "../api.js";
import { h, replace } from "../dom.js";
import { ago, currentSubStep, datetime, num, progressBar, statusBadge } from "../format.js";
import { every, handleError, setConnection } from "../shell.js";

const REFRESH_MS = 3000;
const STATUSES = ["InProgress", "Queued", "Stopping", "Completed", "Stopped", "Failed"];

/**
 * Render the job list into `root`.
 * @param {HTMLElement} root
 * @returns {function(): void} dispose (stops the refresh)
 */
export function renderJobs(root) {
  const selected = new Set();
  let jobs = null;
  let statusFilter = "";

  const compareButton = h(
    "button",
    {
      type: "button",
      class: "button",
      id: "compare-button",
      disabled: true,
      onclick: () => {
        const ids = Array.from(selected).map(encodeURIComponent).join(",");
        window.location.hash = `#/compare?ids=${ids}`;
      },
    },
    "Compare",
  );
  const filterSelect = h(
    "select",
    {
      class: "select",
      "aria-label": "Filter by status",
      onchange: (event) => {
        statusFilter = event.target.value;
        draw();
      },
    },
    h("option", { value: "" }, "All statuses"),
    STATUSES.map((status) =>
      h("option", { value: status }, status === "InProgress" ? "In progress" : status),
    ),
  );
  const summary = h("span", { class: "muted" });
  const body = h("div", { class: "card table-card" }, h("div", { class: "loading" }, "Loading jobs…"));

  replace(
    root,
    h(
      "div",
      { class: "page" },
      h(
        "div",
        { class: "page-head" },
        h("div", null, h("h1", null, "Jobs"), summary),
        h("div", { class: "page-actions" }, filterSelect, compareButton),
      ),
      body,
    ),
  );

  function updateCompare() {
    compareButton.disabled = selected.size < 2;
    compareButton.textContent = selected.size >= 2 ? `Compare ${selected.size} jobs` : "Compare";
    compareButton.title = selected.size < 2 ? "Select two or more jobs" : "";
  }

  function row(job) {
    const open = () => {
      window.location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    };
    const checkbox = h("input", {
      type: "checkbox",
      class: "select-job",
      "aria-label": `Select ${job.name || job.id}`,
      checked: selected.has(job.id),
      onclick: (event) => event.stopPropagation(),
      onchange: (event) => {
        if (event.target.checked) selected.add(job.id);
        else selected.delete(job.id);
        updateCompare();
      },
    });
    const latest = job.latest || {};
    return h(
      "tr",
      {
        class: "job-row",
        dataset: { id: job.id, status: job.status },
        tabindex: "0",
        onclick: open,
        onkeydown: (event) => {
          if (event.key === "Enter") open();
        },
      },
      h(
        "td",
        {
          class: "cell-check",
          onclick: (event) => {
            event.stopPropagation(); // a near miss of the checkbox must not open the job
            if (event.target !== checkbox) checkbox.click();
          },
        },
        checkbox,
      ),
      h(
        "td",
        { class: "cell-name" },
        h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, class: "job-name" }, job.name || job.id),
        h("div", { class: "job-id" }, job.id),
      ),
      h("td", null, statusBadge(job.status)),
      h("td", { class: "cell-substep" }, currentSubStep(job)),
      h("td", { class: "cell-progress" }, progressBar(job.progress)),
      h("td", { class: "num" }, num(latest["reward/mean"])),
      h("td", { class: "num" }, num(latest["val/reward/mean"])),
      h("td", { class: "cell-time", title: datetime(job.created_at) }, ago(job.created_at)),
    );
  }

  function draw() {
    if (!jobs) return;
    const ids = new Set(jobs.map((j) => j.id));
    for (const id of selected) if (!ids.has(id)) selected.delete(id);
    updateCompare();
    const running = jobs.filter((j) => j.status === "InProgress").length;
    const count = `${jobs.length} job${jobs.length === 1 ? "" : "s"}`;
    summary.textContent = running ? `${count} · ${running} running` : count;
    if (!jobs.length) {
      replace(
        body,
        h(
          "div",
          { class: "empty" },
          h("h2", null, "No jobs yet"),
          h(
            "p",
            { class: "muted" },
            "Create one with ",
            h("code", null, "POST /api/jobs"),
            ", the OpenAI or Bedrock-compatible API; it will show up here.",
          ),
        ),
      );
      return;
    }
    const shown = statusFilter ? jobs.filter((j) => j.status === statusFilter) : jobs;
    replace(
      body,
      h(
        "div",
        { class: "table-scroll" },
        h(
          "table",
          { class: "table jobs-table" },
          h(
            "thead",
            null,
            h(
              "tr",
              null,
              h("th", { class: "cell-check" }, h("span", { class: "sr-only" }, "Select")),
              h("th", null, "Name"),
              h("th", null, "Status"),
              h("th", null, "Sub-step"),
              h("th", null, "Progress"),
              h("th", { class: "num" }, "Train reward"),
              h("th", { class: "num" }, "Val reward"),
              h("th", null, "Created"),
            ),
          ),
          h(
            "tbody",
            null,
            shown.length
              ? shown.map(row)
              : h("tr", null, h("td", { colspan: "8", class: "muted center" }, "No job with this status")),
          ),
        ),
      ),
    );
  }

  async function refresh() {
    const answer = await get("/api/jobs");
    jobs = answer.data || [];
    setConnection(true);
    draw();
  }

  refresh().catch((error) => handleError(error));
  return every(refresh, REFRESH_MS);
}
