/**
 * Health alerts computed from a job's metrics lines. Pure functions: each takes the rows of
 * metrics.jsonl (sorted by step) and returns an alert or null, so they are unit-tested in the
 * browser on crafted arrays. The rules follow the managed-RFT health checks: reward up,
 * entropy stable, train up / validation down = overfitting (Azure stops at a 0.10 gap),
 * plus length blow-up, truncation, grader errors and groups without learning signal.
 * @module alerts
 */

/**
 * @typedef {Object} Alert
 * @property {string} id stable identifier, e.g. "train-val-gap"
 * @property {"critical"|"warning"} severity
 * @property {string} title short headline
 * @property {string} detail one line: what the numbers show
 * @property {string} action one line: what to do
 */

/** Thresholds of the rules (exported so the UI and the tests can cite them). */
export const THRESHOLDS = {
  gap: 0.1, // train minus validation reward
  gapValidations: 3, // the gap must widen over this many validations
  trainSmoothing: 3, // train reward at a validation = mean of this many train steps up to it
  entropyFraction: 0.1, // entropy below this fraction of its first value
  entropyFloor: 0.05, // or below this absolute value
  lengthGrowth: 3, // recent mean length over the first steps' mean length
  lengthWindow: 3, // steps averaged at the start and at the end
  truncated: 0.5, // mean truncated ratio of the recent steps
  errorRate: 0.05, // mean grader error rate of the recent steps
  zeroStd: 0.8, // mean fraction of zero-std groups of the recent steps
  recent: 5, // "recent steps"
  minRecent: 3, // steps needed before the recent-window rules fire
};

/**
 * The rows' finite values of `key`, as {step, value}.
 * @param {Object[]} rows metrics lines
 * @param {string} key metric key
 * @returns {{step: number, value: number}[]}
 */
export function series(rows, key) {
  return rows
    .filter((r) => typeof r[key] === "number" && Number.isFinite(r[key]))
    .map((r) => ({ step: r.step, value: r[key] }));
}

function mean(values) {
  return values.length ? values.reduce((a, b) => a + b, 0) / values.length : NaN;
}

const fmt = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : Number(v.toPrecision(3)).toString());

/** Mean of the last `recent` values of `key` when at least `minRecent` exist, else null. */
function recentMean(rows, key) {
  const values = series(rows, key).slice(-THRESHOLDS.recent);
  if (values.length < THRESHOLDS.minRecent) return null;
  return { value: mean(values.map((v) => v.value)), count: values.length };
}

/**
 * Train/validation gap: at each validation the (smoothed) train reward minus the validation
 * reward; fires when the latest gap exceeds 0.10 and the gap grew over the last 3 validations.
 * @param {Object[]} rows metrics lines
 * @returns {Alert|null}
 */
export function trainValGap(rows) {
  const train = series(rows, "reward/mean");
  const gaps = [];
  for (const v of series(rows, "val/reward/mean")) {
    const before = train.filter((t) => t.step <= v.step).slice(-THRESHOLDS.trainSmoothing);
    if (before.length) {
      const trainValue = mean(before.map((t) => t.value));
      gaps.push({ step: v.step, train: trainValue, val: v.value, gap: trainValue - v.value });
    }
  }
  const last = gaps.slice(-THRESHOLDS.gapValidations);
  if (last.length < THRESHOLDS.gapValidations) return null;
  const widening = last.every((g, i) => i === 0 || g.gap > last[i - 1].gap);
  const latest = last[last.length - 1];
  if (!(latest.gap > THRESHOLDS.gap && widening)) return null;
  return {
    id: "train-val-gap",
    severity: "critical",
    title: "Overfitting: train and validation rewards are drifting apart",
    detail:
      `At step ${latest.step} train reward ${fmt(latest.train)} vs validation ${fmt(latest.val)} ` +
      `(gap ${fmt(latest.gap)} > ${THRESHOLDS.gap}), widening over the last ` +
      `${THRESHOLDS.gapValidations} validations.`,
    action:
      "Stop the job and keep the checkpoint from before the gap opened; then add training data, " +
      "lower the learning rate or train fewer epochs.",
  };
}

/**
 * Entropy collapse: the latest policy entropy is below 10% of its first value, or below 0.05.
 * @param {Object[]} rows metrics lines
 * @returns {Alert|null}
 */
export function entropyCollapse(rows) {
  const values = series(rows, "policy/entropy");
  if (!values.length) return null;
  const first = values[0].value;
  const latest = values[values.length - 1];
  const relative = values.length > 1 && first > 0 && latest.value < THRESHOLDS.entropyFraction * first;
  if (!(relative || latest.value < THRESHOLDS.entropyFloor)) return null;
  return {
    id: "entropy-collapse",
    severity: "warning",
    title: "Entropy collapse: the policy stopped exploring",
    detail:
      `Entropy is ${fmt(latest.value)} at step ${latest.step} (it started at ${fmt(first)}); ` +
      "the completions of a group are becoming identical.",
    action:
      "Lower the learning rate, raise rollout.temperature or add an entropy bonus " +
      "(algo.entropy_coef); check the rollouts for one repeated answer.",
  };
}

/**
 * Completion length blow-up: the mean length of the last 3 steps is over 3x that of the first 3.
 * @param {Object[]} rows metrics lines
 * @returns {Alert|null}
 */
export function lengthBlowup(rows) {
  const values = series(rows, "completion/length_mean").map((v) => v.value);
  const n = THRESHOLDS.lengthWindow;
  if (values.length < 2 * n) return null;
  const first = mean(values.slice(0, n));
  const recent = mean(values.slice(-n));
  if (!(first > 0 && recent > THRESHOLDS.lengthGrowth * first)) return null;
  return {
    id: "length-blowup",
    severity: "warning",
    title: "Completion length is blowing up",
    detail:
      `Mean completion length grew from ${fmt(first)} to ${fmt(recent)} tokens ` +
      `(${fmt(recent / first)}x); long answers may be gaming the grader.`,
    action:
      "Read the longest rollouts; add a length penalty or format check to the grader, " +
      "or lower rollout.max_new_tokens.",
  };
}

/**
 * Truncation: over half the completions of the recent steps hit the token limit.
 * @param {Object[]} rows metrics lines
 * @returns {Alert|null}
 */
export function truncation(rows) {
  const recent = recentMean(rows, "completion/truncated_ratio");
  if (!recent || !(recent.value > THRESHOLDS.truncated)) return null;
  return {
    id: "truncation",
    severity: "warning",
    title: "Completions are hitting the length limit",
    detail:
      `${Math.round(recent.value * 100)}% of the completions of the last ${recent.count} steps ` +
      "were cut off at max_new_tokens, so the grader scores unfinished answers.",
    action: "Raise rollout.max_new_tokens, or ask for shorter answers in the prompt.",
  };
}

/**
 * Grader errors: the mean grader error rate of the recent training steps, or the error rate
 * of the latest validation, is over 5%.
 * @param {Object[]} rows metrics lines
 * @returns {Alert|null}
 */
export function graderErrors(rows) {
  const recent = recentMean(rows, "reward/error_rate");
  const latestTrain = series(rows, "reward/error_rate").slice(-1)[0];
  const train = recent ? recent.value : latestTrain?.value;
  const val = series(rows, "val/reward/error_rate").slice(-1)[0];
  const trainBad = train > THRESHOLDS.errorRate;
  const valBad = val?.value > THRESHOLDS.errorRate;
  if (!trainBad && !valBad) return null;
  const parts = [];
  if (trainBad) parts.push(`${(train * 100).toFixed(1)}% of recent training completions`);
  if (valBad) parts.push(`${(val.value * 100).toFixed(1)}% of the validation completions (step ${val.step})`);
  return {
    id: "grader-errors",
    severity: "critical",
    title: "The grader is failing",
    detail:
      `${parts.join(" and ")} got a grader error (threshold ${THRESHOLDS.errorRate * 100}%); ` +
      "failed gradings give no learning signal.",
    action:
      "Open the Rollouts tab with “has errors” to read the error messages, fix the grader, " +
      "then resume the job.",
  };
}

/**
 * No learning signal: on average over 80% of the groups of the recent steps scored all
 * their completions the same (zero advantage, zero gradient).
 * @param {Object[]} rows metrics lines
 * @returns {Alert|null}
 */
export function noLearningSignal(rows) {
  const recent = recentMean(rows, "reward/frac_zero_std_groups");
  if (!recent || !(recent.value > THRESHOLDS.zeroStd)) return null;
  return {
    id: "no-learning-signal",
    severity: "warning",
    title: "Most groups carry no learning signal",
    detail:
      `${Math.round(recent.value * 100)}% of the groups of the last ${recent.count} steps ` +
      "scored every completion the same, so their advantages are zero.",
    action:
      "Give partial credit in the grader, raise rollout.samples_per_prompt or temperature, " +
      "or use prompts that are neither too easy nor too hard.",
  };
}

/** Every rule, in display order. */
export const RULES = [
  trainValGap,
  graderErrors,
  entropyCollapse,
  noLearningSignal,
  lengthBlowup,
  truncation,
];

/**
 * All alerts for a job's metrics, critical ones first.
 * @param {Object[]} rows metrics lines (any order)
 * @returns {Alert[]}
 */
export function computeAlerts(rows) {
  const sorted = [...rows].sort((a, b) => a.step - b.step);
  const alerts = RULES.map((rule) => rule(sorted)).filter(Boolean);
  const rank = { critical: 0, warning: 1 };
  return alerts.sort((a, b) => rank[a.severity] - rank[b.severity]);
}
