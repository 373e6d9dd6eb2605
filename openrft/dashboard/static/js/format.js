/**
 * Formatting of numbers, times and job statuses for display.
 * @module format
 */

import { h } from "./dom.js";

/**
 * A compact number: 3 significant digits, thousands separators, "–" for null.
 * @param {number|null|undefined} value
 * @param {number} [digits] significant digits
 * @returns {string}
 */
export function num(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (!Number.isFinite(value)) return value > 0 ? "∞" : "-∞";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(digits - 1);
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  return Number(value.toPrecision(digits)).toLocaleString("en-US", { maximumFractionDigits: 6 });
}

/**
 * A percentage from a 0..1 fraction.
 * @param {number|null|undefined} value
 * @returns {string}
 */
export function pct(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return `${(value * 100).toFixed(value < 0.1 && value > 0 ? 1 : 0)}%`;
}

/**
 * "3 min ago"-style relative time.
 * @param {string|null} iso ISO 8601 time
 * @param {number} [now] milliseconds since the epoch (for tests)
 * @returns {string}
 */
export function ago(iso, now = Date.now()) {
  if (!iso) return "–";
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return String(iso);
  const seconds = Math.max(0, Math.round((now - then) / 1000));
  if (seconds < 45) return "just now";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 24) return `${hours} h ago`;
  return new Date(then).toLocaleDateString(undefined, { month: "short", day: "numeric" });
}

/**
 * A local date and time, e.g. "Nov 21, 15:00:03".
 * @param {string|null} iso
 * @returns {string}
 */
export function datetime(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toLocaleString(undefined, {
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
}

/**
 * A duration between two ISO times (or until now), e.g. "4m 12s".
 * @param {string|null} start
 * @param {string|null} end
 * @returns {string}
 */
export function duration(start, end) {
  if (!start) return "–";
  const ms = (end ? Date.parse(end) : Date.now()) - Date.parse(start);
  if (!Number.isFinite(ms) || ms < 0) return "–";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

/** Statuses after which a job no longer changes by itself. */
export const ENDED = new Set(["Completed", "Failed", "Stopped"]);

/**
 * A colored status badge.
 * @param {string} status e.g. "InProgress"
 * @returns {HTMLElement}
 */
export function statusBadge(status) {
  const label = status === "InProgress" ? "In progress" : status || "Unknown";
  return h("span", { class: ["badge", `badge-${(status || "unknown").toLowerCase()}`] }, label);
}

export const SUB_STEPS = [
  ["validation", "Validation"],
  ["dataProcessing", "Data processing"],
  ["training", "Training"],
];

/**
 * The sub-step a job is in (or ended in), e.g. "Training" or "Validation failed".
 * @param {{status?: string, status_details?: Object<string,string>}} job
 * @returns {string}
 */
export function currentSubStep(job) {
  const details = job.status_details || {};
  for (const [key, label] of SUB_STEPS) {
    const state = details[key];
    if (state === "InProgress") return label;
    if (state === "Stopping") return `${label} (stopping)`;
    if (state === "Failed") return `${label} failed`;
    if (state === "Stopped") return `${label} stopped`;
  }
  const states = SUB_STEPS.map(([key]) => details[key]);
  if (states.every((state) => state === "Completed")) {
    return job.status === "InProgress" ? "Finishing" : "Done"; // saving the final weights
  }
  if (states.every((state) => !state || state === "NotStarted")) return "Not started";
  const done = SUB_STEPS.filter(([key]) => details[key] === "Completed").map(([, l]) => l);
  return done.length ? `${done[done.length - 1]} done` : "–";
}

/**
 * A progress bar with "step / total" text.
 * @param {{step?: number, total_steps?: number}|null} progress
 * @returns {HTMLElement}
 */
export function progressBar(progress) {
  const step = progress?.step ?? 0;
  const total = progress?.total_steps ?? 0;
  const fraction = total > 0 ? Math.min(1, step / total) : 0;
  const bar = h("span", { class: "progress-fill" });
  bar.style.width = `${(fraction * 100).toFixed(1)}%`;
  return h(
    "span",
    { class: "progress", title: `${step} of ${total || "?"} steps` },
    h("span", { class: "progress-track" }, bar),
    h("span", { class: "progress-text" }, total ? `${step} / ${total}` : `${step}`),
  );
}
