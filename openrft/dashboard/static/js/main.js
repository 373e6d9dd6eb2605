/**
 * Entry point: takes the token from the URL fragment, opens a session (the cookie that
 * authorizes event streams; it also says whether the token is read-only), then routes on the
 * hash: `#/` job list, `#/jobs/<id>[/rollouts|/details]` job page, `#/compare?ids=a,b` compare
 * page. A token limited to one job always shows that job.
 * @module main
 */

import { accessJob, closeSession, getToken, openSession, setToken, takeTokenFromUrl } from "./api.js";
import { h, replace } from "./dom.js";
import { renderCompare } from "./pages/compare.js";
import { renderJob } from "./pages/job.js";
import { renderJobs } from "./pages/jobs.js";
import { handleError, onRerender, showAuth, updateChrome } from "./shell.js";

let dispose = () => {};
let generation = 0; // a newer route() supersedes a pending one

/**
 * Parse a location hash into a route.
 * @param {string} hash e.g. "#/jobs/job-1/rollouts"
 * @returns {{page: string, id?: string, tab?: string, ids?: string[]}}
 */
export function parseRoute(hash) {
  const [path, query = ""] = hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "jobs" && parts[1]) {
    const tab = ["rollouts", "details"].includes(parts[2]) ? parts[2] : "metrics";
    return { page: "job", id: parts[1], tab };
  }
  if (parts[0] === "compare") {
    const ids = (new URLSearchParams(query).get("ids") || "")
      .split(",")
      .map((id) => id.trim())
      .filter(Boolean);
    return { page: "compare", ids: Array.from(new Set(ids)) };
  }
  return { page: "jobs" };
}

async function route() {
  dispose();
  dispose = () => {};
  const current = ++generation;
  const app = document.getElementById("app");
  updateChrome();
  if (!getToken()) {
    showAuth();
    return;
  }
  try {
    await openSession();
  } catch (error) {
    if (current === generation) handleError(error);
    return;
  }
  if (current !== generation) return;
  updateChrome();
  const where = parseRoute(window.location.hash);
  const only = accessJob();
  if (only && !(where.page === "job" && where.id === only)) {
    window.location.hash = `#/jobs/${encodeURIComponent(only)}`; // hashchange routes again
    return;
  }
  document.querySelectorAll("[data-nav]").forEach((a) => {
    a.classList.toggle("active", a.dataset.nav === where.page);
  });
  document.title = "openrft";
  const root = h("div");
  replace(app, root);
  if (where.page === "job") dispose = renderJob(root, where.id, where.tab);
  else if (where.page === "compare") dispose = renderCompare(root, where.ids);
  else dispose = renderJobs(root);
}

takeTokenFromUrl();
onRerender(route);
window.addEventListener("hashchange", () => {
  takeTokenFromUrl(); // a pasted "#token=..." link while the page is open
  route();
});
document.getElementById("signout").addEventListener("click", async () => {
  await closeSession();
  setToken(null);
  route();
});
route();
