/**
 * The rollout viewer (job page, "Rollouts" tab): pick a step, read each prompt with its G
 * completions (text, score, components, advantage, finish reason, grader error; an episode
 * turn by turn, openrft/dashboard/static/js/episode.js) and filter
 * to groups without learning signal, groups with errors, or a text search.
 * Completions are untrusted model output: every string goes through text nodes.
 * @module pages/rollouts
 */

import { get, jobPath } from "../api.js";
import { h, replace } from "../dom.js";
import { episodeView } from "../episode.js";
import { num } from "../format.js";
import {
  answerText,
  contentText,
  errorCount,
  filterRollouts,
  hasNoSignal,
  meanScore,
} from "../rollout-filters.js";
import { handleError } from "../shell.js";

const PREVIEW_CHARS = 140;
const OPEN_FIRST = 3; // prompts expanded when a step is shown

/**
 * A signed advantage chip, green for positive and red for negative, stronger when larger.
 * @param {number|null} value
 * @returns {HTMLElement}
 */
function advantageChip(value) {
  if (typeof value !== "number") return h("span", { class: "chip muted" }, "adv –");
  const sign = value > 1e-9 ? "pos" : value < -1e-9 ? "neg" : "zero";
  const strength = Math.min(1, Math.abs(value) / 2);
  const chip = h(
    "span",
    { class: ["chip", "adv", `adv-${sign}`], title: "advantage" },
    `adv ${value > 0 ? "+" : ""}${num(value)}`,
  );
  chip.style.setProperty("--strength", strength.toFixed(2));
  return chip;
}

function completionCard(completion, index) {
  const error = completion.error;
  const components = Object.entries(completion.components || {});
  const text = completion.text ?? "";
  return h(
    "article",
    { class: ["completion", error && "has-error"], dataset: { index: String(index) } },
    h(
      "header",
      { class: "completion-head" },
      h("span", { class: "completion-index" }, `#${index + 1}`),
      h("span", { class: "chip score", title: "score" }, `score ${num(completion.score)}`),
      advantageChip(completion.advantage),
      h(
        "span",
        {
          class: ["chip", completion.finish_reason === "length" ? "chip-warn" : "muted"],
          title: "finish reason and generated tokens",
        },
        completion.finish_reason || "?",
        typeof completion.tokens === "number" ? ` · ${completion.tokens} tok` : "",
      ),
    ),
    components.length
      ? h(
          "div",
          { class: "components" },
          components.map(([name, value]) =>
            h("span", { class: "component" }, h("span", { class: "component-name" }, name), num(value)),
          ),
        )
      : null,
    error
      ? h(
          "div",
          { class: "grader-error", role: "note" },
          h("span", { class: "error-kind" }, error.kind || "error"),
          h("span", { class: "error-message" }, error.message || ""),
        )
      : null,
    completion.messages
      ? episodeView(completion)
      : text
        ? h("pre", { class: "completion-text" }, text)
        : h("pre", { class: "completion-text empty-text" }, "(empty completion)"),
  );
}

function promptPreview(record) {
  const messages = record.prompt || [];
  const last = [...messages].reverse().find((m) => m.role === "user") || messages[messages.length - 1];
  const text = contentText(last?.content).replace(/\s+/g, " ").trim();
  return text.length > PREVIEW_CHARS ? `${text.slice(0, PREVIEW_CHARS)}…` : text;
}

function rolloutItem(record, index, open) {
  const errors = errorCount(record);
  const noSignal = hasNoSignal(record);
  const score = meanScore(record);
  return h(
    "details",
    { class: "rollout", open, dataset: { example: String(record.example_id ?? index) } },
    h(
      "summary",
      null,
      h("span", { class: "rollout-index" }, `${index + 1}`),
      h("span", { class: "rollout-preview" }, promptPreview(record) || "(empty prompt)"),
      h(
        "span",
        { class: "rollout-badges" },
        noSignal
          ? h("span", { class: "chip chip-warn", title: "every completion scored the same" }, "no signal")
          : null,
        errors ? h("span", { class: "chip chip-error" }, `${errors} error${errors > 1 ? "s" : ""}`) : null,
        h("span", { class: "chip score" }, `mean ${num(score)}`),
      ),
    ),
    h(
      "div",
      { class: "rollout-body" },
      h(
        "div",
        { class: "messages" },
        (record.prompt || []).map((message) =>
          h(
            "div",
            { class: ["message", `role-${String(message.role || "user").replace(/[^a-z]/gi, "")}`] },
            h("div", { class: "message-role" }, message.role || "?"),
            h("pre", { class: "message-text" }, contentText(message.content)),
          ),
        ),
        record.reference_answer !== undefined && record.reference_answer !== null
          ? h(
              "div",
              { class: "message reference" },
              h("div", { class: "message-role" }, "reference answer"),
              h("pre", { class: "message-text" }, answerText(record.reference_answer)),
            )
          : null,
      ),
      h(
        "div",
        { class: "completion-list" },
        (record.completions || []).map((completion, i) => completionCard(completion, i)),
      ),
      h("div", { class: "rollout-id muted" }, `example ${record.example_id ?? "?"}`),
    ),
  );
}

/**
 * Render the rollout viewer for one job.
 * @param {HTMLElement} root
 * @param {string} jobId
 * @returns {{refresh: function(): Promise<void>, dispose: function(): void}} refresh reloads
 *   the list of steps (new steps appear in the picker; the step shown stays)
 */
export function renderRollouts(root, jobId) {
  const filters = { noSignal: false, errors: false, text: "" };
  let steps = [];
  let step = null;
  let records = [];
  let loadToken = 0;

  const stepSelect = h("select", {
    class: "select",
    id: "rollout-step",
    "aria-label": "Step",
    onchange: (event) => load(Number(event.target.value)),
  });
  const checkbox = (key, label, hint) =>
    h(
      "label",
      { class: "toggle", title: hint },
      h("input", {
        type: "checkbox",
        dataset: { filter: key },
        onchange: (event) => {
          filters[key] = event.target.checked;
          draw();
        },
      }),
      label,
    );
  const search = h("input", {
    type: "search",
    class: "search",
    id: "rollout-search",
    placeholder: "Search prompts and completions",
    oninput: (event) => {
      filters.text = event.target.value;
      draw();
    },
  });
  const count = h("span", { class: "rollout-count", id: "rollout-count" });
  const stepStats = h("div", { class: "step-stats muted" });
  const list = h("div", { class: "rollout-list" });
  const setAll = (open) => list.querySelectorAll("details.rollout").forEach((d) => (d.open = open));

  replace(
    root,
    h(
      "div",
      { class: "rollouts" },
      h(
        "div",
        { class: "card toolbar" },
        h("label", { class: "field" }, "Step", stepSelect),
        checkbox("noSignal", "No learning signal", "groups whose completions all have the same score"),
        checkbox("errors", "Has errors", "groups with at least one grader error"),
        search,
        h(
          "div",
          { class: "toolbar-end" },
          count,
          h("button", { type: "button", class: "link-button", onclick: () => setAll(true) }, "Expand all"),
          h("button", { type: "button", class: "link-button", onclick: () => setAll(false) }, "Collapse all"),
        ),
      ),
      stepStats,
      list,
    ),
  );

  function drawSteps() {
    replace(
      stepSelect,
      [...steps].reverse().map((s) => h("option", { value: String(s), selected: s === step }, `step ${s}`)),
    );
    stepSelect.disabled = !steps.length;
  }

  function draw() {
    if (step === null) {
      count.textContent = "";
      const message = steps.length
        ? "Loading…"
        : "No rollouts yet: they appear after the first training step.";
      replace(list, h("div", { class: "card empty" }, message));
      return;
    }
    const shown = filterRollouts(records, filters);
    count.textContent = `Showing ${shown.length} of ${records.length} prompts`;
    count.dataset.shown = String(shown.length);
    count.dataset.total = String(records.length);
    const completions = records.flatMap((r) => r.completions || []);
    const errors = completions.filter((c) => c.error).length;
    const noSignal = records.filter(hasNoSignal).length;
    stepStats.textContent =
      `Step ${step}: ${records.length} prompts, ${completions.length} completions, ` +
      `${noSignal} without learning signal, ${errors} grader error${errors === 1 ? "" : "s"}.`;
    replace(
      list,
      shown.length
        ? shown.map((record, i) => rolloutItem(record, i, i < OPEN_FIRST))
        : h("div", { class: "card empty" }, "No prompt matches the filters."),
    );
  }

  async function load(which) {
    const mine = ++loadToken;
    step = which;
    drawSteps();
    const answer = await get(jobPath(jobId, `rollouts?step=${encodeURIComponent(which)}`));
    if (mine !== loadToken) return; // a newer choice won
    records = answer.data || [];
    draw();
  }

  async function refresh() {
    const answer = await get(jobPath(jobId, "rollouts/steps"));
    const fresh = answer.steps || [];
    const changed = fresh.length !== steps.length || fresh[fresh.length - 1] !== steps[steps.length - 1];
    steps = fresh;
    if (changed) drawSteps();
    if (step === null && steps.length) await load(steps[steps.length - 1]);
    else if (step === null) draw();
  }

  refresh().catch((error) => handleError(error));
  return { refresh, dispose: () => {} };
}
