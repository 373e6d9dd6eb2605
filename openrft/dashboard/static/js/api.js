/**
 * The native `/api` client: bearer-token storage and JSON fetch helpers.
 *
 * The token arrives once in the URL fragment (`#token=...`, the URL the server prints), is
 * moved to local storage and removed from the address bar. Every fetch sends it in the
 * Authorization header; a URL never carries it. What cannot send headers (EventSource) rides
 * on the session cookie that {@link openSession} asks the server for: HttpOnly, SameSite=Strict,
 * good for GET only. A 401 raises {@link AuthError}, which the shell answers with the token
 * form; a 403 (a read-only token trying to change something) an {@link ApiError}.
 * @module api
 */

const TOKEN_KEY = "openrft.token";

/** What the stored token may do, from `POST /api/session`: {scope, job_id, expires_at}. */
let access = null;
let sessionFor = null; // the token the cookie was set for

/** Raised when the server rejects (or we lack) the token. */
export class AuthError extends Error {}

/** Raised for any other non-2xx answer; `status` and `detail` come from the response. */
export class ApiError extends Error {
  /**
   * @param {number} status HTTP status
   * @param {string} detail the server's `detail` text, or the status text
   */
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

/** @returns {string|null} the stored token */
export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

/** @param {string|null} token the token to keep (null forgets it) */
export function setToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
  access = null;
  sessionFor = null;
}

/**
 * Have the server set the session cookie for the stored token (once per token, or again when
 * `force`), and learn what the token may do.
 * @param {boolean} [force] ask again even if this token has a session (e.g. it may have expired)
 * @returns {Promise<{scope: string, job_id: string|null, expires_at: string|null}>}
 */
export async function openSession(force = false) {
  const token = getToken();
  if (access && sessionFor === token && !force) return access;
  const answer = await request("POST", "/api/session");
  access = answer;
  sessionFor = token;
  return answer;
}

/** End the session cookie (before the token is forgotten); errors are ignored. */
export async function closeSession() {
  try {
    await request("DELETE", "/api/session");
  } catch {
    /* the token is going anyway */
  }
}

/** @returns {boolean} whether the stored token may only read (a shared dashboard link) */
export function isReadOnly() {
  return Boolean(access && access.scope !== "admin");
}

/** @returns {string|null} the one job a scoped token is limited to, if any */
export function accessJob() {
  return access?.job_id ?? null;
}

/**
 * Move a `token=` parameter from the URL fragment into local storage and strip it from the
 * address bar (keeping any route that was also in the fragment, e.g. `#/jobs/x&token=...`).
 * @returns {boolean} whether a token was found
 */
export function takeTokenFromUrl() {
  const hash = window.location.hash.replace(/^#/, "");
  const match = hash.match(/(?:^|[&?])token=([^&]*)/);
  if (!match) return false;
  setToken(decodeURIComponent(match[1]));
  const rest = hash.replace(match[0], "").replace(/^[&?]/, "");
  const route = rest.startsWith("/") ? `#${rest}` : "";
  history.replaceState(null, "", window.location.pathname + window.location.search + route);
  return true;
}

async function request(method, path, body) {
  const token = getToken();
  if (!token) throw new AuthError("no token");
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (response.status === 401) throw new AuthError("token rejected");
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const data = await response.json();
      if (data && data.detail) {
        detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      }
    } catch {
      /* not JSON: keep the status text */
    }
    throw new ApiError(response.status, detail);
  }
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/**
 * GET a path of the API.
 * @param {string} path e.g. "/api/jobs"
 * @returns {Promise<any>} parsed JSON (or text for non-JSON files)
 */
export const get = (path) => request("GET", path);

/**
 * POST to a path of the API.
 * @param {string} path
 * @param {any} [body] sent as JSON
 * @returns {Promise<any>}
 */
export const post = (path, body) => request("POST", path, body);

/**
 * DELETE a path of the API.
 * @param {string} path
 * @returns {Promise<any>}
 */
export const del = (path) => request("DELETE", path);

/**
 * Build a path with an encoded id: `jobPath("job-1", "metrics")` -> "/api/jobs/job-1/metrics".
 * @param {string} id job id
 * @param {string} [rest] sub-path
 * @returns {string}
 */
export function jobPath(id, rest = "") {
  return `/api/jobs/${encodeURIComponent(id)}${rest ? `/${rest}` : ""}`;
}

/**
 * Open a server-sent event stream of the API. EventSource cannot send headers: the session
 * cookie authorizes it, so the session is opened (or renewed) first.
 * @param {string} path e.g. jobPath(id, "metrics/stream")
 * @param {boolean} [renew] renew the session first (a stream broke: it may have expired)
 * @returns {Promise<EventSource>}
 */
export async function openStream(path, renew = false) {
  await openSession(renew);
  return new EventSource(path);
}
