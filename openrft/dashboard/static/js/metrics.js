/**
 * Metrics: incremental polling of a job's metrics.jsonl lines, and the chart definitions
 * (which keys each chart draws) shared by the job page and the compare page.
 * Keys are those of openrft/metrics/names.py.
 * @module metrics
 */

import { get, jobPath, openStream } from "./api.js";

/** Metric keys (openrft/metrics/names.py). */
export const K = {
  step: "step",
  reward: "reward/mean",
  rewardStd: "reward/std",
  rewardMin: "reward/min",
  rewardMax: "reward/max",
  zeroStd: "reward/frac_zero_std_groups",
  errorRate: "reward/error_rate",
  lengthMean: "completion/length_mean",
  lengthMax: "completion/length_max",
  truncated: "completion/truncated_ratio",
  entropy: "policy/entropy",
  kl: "policy/kl",
  clip: "policy/clip_ratio",
  loss: "loss/total",
  gradNorm: "optim/grad_norm",
  lr: "optim/lr",
  stepS: "time/step_s",
  rolloutS: "time/rollout_s",
  rewardS: "time/reward_s",
  rewardExposedS: "time/reward_exposed_s",
  rolloutWaitS: "time/rollout_wait_s",
  lagMean: "off_policy/lag_mean",
  lagMax: "off_policy/lag_max",
  lagDropped: "off_policy/dropped_groups",
  rolloutWorkers: "cluster/rollout_workers",
  rewardWorkers: "cluster/reward_workers",
  workerRestarts: "cluster/worker_restarts",
  updateS: "time/update_s",
  tokensPerS: "throughput/completion_tokens_per_s",
  samplerKl: "rollout/sampler_kl",
  samplerCorrected: "rollout/sampler_corrected_ratio",
  probeGap: "rollout/probe_logprob_gap",
  val: "val/reward/mean",
  valStd: "val/reward/std",
  valErrorRate: "val/reward/error_rate",
};

/** Distinct colors for series (compare page, reward components). */
export const PALETTE = [
  "#2457d6", "#e8710a", "#1e8e3e", "#8e44ad", "#d93025",
  "#12939a", "#c2185b", "#795548", "#7cb342", "#5f6368",
];

const BLUE = PALETTE[0];
const ORANGE = PALETTE[1];
const GREEN = PALETTE[2];
const PURPLE = PALETTE[3];
const RED = PALETTE[4];
const TEAL = PALETTE[5];
const GRAY = PALETTE[9];

const STANDARD_REWARD = new Set(["mean", "std", "min", "max", "frac_zero_std_groups", "error_rate"]);

/**
 * [step, value] pairs of the rows that carry `key` (a null value is kept, as a gap).
 * @param {Object[]} rows metrics lines
 * @param {string} key metric key
 * @returns {Array<Array<number|null>>}
 */
export function column(rows, key) {
  return rows.filter((r) => key in r).map((r) => [r.step, r[key] ?? null]);
}

/**
 * Whether any row has a non-null number for `key`.
 * @param {Object[]} rows
 * @param {string} key
 * @returns {boolean}
 */
export function hasValues(rows, key) {
  return rows.some((r) => typeof r[key] === "number" && Number.isFinite(r[key]));
}

/**
 * Reward component names: every `reward/<name>/mean` key that is not a standard statistic.
 * @param {Object[]} rows
 * @returns {string[]} sorted names
 */
export function componentNames(rows) {
  const names = new Set();
  for (const row of rows) {
    for (const key of Object.keys(row)) {
      const match = key.match(/^reward\/(.+)\/mean$/);
      if (match && !STANDARD_REWARD.has(match[1])) names.add(match[1]);
    }
  }
  return Array.from(names).sort();
}

/**
 * The charts of the job page. Each has an id, a title, chart options and `build(rows)`
 * returning `{series, bands}` for {@link LineChart#update}; `show(rows)` hides empty charts.
 * @type {Array<{id: string, title: string, subtitle?: string, zero?: boolean, yMax?: number,
 *   show?: function(Object[]): boolean, build: function(Object[]): Object}>}
 */
export const JOB_CHARTS = [
  {
    id: "reward",
    title: "Train reward",
    subtitle: "mean ± std, min / max",
    build: (rows) => {
      const train = rows.filter((r) => typeof r[K.reward] === "number");
      return {
        bands: [
          {
            name: "mean ± std",
            color: BLUE,
            // mean ± std, kept inside [min, max] (a skewed group can reach past them)
            points: train.map((r) => [
              r.step,
              Math.max(r[K.reward] - (r[K.rewardStd] ?? 0), r[K.rewardMin] ?? -Infinity),
              Math.min(r[K.reward] + (r[K.rewardStd] ?? 0), r[K.rewardMax] ?? Infinity),
            ]),
          },
        ],
        series: [
          { name: "max", color: GRAY, faint: true, dashed: true, points: column(train, K.rewardMax) },
          { name: "min", color: GRAY, faint: true, dashed: true, points: column(train, K.rewardMin) },
          { name: "mean", color: BLUE, points: column(train, K.reward) },
        ],
      };
    },
  },
  {
    id: "val",
    title: "Validation reward",
    subtitle: "held-out prompts, with the train mean for reference",
    build: (rows) => ({
      series: [
        { name: "train mean", color: BLUE, faint: true, points: column(rows, K.reward) },
        { name: "validation", color: ORANGE, markers: true, points: column(rows, K.val) },
      ],
    }),
  },
  {
    id: "length",
    title: "Completion length",
    subtitle: "tokens",
    zero: true,
    build: (rows) => ({
      series: [
        { name: "max", color: PURPLE, faint: true, points: column(rows, K.lengthMax) },
        { name: "mean", color: PURPLE, points: column(rows, K.lengthMean) },
      ],
    }),
  },
  {
    id: "entropy",
    title: "Policy entropy",
    subtitle: "nats per token; a collapse toward 0 means no exploration",
    zero: true,
    build: (rows) => ({ series: [{ name: "entropy", color: TEAL, points: column(rows, K.entropy) }] }),
  },
  {
    id: "kl",
    title: "KL to reference",
    show: (rows) => hasValues(rows, K.kl),
    zero: true,
    build: (rows) => ({ series: [{ name: "KL", color: RED, points: column(rows, K.kl) }] }),
  },
  {
    id: "clip",
    title: "Clip ratio",
    subtitle: "fraction of tokens whose ratio was clipped",
    zero: true,
    build: (rows) => ({ series: [{ name: "clip ratio", color: ORANGE, points: column(rows, K.clip) }] }),
  },
  {
    id: "sampler",
    title: "Rollout engine vs trainer",
    subtitle: "nats per token: KL(engine ‖ trainer) on trained tokens, probe gap after sync",
    show: (rows) => hasValues(rows, K.samplerKl) || hasValues(rows, K.probeGap),
    zero: true,
    build: (rows) => ({
      series: [
        { name: "sampler KL", color: RED, points: column(rows, K.samplerKl) },
        { name: "probe gap", color: PURPLE, points: column(rows, K.probeGap) },
      ],
    }),
  },
  {
    id: "grad",
    title: "Gradient norm",
    subtitle: "before clipping",
    zero: true,
    build: (rows) => ({ series: [{ name: "grad norm", color: GREEN, points: column(rows, K.gradNorm) }] }),
  },
  {
    id: "throughput",
    title: "Throughput",
    subtitle: "completion tokens / s",
    zero: true,
    build: (rows) => ({
      series: [{ name: "tokens/s", color: BLUE, points: column(rows, K.tokensPerS) }],
    }),
  },
  {
    id: "components",
    title: "Reward components",
    subtitle: "mean of each grader component",
    alwaysLegend: true,
    show: (rows) => componentNames(rows).length > 0,
    build: (rows) => ({
      series: componentNames(rows).map((name, i) => ({
        name,
        color: PALETTE[(i + 1) % PALETTE.length],
        points: column(rows, `reward/${name}/mean`),
      })),
    }),
  },
  {
    id: "errors",
    title: "Grader error rate",
    subtitle: "fraction of completions the grader failed on",
    zero: true,
    yMax: 0.1,
    build: (rows) => ({
      series: [
        { name: "train", color: RED, points: column(rows, K.errorRate) },
        { name: "validation", color: ORANGE, markers: true, points: column(rows, K.valErrorRate) },
      ],
    }),
  },
  {
    id: "zero_std",
    title: "Groups without learning signal",
    subtitle: "fraction of groups whose completions all scored the same",
    zero: true,
    yMax: 1,
    build: (rows) => ({
      series: [{ name: "zero-std groups", color: GRAY, points: column(rows, K.zeroStd) }],
    }),
  },
  {
    id: "time",
    title: "Step time",
    subtitle: "seconds",
    zero: true,
    build: (rows) => ({
      series: [
        { name: "total", color: GRAY, points: column(rows, K.stepS) },
        { name: "rollout", color: BLUE, points: column(rows, K.rolloutS) },
        { name: "reward", color: ORANGE, points: column(rows, K.rewardS) },
        { name: "reward exposed", color: RED, points: column(rows, K.rewardExposedS) },
        { name: "update", color: GREEN, points: column(rows, K.updateS) },
        { name: "waiting for rollouts", color: PURPLE, points: column(rows, K.rolloutWaitS) },
      ],
    }),
  },
  {
    id: "workers",
    title: "Workers",
    subtitle: "Ray actors alive at each step's end; restarts so far (died or timed out)",
    show: (rows) => hasValues(rows, K.rolloutWorkers) || hasValues(rows, K.rewardWorkers),
    zero: true,
    alwaysLegend: true,
    build: (rows) => ({
      series: [
        { name: "rollout workers", color: BLUE, points: column(rows, K.rolloutWorkers) },
        { name: "grader workers", color: ORANGE, points: column(rows, K.rewardWorkers) },
        { name: "restarts", color: RED, points: column(rows, K.workerRestarts) },
      ],
    }),
  },
  {
    id: "off_policy",
    title: "Off-policy lag",
    subtitle: "updates between the weights that sampled a group and the trainer's",
    show: (rows) => hasValues(rows, K.lagMean),
    zero: true,
    alwaysLegend: true,
    build: (rows) => ({
      series: [
        { name: "mean lag", color: BLUE, points: column(rows, K.lagMean) },
        { name: "max lag", color: PURPLE, points: column(rows, K.lagMax) },
        { name: "dropped groups", color: RED, points: column(rows, K.lagDropped) },
      ],
    }),
  },
];

/**
 * The metrics of the compare page: one chart per key, one series per job. Reward components
 * present in any job are appended as `reward/<name>/mean` charts.
 * @param {Object[][]} rowsPerJob each job's metrics lines
 * @returns {Array<{id: string, title: string, key: string, zero?: boolean, markers?: boolean}>}
 */
export function compareCharts(rowsPerJob) {
  const base = [
    { id: "reward", title: "Train reward (mean)", key: K.reward },
    { id: "val", title: "Validation reward", key: K.val, markers: true },
    { id: "length", title: "Completion length (mean)", key: K.lengthMean, zero: true },
    { id: "entropy", title: "Policy entropy", key: K.entropy, zero: true },
    { id: "kl", title: "KL to reference", key: K.kl, zero: true },
    { id: "clip", title: "Clip ratio", key: K.clip, zero: true },
    { id: "sampler", title: "Rollout engine vs trainer (KL)", key: K.samplerKl, zero: true },
    { id: "grad", title: "Gradient norm", key: K.gradNorm, zero: true },
    { id: "throughput", title: "Throughput (completion tokens / s)", key: K.tokensPerS, zero: true },
    { id: "errors", title: "Grader error rate", key: K.errorRate, zero: true },
    { id: "zero_std", title: "Groups without learning signal", key: K.zeroStd, zero: true },
  ];
  const names = componentNames(rowsPerJob.flat());
  const components = names.map((name) => ({
    id: `component-${name}`,
    title: `Reward component: ${name}`,
    key: `reward/${name}/mean`,
  }));
  return [...base, ...components].filter((c) => rowsPerJob.some((rows) => hasValues(rows, c.key)));
}

/**
 * Metrics lines of one job: fetched incrementally (`GET /api/jobs/{id}/metrics?after=N`), or
 * followed live over server-sent events (`.../metrics/stream`).
 */
export class MetricsFeed {
  /** @param {string} jobId */
  constructor(jobId) {
    this.jobId = jobId;
    this.rows = [];
    this.lastStep = null;
    this.source = null;
    this.closed = false;
  }

  /** Forget every line (a resumed run without a checkpoint rewrites its log from step 0). */
  reset() {
    this.close();
    this.rows = [];
    this.lastStep = null;
  }

  /**
   * Fetch the lines after the last step seen.
   * @returns {Promise<number>} how many new lines arrived
   */
  async poll() {
    const query = this.lastStep === null ? "" : `?after=${this.lastStep}`;
    const answer = await get(jobPath(this.jobId, `metrics${query}`));
    return this.add(answer.data || []);
  }

  /**
   * Keep the lines that are new (by step).
   * @param {Object[]} lines metrics lines
   * @returns {number} how many were new
   */
  add(lines) {
    const fresh = lines.filter(
      (r) => typeof r.step === "number" && (this.lastStep === null || r.step > this.lastStep),
    );
    if (fresh.length) {
      this.rows.push(...fresh);
      this.rows.sort((a, b) => a.step - b.step);
      this.lastStep = this.rows[this.rows.length - 1].step;
    }
    return fresh.length;
  }

  /** @returns {boolean} whether a live stream is open (polling can rest) */
  get live() {
    return Boolean(this.source && this.source.readyState === EventSource.OPEN);
  }

  /**
   * Follow the lines live: server-sent events from `metrics/stream?after=N`, authorized by
   * the session cookie. The stream closes itself when the job ends or on any error; the
   * page polls meanwhile and may follow again.
   * @param {function(number): void} onFresh called with how many new lines arrived
   * @param {boolean} [renew] renew the session cookie first
   * @returns {Promise<void>}
   */
  async follow(onFresh, renew = false) {
    this.close();
    const query = this.lastStep === null ? "" : `?after=${this.lastStep}`;
    const source = await openStream(jobPath(this.jobId, `metrics/stream${query}`), renew);
    if (this.closed) {
      source.close();
      return;
    }
    this.source = source;
    source.addEventListener("metrics", (event) => {
      const fresh = this.add([JSON.parse(event.data)]);
      if (fresh) onFresh(fresh);
    });
    const stop = () => {
      source.close();
      if (this.source === source) this.source = null;
    };
    source.addEventListener("end", stop);
    source.addEventListener("error", stop); // EventSource would retry forever: poll instead
  }

  /** Close the live stream, if any. */
  close() {
    this.source?.close();
    this.source = null;
  }

  /** Close the stream for good (the page is going). */
  dispose() {
    this.closed = true;
    this.close();
  }
}
