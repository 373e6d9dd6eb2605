/**
 * The compare page (`#/compare?ids=a,b,c`): the main metrics of several jobs on shared
 * charts, one colored series per job, refreshed while any of them runs.
 * @module pages/compare
 */

import { ApiError, get, jobPath } from "../api.js";
import { h, replace } from "../dom.js";
import { ENDED, num, progressBar, statusBadge } from "../format.js";
import { MetricsFeed, PALETTE, column, compareCharts } from "../metrics.js";
import { every, handleError } from "../shell.js";
import { ChartGrid, tableHead } from "../views.js";

const LIVE_MS = 3000;
const IDLE_MS = 10000;

/**
 * Legend names for jobs: the job name, with the id added where two names collide.
 * @param {Object[]} jobs
 * @returns {string[]}
 */
export function seriesNames(jobs) {
  const counts = new Map();
  for (const job of jobs) counts.set(job.name, (counts.get(job.name) || 0) + 1);
  return jobs.map((job) => {
    if (!job.name) return job.id;
    return counts.get(job.name) > 1 ? `${job.name} (${job.id})` : job.name;
  });
}

/**
 * Render the compare page.
 * @param {HTMLElement} root
 * @param {string[]} ids job ids
 * @returns {function(): void} dispose
 */
export function renderCompare(root, ids) {
  const feeds = ids.map((id) => new MetricsFeed(id));
  let jobs = ids.map((id) => ({ id, name: id, status: "" }));
  let disposed = false;

  const legend = h("div", { class: "card compare-jobs" });
  const page = h(
    "div",
    { class: "page" },
    h(
      "div",
      { class: "crumbs" },
      h("a", { href: "#/" }, "Jobs"),
      h("span", { class: "sep" }, "/"),
      "Compare",
    ),
    h("div", { class: "page-head" }, h("h1", null, `Compare ${ids.length} job${ids.length === 1 ? "" : "s"}`)),
    legend,
  );
  replace(root, page);
  const grid = new ChartGrid(page);

  if (ids.length < 1) {
    replace(legend, h("p", { class: "muted" }, "Select two or more jobs on the job list to compare them."));
  }

  function draw() {
    const names = seriesNames(jobs);
    const color = (i) => PALETTE[i % PALETTE.length];
    replace(
      legend,
      h(
        "table",
        { class: "table compact" },
        tableHead("Job", "Status", "Progress", ["Train reward", "num"], ["Val reward", "num"]),
        h(
          "tbody",
          null,
          jobs.map((job, i) => {
            const swatch = h("span", { class: "swatch" });
            swatch.style.setProperty("--c", color(i));
            return h(
              "tr",
              { dataset: { id: job.id } },
              h("td", null, swatch, " ", h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, names[i])),
              h("td", null, job.status ? statusBadge(job.status) : "–"),
              h("td", null, progressBar(job.progress)),
              h("td", { class: "num" }, num(job.latest?.["reward/mean"])),
              h("td", { class: "num" }, num(job.latest?.["val/reward/mean"])),
            );
          }),
        ),
      ),
    );
    const rowsPerJob = feeds.map((feed) => feed.rows);
    grid.update(
      compareCharts(rowsPerJob).map((spec) => ({
        ...spec,
        data: {
          series: feeds.map((feed, i) => ({
            name: names[i],
            color: color(i),
            markers: spec.markers,
            points: column(feed.rows, spec.key),
          })),
        },
      })),
    );
  }

  async function tick() {
    const answers = await Promise.all(
      ids.map((id, i) => {
        if (jobs[i].missing || (ENDED.has(jobs[i].status) && feeds[i].rows.length)) return jobs[i];
        return get(jobPath(id)).catch((error) => {
          if (error instanceof ApiError && error.status === 404) {
            return { id, name: `${id} (not found)`, status: "", missing: true };
          }
          throw error;
        });
      }),
    );
    await Promise.all(
      feeds.map((feed, i) => (answers[i] === jobs[i] || answers[i].missing ? 0 : feed.poll())),
    );
    if (disposed) return;
    jobs = answers;
    draw();
  }

  tick().catch((error) => handleError(error));
  const stop = every(tick, () => (jobs.every((j) => ENDED.has(j.status)) ? IDLE_MS : LIVE_MS));
  return () => {
    disposed = true;
    stop();
    grid.destroy();
  };
}
