/**
 * Pure helpers of the rollout viewer: the text of a message, and the filters (groups without
 * learning signal, groups with grader errors, free-text search).
 * @module rollout-filters
 */

/**
 * The text of a chat message's content (a string, or a list of `{type: "text", text}` parts).
 * @param {any} content
 * @returns {string}
 */
export function contentText(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content
      .map((part) => (typeof part === "string" ? part : part?.text ?? JSON.stringify(part)))
      .join("\n");
  }
  return content === null || content === undefined ? "" : JSON.stringify(content, null, 2);
}

/**
 * A reference answer as display text (strings as they are, anything else as JSON).
 * @param {any} answer
 * @returns {string}
 */
export function answerText(answer) {
  if (answer === null || answer === undefined) return "";
  return typeof answer === "string" ? answer : JSON.stringify(answer, null, 2);
}

/**
 * Whether every completion of the group has the same score (zero std: no learning signal).
 * @param {{completions: Object[]}} record one prompt of one step
 * @returns {boolean}
 */
export function hasNoSignal(record) {
  const scores = (record.completions || []).map((c) => (typeof c.score === "number" ? c.score : null));
  if (scores.length < 2) return true;
  return scores.every((score) =>
    score === null || scores[0] === null ? score === scores[0] : Math.abs(score - scores[0]) < 1e-9,
  );
}

/**
 * How many completions of the group have a grader error.
 * @param {{completions: Object[]}} record
 * @returns {number}
 */
export function errorCount(record) {
  return (record.completions || []).filter((c) => c.error).length;
}

/**
 * Whether the prompt, reference answer or any completion contains `query` (case-insensitive).
 * @param {Object} record
 * @param {string} query
 * @returns {boolean}
 */
export function matchesText(record, query) {
  const needle = query.trim().toLowerCase();
  if (!needle) return true;
  const texts = [
    ...(record.prompt || []).map((m) => contentText(m.content)),
    answerText(record.reference_answer),
    ...(record.completions || []).map((c) => c.text || ""),
    ...(record.completions || []).map((c) => (c.error ? `${c.error.kind} ${c.error.message}` : "")),
  ];
  return texts.some((t) => t.toLowerCase().includes(needle));
}

/**
 * The records passing every active filter.
 * @param {Object[]} records rollout records of one step
 * @param {{noSignal?: boolean, errors?: boolean, text?: string}} filters
 * @returns {Object[]}
 */
export function filterRollouts(records, filters) {
  return records.filter(
    (r) =>
      (!filters.noSignal || hasNoSignal(r)) &&
      (!filters.errors || errorCount(r) > 0) &&
      matchesText(r, filters.text || ""),
  );
}

/**
 * The mean score of a group (ignoring completions without a score).
 * @param {Object} record
 * @returns {number|null}
 */
export function meanScore(record) {
  const scores = (record.completions || []).map((c) => c.score).filter((s) => typeof s === "number");
  return scores.length ? scores.reduce((a, b) => a + b, 0) / scores.length : null;
}
