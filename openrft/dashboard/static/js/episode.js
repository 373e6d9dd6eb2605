/**
 * One multi-turn episode in the rollout viewer, turn by turn: each assistant turn's text and
 * tool calls, each tool result or environment message, folded (tool results closed, errors
 * open and marked), the per-turn reward beside its turn, and the environment's failure.
 * Records come from rollouts.jsonl (openrft.train.rollouts.episode_record); every string is
 * untrusted model or tool output and goes through text nodes.
 * @module episode
 */

import { h } from "./dom.js";
import { num } from "./format.js";

const TOOL_ERROR = /^Error \(([a-z_]+)\): /;

/**
 * @param {object} message an OpenAI-shaped message
 * @returns {string|null} the tool error kind of a tool message that reports one
 */
export function toolErrorKind(message) {
  if (message?.role !== "tool") return null;
  const match = TOOL_ERROR.exec(String(message.content ?? ""));
  return match ? match[1] : null;
}

function callView(call) {
  const fn = call?.function || {};
  let args = fn.arguments ?? "";
  try {
    args = JSON.stringify(JSON.parse(args), null, 1);
  } catch {
    // shown as the model wrote it
  }
  return h(
    "details",
    { class: "tool-call", open: true },
    h("summary", null, h("span", { class: "chip tool-name" }, `call ${fn.name ?? "?"}`)),
    h("pre", { class: "tool-args" }, String(args)),
  );
}

function assistantTurn(message, index, reward) {
  return h(
    "div",
    { class: "turn turn-assistant", dataset: { turn: String(index) } },
    h(
      "div",
      { class: "turn-head" },
      h("span", { class: "message-role" }, `assistant · turn ${index + 1}`),
      typeof reward === "number"
        ? h("span", { class: "chip turn-reward", title: "the environment's reward for this turn" }, `reward ${num(reward)}`)
        : null,
    ),
    message.content ? h("pre", { class: "message-text" }, String(message.content)) : null,
    (message.tool_calls || []).map(callView),
  );
}

function answerTurn(message) {
  const kind = toolErrorKind(message);
  const role = String(message.role || "user").replace(/[^a-z]/gi, "");
  const label = role === "tool" ? `tool result${message.name ? ` · ${message.name}` : ""}` : role;
  return h(
    "details",
    { class: ["turn", `turn-${role}`, kind && "tool-error"], open: Boolean(kind) || role !== "tool" },
    h(
      "summary",
      null,
      h("span", { class: "message-role" }, label),
      kind ? h("span", { class: "chip chip-error" }, kind) : null,
    ),
    h("pre", { class: "message-text" }, String(message.content ?? "")),
  );
}

/**
 * @param {object} completion a completion record with `messages` (an episode)
 * @returns {HTMLElement}
 */
export function episodeView(completion) {
  const rewards = completion.turn_rewards || [];
  let turn = -1;
  const parts = (completion.messages || []).map((message) => {
    if (message.role !== "assistant") return answerTurn(message);
    turn += 1;
    return assistantTurn(message, turn, rewards[turn]);
  });
  const errors = Object.entries(completion.tool_errors || {});
  return h(
    "div",
    { class: "episode" },
    h(
      "div",
      { class: "episode-stats muted" },
      `${completion.turns ?? turn + 1} turns · ${completion.tool_calls ?? 0} tool calls · ` +
        `${completion.sampled_tokens ?? "?"} sampled tokens`,
      errors.length ? ` · tool errors: ${errors.map(([k, n]) => `${k} ×${n}`).join(", ")}` : "",
    ),
    completion.env_error
      ? h(
          "div",
          { class: "grader-error env-error", role: "note" },
          h("span", { class: "error-kind" }, "environment"),
          h("span", { class: "error-message" }, String(completion.env_error)),
        )
      : null,
    parts,
  );
}
