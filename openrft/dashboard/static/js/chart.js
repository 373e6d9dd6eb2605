/**
 * A small SVG line chart: several series, optional shaded bands (e.g. mean ± std), nice axis
 * ticks, a legend that toggles series, and a hover tooltip with the step and every value.
 * It re-renders from data on `update()` and on resize; no chart library is involved.
 * @module chart
 */

import { h, replace, s } from "./dom.js";

/**
 * @typedef {Object} Series
 * @property {string} name legend label
 * @property {string} color CSS color
 * @property {Array<Array<number|null>>} points [x, y] pairs sorted by x; a null y is a gap
 * @property {boolean} [dashed] dashed line
 * @property {boolean} [faint] thinner, lighter line (secondary series such as min/max)
 * @property {boolean} [markers] always draw point markers
 */

/**
 * @typedef {Object} Band
 * @property {string} name legend label, e.g. "mean ± std"
 * @property {string} color CSS color (drawn translucent)
 * @property {Array<Array<number|null>>} points [x, low, high] triples sorted by x
 */

const MARGIN = { top: 10, right: 16, bottom: 26, left: 48 };
const MARKER_LIMIT = 30; // draw point markers when a series has at most this many points
const MAX_PATH_POINTS = 3000; // longer series are thinned for drawing (not for the tooltip)

/**
 * "Nice" tick values (1, 2, 5 x 10^k steps) covering [lo, hi].
 * @param {number} lo
 * @param {number} hi
 * @param {number} count wanted number of ticks (approximate)
 * @returns {{ticks: number[], step: number}}
 */
export function niceTicks(lo, hi, count) {
  if (!(hi > lo)) return { ticks: [lo], step: 1 };
  const raw = (hi - lo) / Math.max(1, count);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((v) => v >= raw) || raw;
  const ticks = [];
  const start = Math.ceil(lo / step - 1e-9) * step;
  for (let v = start; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return { ticks, step };
}

/**
 * Format a tick value with as many decimals as the tick spacing needs.
 * @param {number} value
 * @param {number} step tick spacing
 * @returns {string}
 */
export function formatTick(value, step) {
  const abs = Math.abs(value);
  if (abs >= 1e6) return `${Number((value / 1e6).toPrecision(3))}M`;
  if (abs >= 1e4) return `${Number((value / 1e3).toPrecision(3))}k`;
  const decimals = Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9)));
  return value.toFixed(step >= 1 ? 0 : decimals).replace(/^-0(\.0*)?$/, "0");
}

/**
 * A value for the tooltip (4 significant digits).
 * @param {number|null} value
 * @returns {string}
 */
export function formatValue(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(3);
  return String(Number(value.toPrecision(4)));
}

function finite(v) {
  return typeof v === "number" && Number.isFinite(v);
}

/** Split points into runs without gaps: [[x, y], ...] -> [[[x, y], ...], ...]. */
function runs(points, yIndex = 1) {
  const out = [];
  let current = [];
  for (const p of points) {
    if (finite(p[0]) && finite(p[yIndex]) && (yIndex === 1 || finite(p[2]))) current.push(p);
    else if (current.length) {
      out.push(current);
      current = [];
    }
  }
  if (current.length) out.push(current);
  return out;
}

function thin(points) {
  if (points.length <= MAX_PATH_POINTS) return points;
  const stride = Math.ceil(points.length / MAX_PATH_POINTS);
  return points.filter((_, i) => i % stride === 0 || i === points.length - 1);
}

/** An SVG line chart bound to a container element. */
export class LineChart {
  /**
   * @param {HTMLElement} container where the chart card is placed
   * @param {Object} options
   * @param {string} options.title chart title
   * @param {string} [options.subtitle] small text under the title (units, hints)
   * @param {number} [options.height] plot height in pixels (default 200)
   * @param {boolean} [options.zero] always include y = 0
   * @param {number} [options.yMax] always include this y (e.g. 1 for ratios)
   * @param {string} [options.id] sets data-chart on the card (for tests and styling)
   * @param {boolean} [options.alwaysLegend] show the legend even for a single series
   */
  constructor(container, options) {
    this.options = { height: 200, ...options };
    this.series = [];
    this.bands = [];
    this.hidden = new Set();
    this.hoverX = null;
    this.legend = h("div", { class: "legend" });
    this.plot = h("div", { class: "chart-plot" });
    this.tooltip = h("div", { class: "tooltip", hidden: true });
    this.card = h(
      "section",
      { class: "card chart-card", dataset: { chart: options.id || "" } },
      h(
        "header",
        { class: "chart-head" },
        h("h3", null, options.title),
        options.subtitle ? h("span", { class: "chart-sub" }, options.subtitle) : null,
      ),
      this.legend,
      this.plot,
    );
    container.appendChild(this.card);
    this.width = 0;
    this.resizer = new ResizeObserver(() => {
      const width = this.plot.clientWidth;
      if (width && Math.abs(width - this.width) > 1) this.render();
    });
    this.resizer.observe(this.plot);
  }

  /**
   * Set the data and redraw.
   * @param {{series?: Series[], bands?: Band[]}} data
   */
  update({ series = [], bands = [] }) {
    this.series = series;
    this.bands = bands;
    this.renderLegend();
    this.render();
  }

  /** Stop observing size changes and remove the card. */
  destroy() {
    this.resizer.disconnect();
    this.card.remove();
  }

  renderLegend() {
    const items = [
      ...this.bands.map((b) => ({ name: b.name, color: b.color, band: true })),
      ...this.series.map((d) => ({ name: d.name, color: d.color, dashed: d.dashed })),
    ];
    if (items.length < (this.options.alwaysLegend ? 1 : 2)) {
      replace(this.legend);
      return;
    }
    replace(
      this.legend,
      items.map((item) => {
        const swatch = h("span", {
          class: ["swatch", item.band && "swatch-band", item.dashed && "swatch-dashed"],
        });
        swatch.style.setProperty("--c", item.color);
        return h(
          "button",
          {
            type: "button",
            class: ["legend-item", this.hidden.has(item.name) && "off"],
            title: "Show or hide",
            onclick: () => {
              if (this.hidden.has(item.name)) this.hidden.delete(item.name);
              else this.hidden.add(item.name);
              this.renderLegend();
              this.render();
            },
          },
          swatch,
          item.name,
        );
      }),
    );
  }

  visibleSeries() {
    return this.series.filter((d) => !this.hidden.has(d.name));
  }

  visibleBands() {
    return this.bands.filter((b) => !this.hidden.has(b.name));
  }

  /** The x and y domains of the visible data, or null when there is nothing to draw. */
  domains() {
    const xs = [];
    const ys = [];
    for (const d of this.visibleSeries()) {
      for (const [x, y] of d.points) {
        if (finite(x) && finite(y)) {
          xs.push(x);
          ys.push(y);
        }
      }
    }
    for (const b of this.visibleBands()) {
      for (const [x, lo, hi] of b.points) {
        if (finite(x) && finite(lo) && finite(hi)) {
          xs.push(x);
          ys.push(lo, hi);
        }
      }
    }
    if (!xs.length) return null;
    if (this.options.zero) ys.push(0);
    if (finite(this.options.yMax)) ys.push(this.options.yMax);
    let x0 = Math.min(...xs);
    let x1 = Math.max(...xs);
    if (x0 === x1) {
      x0 -= 1;
      x1 += 1;
    }
    let y0 = Math.min(...ys);
    let y1 = Math.max(...ys);
    if (y0 === y1 && y0 === 0) y1 = 1; // all zero: show a 0..1 axis
    else if (y0 === y1) {
      const pad = Math.abs(y0) * 0.1;
      y1 += pad;
      y0 = y0 >= 0 && y0 - pad < 0 ? 0 : y0 - pad; // never dip below 0 for non-negative data
    }
    const xs_ = Array.from(new Set(xs)).sort((a, b) => a - b);
    return { x0, x1, y0, y1, xValues: xs_ };
  }

  render() {
    const width = this.plot.clientWidth || 480;
    this.width = width;
    const height = this.options.height;
    const domain = this.domains();
    if (!domain) {
      replace(this.plot, h("div", { class: "chart-empty" }, "No data yet"));
      this.svg = null;
      return;
    }
    const yTicks = niceTicks(domain.y0, domain.y1, Math.max(3, Math.round(height / 45)));
    const y0 = Math.min(domain.y0, yTicks.ticks[0]);
    const y1 = Math.max(domain.y1, yTicks.ticks[yTicks.ticks.length - 1]);
    const labels = yTicks.ticks.map((t) => formatTick(t, yTicks.step));
    const left = Math.max(MARGIN.left, 12 + 7 * Math.max(...labels.map((l) => l.length)));
    const plotW = Math.max(40, width - left - MARGIN.right);
    const plotH = height - MARGIN.top - MARGIN.bottom;
    const sx = (x) => left + ((x - domain.x0) / (domain.x1 - domain.x0)) * plotW;
    const sy = (y) => MARGIN.top + (1 - (y - y0) / (y1 - y0 || 1)) * plotH;
    this.scale = { sx, sy, left, plotW, plotH, domain };

    const svg = s("svg", {
      class: "chart",
      width,
      height,
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": this.options.title,
    });

    // Grid and y axis.
    const grid = s("g", { class: "grid" });
    yTicks.ticks.forEach((t, i) => {
      const y = sy(t).toFixed(1);
      grid.appendChild(s("line", { x1: left, x2: left + plotW, y1: y, y2: y }));
      grid.appendChild(
        s("text", { x: left - 8, y, class: "tick tick-y", "dominant-baseline": "middle" }, labels[i]),
      );
    });
    // X axis: integer steps.
    const xTicks = niceTicks(domain.x0, domain.x1, Math.max(2, Math.round(plotW / 90)));
    for (const t of xTicks.ticks) {
      if (!Number.isInteger(t)) continue;
      const x = sx(t).toFixed(1);
      grid.appendChild(
        s("line", { x1: x, x2: x, y1: MARGIN.top + plotH, y2: MARGIN.top + plotH + 4 }),
      );
      grid.appendChild(
        s("text", { x, y: height - 6, class: "tick tick-x", "text-anchor": "middle" }, String(t)),
      );
    }
    grid.appendChild(
      s("line", {
        class: "axis",
        x1: left,
        x2: left + plotW,
        y1: MARGIN.top + plotH,
        y2: MARGIN.top + plotH,
      }),
    );
    svg.appendChild(grid);

    // Bands, then lines, then markers.
    for (const band of this.visibleBands()) {
      for (const run of runs(thin(band.points), 2)) {
        const upper = run.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[2]).toFixed(1)}`);
        const lower = run.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).reverse();
        const d = `M${upper.join("L")}L${lower.join("L")}Z`;
        svg.appendChild(s("path", { class: "band", d, fill: band.color }));
      }
    }
    for (const series of this.visibleSeries()) {
      const pieces = runs(thin(series.points));
      const count = series.points.filter((p) => finite(p[0]) && finite(p[1])).length;
      const d = pieces
        .map((run) => `M${run.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("L")}`)
        .join("");
      svg.appendChild(
        s("path", {
          class: ["series", series.faint && "faint", series.dashed && "dashed"],
          d: d || "M0,0",
          stroke: series.color,
          dataset: { name: series.name, points: String(count) },
        }),
      );
      const markers = series.markers || count <= MARKER_LIMIT;
      for (const run of pieces) {
        if (!markers && run.length > 1) continue;
        for (const p of run) {
          svg.appendChild(
            s("circle", {
              class: "marker",
              cx: sx(p[0]).toFixed(1),
              cy: sy(p[1]).toFixed(1),
              r: series.faint ? 1.8 : 2.6,
              fill: series.color,
            }),
          );
        }
      }
    }

    // Hover layer.
    this.guide = s("g", { class: "guide", visibility: "hidden" });
    svg.appendChild(this.guide);
    const overlay = s("rect", {
      class: "overlay",
      x: left,
      y: MARGIN.top,
      width: plotW,
      height: plotH,
      fill: "transparent",
    });
    overlay.addEventListener("pointermove", (event) => this.hover(event));
    overlay.addEventListener("pointerleave", () => this.unhover());
    svg.appendChild(overlay);

    this.svg = svg;
    replace(this.plot, svg, this.tooltip);
    if (this.hoverX !== null) this.showAt(this.hoverX);
  }

  hover(event) {
    const { left, plotW, domain } = this.scale;
    const rect = this.svg.getBoundingClientRect();
    const px = event.clientX - rect.left;
    const x = domain.x0 + ((px - left) / plotW) * (domain.x1 - domain.x0);
    let nearest = domain.xValues[0];
    for (const v of domain.xValues) if (Math.abs(v - x) < Math.abs(nearest - x)) nearest = v;
    this.hoverX = nearest;
    this.showAt(nearest);
  }

  unhover() {
    this.hoverX = null;
    this.tooltip.hidden = true;
    if (this.guide) this.guide.setAttribute("visibility", "hidden");
  }

  /**
   * Show the guide line and tooltip at step `x`.
   * @param {number} x
   */
  showAt(x) {
    const { sx, sy, plotH } = this.scale;
    const px = sx(x);
    replace(
      this.guide,
      s("line", { x1: px, x2: px, y1: MARGIN.top, y2: MARGIN.top + plotH }),
    );
    const rows = [];
    for (const band of this.visibleBands()) {
      const p = band.points.find((q) => q[0] === x);
      if (p && finite(p[1]) && finite(p[2])) {
        rows.push(tooltipRow(band.color, band.name, `${formatValue(p[1])} – ${formatValue(p[2])}`, true));
      }
    }
    for (const series of this.visibleSeries()) {
      const p = series.points.find((q) => q[0] === x);
      if (!p || !finite(p[1])) continue;
      rows.push(tooltipRow(series.color, series.name, formatValue(p[1])));
      this.guide.appendChild(
        s("circle", { cx: px, cy: sy(p[1]), r: 3.5, fill: series.color, class: "guide-dot" }),
      );
    }
    if (!rows.length) {
      this.unhover();
      this.hoverX = x;
      return;
    }
    this.guide.setAttribute("visibility", "visible");
    replace(this.tooltip, h("div", { class: "tooltip-title" }, `step ${x}`), rows);
    this.tooltip.hidden = false;
    const tipWidth = this.tooltip.offsetWidth;
    const flip = px + 14 + tipWidth > this.width;
    this.tooltip.style.left = `${flip ? px - 14 - tipWidth : px + 14}px`;
    this.tooltip.style.top = `${MARGIN.top}px`;
  }
}

function tooltipRow(color, name, value, band = false) {
  const swatch = h("span", { class: ["swatch", band && "swatch-band"] });
  swatch.style.setProperty("--c", color);
  return h(
    "div",
    { class: "tooltip-row" },
    swatch,
    h("span", { class: "tooltip-name" }, name),
    h("span", { class: "tooltip-value" }, value),
  );
}
