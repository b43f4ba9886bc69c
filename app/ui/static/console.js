// Shared by every console page: the session token, calls to /v1, safe DOM building, formatting.
// Text always goes into the page as text nodes or textContent, never parsed as HTML, so nothing
// a job holds can become markup.

const TOKEN_KEY = "mds-convert.token";

export const session = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  signIn: (token) => sessionStorage.setItem(TOKEN_KEY, token),
  signOut: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

// Calls the API with the session's token as a bearer header. A 401 sends the user to sign in
// (unless the caller handles it, as the sign-in page does).
export async function api(path, { method = "GET", body, token, handle401 = false } = {}) {
  const headers = { Accept: "application/json" };
  const bearer = token ?? session.token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit",
    cache: "no-store",
  });
  const data = await response.json().catch(() => null);
  if (response.status === 401 && !handle401) {
    session.signOut();
    window.location.assign("/ui/signin");
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// el("td", {class: "x"}, "text", child): an element with attributes and text or node children.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function show(node, text) {
  node.textContent = text ?? "";
  node.hidden = !text;
}

// Who is signed in, shown in the top bar; with auth disabled, the API answers without a token.
export async function startSession() {
  const me = await api("/v1/whoami");
  const who = document.getElementById("whoami");
  who.textContent = me.auth_disabled
    ? `${me.name} (auth disabled)`
    : `${me.name}${me.admin ? " (admin)" : ""}`;
  who.title = `scopes: ${me.scopes.join(", ")}`;
  who.hidden = false;
  const out = document.getElementById("signout");
  out.hidden = me.auth_disabled;
  out.addEventListener("click", () => {
    session.signOut();
    window.location.assign("/ui/signin");
  });
  return me;
}

export const FINAL = new Set(["succeeded", "failed", "cancelled"]);

export function stateBadge(state) {
  return el("span", { class: `state state-${state}`, "data-state": state }, state);
}

export function fmtInt(n) {
  return Number(n ?? 0).toLocaleString("en-US");
}

export function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(n ?? 0);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export function seconds(from, to) {
  if (!from) return null;
  const end = to ? Date.parse(to) : Date.now();
  return (end - Date.parse(from)) / 1000;
}

export function fmtTime(iso) {
  return iso ? new Date(iso).toLocaleString("en-GB", { hour12: false }) : "–";
}

// Rows per second over the run so far (or the whole run once finished).
export function rowsPerSecond(job) {
  const elapsed = seconds(job.started_at, job.finished_at);
  if (!elapsed || elapsed <= 0) return null;
  return job.progress.rows_written / elapsed;
}

export function progressFraction(job) {
  if (job.state === "succeeded") return 1;
  const { partitions_done: done, partitions_total: total } = job.progress;
  return total ? done / total : 0;
}
