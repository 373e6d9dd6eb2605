/**
 * The page shell: the token form, the connection indicator, toasts and shared error handling.
 * Pages report failures through {@link handleError}: a 401 brings up the token form, a network
 * error marks the connection as lost (polling retries), anything else becomes a toast.
 * @module shell
 */

import { AuthError, accessJob, getToken, isReadOnly, setToken } from "./api.js";
import { h, replace } from "./dom.js";

let rerender = () => {};
let authShown = false;

/**
 * Register the function that redraws the current route (called after a token is entered).
 * @param {function(): void} fn
 */
export function onRerender(fn) {
  rerender = fn;
}

/** @returns {boolean} whether the token form is showing (pages stop polling then) */
export function isAuthShown() {
  return authShown;
}

/**
 * Show the token form in place of the page.
 * @param {string} [reason] why it is asked for
 */
export function showAuth(reason) {
  if (authShown) return;
  authShown = true;
  const app = document.getElementById("app");
  const input = h("input", {
    id: "token-input",
    type: "password",
    autocomplete: "current-password",
    placeholder: "paste the token",
    required: true,
  });
  const form = h(
    "form",
    {
      class: "card auth-card",
      onsubmit: (event) => {
        event.preventDefault();
        const token = input.value.trim();
        if (!token) return;
        setToken(token);
        authShown = false;
        updateChrome();
        rerender();
      },
    },
    h("h1", null, "Sign in to openrft"),
    reason ? h("p", { class: "auth-reason" }, reason) : null,
    h(
      "p",
      { class: "muted" },
      "The server prints a link with the token when it starts (",
      h("code", null, "http://…/#token=…"),
      "); the token is also in ",
      h("code", null, "<data-dir>/token"),
      ".",
    ),
    // a (hidden) user name lets password managers file the token properly
    h("input", { type: "text", name: "username", autocomplete: "username", value: "openrft", hidden: true }),
    h("label", { for: "token-input" }, "Access token"),
    input,
    h("button", { type: "submit", class: "button primary" }, "Continue"),
  );
  replace(app, h("div", { class: "auth-wrap" }, form));
  updateChrome();
  input.focus();
}

/** Show or hide the header's "Forget token" button and the read-only badge. */
export function updateChrome() {
  const button = document.getElementById("signout");
  if (button) button.hidden = !getToken() || authShown;
  const badge = document.getElementById("access");
  if (badge) {
    badge.hidden = !isReadOnly() || authShown;
    const job = accessJob();
    badge.textContent = job ? `Read-only · job ${job}` : "Read-only";
    badge.title = "This token may only view: actions that change jobs are hidden";
  }
}

/**
 * Mark the server as reachable or not in the header.
 * @param {boolean} ok
 */
export function setConnection(ok) {
  const el = document.getElementById("conn");
  if (!el) return;
  el.hidden = ok;
  el.textContent = ok ? "" : "Server unreachable – retrying…";
}

/**
 * Show a short message at the bottom of the page.
 * @param {string} message
 * @param {"info"|"error"} [kind]
 */
export function toast(message, kind = "info") {
  let box = document.getElementById("toasts");
  if (!box) {
    box = h("div", { id: "toasts", class: "toasts", role: "status" });
    document.body.appendChild(box);
  }
  const item = h("div", { class: ["toast", `toast-${kind}`] }, message);
  box.appendChild(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
}

/**
 * Route an error: token form on 401, connection banner on network failure, else a toast.
 * @param {unknown} error
 * @param {{quiet?: boolean}} [options] quiet: no toast (for background polling)
 */
export function handleError(error, options = {}) {
  if (error instanceof AuthError) {
    showAuth(getToken() ? "The server rejected the stored token." : "");
    return;
  }
  if (error instanceof TypeError) {
    setConnection(false); // fetch() failed: server down or restarting
    return;
  }
  if (!options.quiet) toast(error?.message || String(error), "error");
  console.error(error);
}

/**
 * Run `fn` every `interval` ms (after each run finishes), skipping while the tab is hidden
 * or the token form is up.
 * @param {function(): Promise<void>} fn
 * @param {number|function(): number} interval milliseconds, or a function returning them
 * @returns {function(): void} stop
 */
export function every(fn, interval) {
  let stopped = false;
  let timer = null;
  const loop = async () => {
    if (stopped) return;
    if (!document.hidden && !authShown) {
      try {
        await fn();
        setConnection(true);
      } catch (error) {
        handleError(error, { quiet: true });
      }
    }
    if (!stopped) timer = setTimeout(loop, typeof interval === "function" ? interval() : interval);
  };
  timer = setTimeout(loop, typeof interval === "function" ? interval() : interval);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
