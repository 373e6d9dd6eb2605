/**
 * Small shared views: the alert list, the config (TOML-style) view and the chart grid that
 * keeps one {@link LineChart} per chart id across updates.
 * @module views
 */

import { LineChart } from "./chart.js";
import { h } from "./dom.js";

/**
 * The alerts panel: one row per alert, or a calm "no problems" line.
 * @param {import("./alerts.js").Alert[]} alerts
 * @param {number} rowCount how many metrics lines were checked
 * @returns {HTMLElement}
 */
export function alertList(alerts, rowCount) {
  if (!alerts.length) {
    return h(
      "div",
      { class: "alerts alerts-ok", dataset: { count: "0" } },
      h("span", { class: "alert-icon ok", "aria-hidden": "true" }, "✓"),
      rowCount
        ? "No health alerts: reward, entropy, lengths, grader errors and learning signal " +
          `look fine (${rowCount} steps checked).`
        : "Health checks run once the first metrics arrive.",
    );
  }
  return h(
    "div",
    { class: "alerts", dataset: { count: String(alerts.length) } },
    alerts.map((alert) =>
      h(
        "div",
        { class: ["alert", `alert-${alert.severity}`], dataset: { alert: alert.id }, role: "alert" },
        h(
          "span",
          { class: "alert-icon", "aria-hidden": "true" },
          alert.severity === "critical" ? "!" : "▲",
        ),
        h(
          "div",
          { class: "alert-text" },
          h(
            "div",
            { class: "alert-title" },
            h("span", { class: "alert-severity" }, alert.severity),
            alert.title,
          ),
          h("div", { class: "alert-detail" }, alert.detail),
          h("div", { class: "alert-action" }, h("strong", null, "What to do: "), alert.action),
        ),
      ),
    ),
  );
}

function tomlValue(value) {
  if (typeof value === "string") return JSON.stringify(value);
  if (value === null || value === undefined) return '""';
  if (Array.isArray(value)) return `[${value.map(tomlValue).join(", ")}]`;
  if (typeof value === "object") {
    return `{ ${Object.entries(value).map(([k, v]) => `${k} = ${tomlValue(v)}`).join(", ")} }`;
  }
  return String(value);
}

/**
 * A config object rendered as TOML: top-level scalars first, then one `[section]` per table.
 * @param {Object} config the resolved job config as plain data
 * @returns {string}
 */
export function toToml(config) {
  const lines = [];
  const tables = [];
  for (const [key, value] of Object.entries(config || {})) {
    if (value && typeof value === "object" && !Array.isArray(value)) tables.push([key, value]);
    else lines.push(`${key} = ${tomlValue(value)}`);
  }
  for (const [name, table] of tables) {
    if (lines.length) lines.push("");
    lines.push(`[${name}]`);
    for (const [key, value] of Object.entries(table)) lines.push(`${key} = ${tomlValue(value)}`);
  }
  return lines.join("\n");
}

/**
 * A TOML config view with simple syntax coloring (built from text nodes, never HTML).
 * @param {Object} config
 * @returns {HTMLElement}
 */
export function configView(config) {
  const pre = h("pre", { class: "code config" });
  for (const line of toToml(config).split("\n")) {
    const section = line.match(/^\[(.+)\]$/);
    const pair = line.match(/^([^=]+?) = (.*)$/);
    if (section) pre.appendChild(h("span", { class: "tok-section" }, line));
    else if (pair) {
      pre.appendChild(h("span", { class: "tok-key" }, pair[1]));
      pre.appendChild(document.createTextNode(" = "));
      let kind = "tok-other";
      if (pair[2].startsWith('"')) kind = "tok-string";
      else if (/^[\d.eE+-]+$/.test(pair[2])) kind = "tok-number";
      pre.appendChild(h("span", { class: kind }, pair[2]));
    } else pre.appendChild(document.createTextNode(line));
    pre.appendChild(document.createTextNode("\n"));
  }
  return pre;
}

/** A grid of charts keyed by id: charts are created once, updated in place, removed when gone. */
export class ChartGrid {
  /** @param {HTMLElement} container */
  constructor(container) {
    this.element = h("div", { class: "chart-grid" });
    container.appendChild(this.element);
    this.charts = new Map();
  }

  /**
   * Show exactly these charts, in this order, with this data.
   * @param {Array<{id: string, title: string, subtitle?: string, zero?: boolean, yMax?: number,
   *   data: {series: Object[], bands?: Object[]}}>} specs
   */
  update(specs) {
    const wanted = new Set(specs.map((spec) => spec.id));
    for (const [id, chart] of this.charts) {
      if (!wanted.has(id)) {
        chart.destroy();
        this.charts.delete(id);
      }
    }
    specs.forEach((spec, i) => {
      let chart = this.charts.get(spec.id);
      if (!chart) {
        chart = new LineChart(this.element, spec);
        this.charts.set(spec.id, chart);
      }
      const here = this.element.children[i];
      if (here !== chart.card) this.element.insertBefore(chart.card, here || null); // keep order
      chart.update(spec.data);
    });
  }

  /** Remove every chart. */
  destroy() {
    for (const chart of this.charts.values()) chart.destroy();
    this.charts.clear();
    this.element.remove();
  }
}

/**
 * A table header row; a label given as [text, "num"] is right-aligned.
 * @param {...(string|string[])} labels
 * @returns {HTMLElement} a thead element
 */
export function tableHead(...labels) {
  return h(
    "thead",
    null,
    h(
      "tr",
      null,
      labels.map((label) =>
        Array.isArray(label) ? h("th", { class: label[1] }, label[0]) : h("th", null, label),
      ),
    ),
  );
}

/**
 * A titled card.
 * @param {string} title
 * @param {...any} children
 * @returns {HTMLElement}
 */
export function card(title, ...children) {
  return h("section", { class: "card" }, h("h2", { class: "card-title" }, title), ...children);
}
