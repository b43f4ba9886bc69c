// One job: request, live progress and chart, transition log, result or error, cancel, and for a
// succeeded job its dataset summary and a preview of its first samples.
import {
  ApiError, FINAL, api, el, fmtBytes, fmtDuration, fmtInt, fmtTime, progressFraction,
  rowsPerSecond, seconds, show, startSession, stateBadge,
} from "./console.js";

const POLL_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
const root = document.getElementById("job");
const jobId = root.dataset.jobId;
const path = `/v1/jobs/${encodeURIComponent(jobId)}`;
const errorBanner = document.getElementById("job-error");
const cancelButton = document.getElementById("cancel");
const dialog = document.getElementById("cancel-dialog");
const points = []; // [seconds since start, rows written] for the chart
let datasetShown = false;

function kv(target, pairs) {
  target.replaceChildren(
    ...pairs.flatMap(([key, value]) => [el("dt", {}, key), el("dd", { "data-key": key }, value)]),
  );
}

function showRequest(job) {
  const r = job.request;
  kv(document.getElementById("request"), [
    ["source", r.source_table],
    ["target", r.target],
    ["compression", r.compression ?? "none"],
    ["hashes", r.hashes.join(", ") || "none"],
    ["size limit", fmtBytes(r.size_limit)],
    ["partitions", r.partitions ?? "as the source"],
    ["mode", r.mode],
    ["nulls", r.null_policy],
    ["columns", r.columns ? JSON.stringify(r.columns) : "all (inferred)"],
    ["filter", r.filter ? JSON.stringify(r.filter) : "none"],
    ["callback", r.callback_url ?? "none"],
    ["principal", job.principal ?? "–"],
    ["created", fmtTime(job.created_at)],
  ]);
}

function showProgress(job) {
  const p = job.progress;
  const rate = rowsPerSecond(job);
  document.getElementById("job-progress").value = progressFraction(job);
  kv(document.getElementById("progress-stats"), [
    ["rows", fmtInt(p.rows_written)],
    ["shards", fmtInt(p.shards_written)],
    ["bytes", fmtBytes(p.bytes_written)],
    ["partitions", p.partitions_total ? `${p.partitions_done}/${p.partitions_total}` : "–"],
    ["rows/s", rate === null ? "–" : fmtInt(Math.round(rate))],
    ["phase", FINAL.has(job.state) ? "done" : p.phase ?? "–"],
    ["running for", job.started_at ? fmtDuration(seconds(job.started_at, job.finished_at)) : "–"],
    ["attempts", String(job.attempts)],
  ]);
  if (job.started_at) {
    if (!points.length) points.push([0, 0]);
    const t = seconds(job.started_at, job.finished_at);
    const last = points[points.length - 1];
    if (t > last[0] || p.rows_written !== last[1]) points.push([Math.max(t, last[0]), p.rows_written]);
  }
  drawChart();
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// Rows written over time, from what this page has seen (the API keeps no history).
function drawChart() {
  const chart = document.getElementById("chart");
  const [W, H, L, B] = [600, 160, 70, 20];
  const maxT = Math.max(1, ...points.map((p) => p[0]));
  const maxR = Math.max(1, ...points.map((p) => p[1]));
  const x = (t) => L + ((W - L - 10) * t) / maxT;
  const y = (r) => H - B - ((H - B - 10) * r) / maxR;
  const nodes = [
    svg("line", { x1: L, y1: H - B, x2: W - 10, y2: H - B, class: "axis" }),
    svg("line", { x1: L, y1: 10, x2: L, y2: H - B, class: "axis" }),
    svg("text", { x: L - 6, y: 16, class: "tick", "text-anchor": "end" }, fmtInt(maxR)),
    svg("text", { x: L - 6, y: H - B, class: "tick", "text-anchor": "end" }, "0"),
    svg("text", { x: W - 10, y: H - 4, class: "tick", "text-anchor": "end" }, fmtDuration(maxT)),
    svg("text", { x: L, y: H - 4, class: "tick" }, "rows written over time"),
  ];
  if (points.length) {
    const line = points.map(([t, r]) => `${x(t).toFixed(1)},${y(r).toFixed(1)}`).join(" ");
    nodes.push(svg("polyline", { points: line, class: "series", "data-points": points.length }));
  }
  chart.replaceChildren(...nodes);
}

function showTransitions(job) {
  const body = document.querySelector("#transitions tbody");
  body.replaceChildren(
    ...job.transitions.map((t) =>
      el(
        "tr",
        {},
        el("td", {}, fmtTime(t.at)),
        el("td", {}, t.source ?? "–"),
        el("td", {}, stateBadge(t.target)),
        el("td", {}, String(t.attempt)),
        el("td", {}, t.actor ?? "worker"),
      ),
    ),
  );
}

function showOutcome(job) {
  const section = document.getElementById("outcome");
  const title = document.getElementById("outcome-title");
  const body = document.getElementById("outcome-body");
  section.classList.toggle("failed", Boolean(job.error));
  if (job.error) {
    title.textContent = "Error";
    kv(body, [
      ["code", job.error.code],
      ["message", job.error.message],
      ["retryable", job.error.retryable ? "yes" : "no"],
    ]);
  } else if (job.result) {
    const r = job.result;
    title.textContent = "Result";
    kv(body, [
      ["index", r.index_url],
      ["samples", fmtInt(r.samples)],
      ["shards", fmtInt(r.shards)],
      ["raw bytes", fmtBytes(r.raw_bytes)],
      ["stored bytes", fmtBytes(r.zip_bytes || r.raw_bytes)],
      ["columns", Object.entries(r.columns).map(([k, v]) => `${k}: ${v}`).join(", ")],
      ["read path", r.read_path ?? "–"],
    ]);
  } else if (job.waiting) {
    title.textContent = "Waiting";
    kv(body, [["reason", job.waiting.reason], ["holder", job.waiting.holder ?? "–"]]);
  } else {
    section.hidden = true;
    return;
  }
  section.hidden = false;
}

async function showDataset() {
  datasetShown = true;
  const section = document.getElementById("dataset");
  try {
    const d = await api(`${path}/dataset`);
    kv(document.getElementById("dataset-summary"), [
      ["location", d.location],
      ["samples", fmtInt(d.samples)],
      ["shards", fmtInt(d.shards)],
      ["raw bytes", fmtBytes(d.raw_bytes)],
      ["stored bytes", fmtBytes(d.stored_bytes)],
      ["compression", d.compression.map((c) => c ?? "none").join(", ")],
      ["hashes", d.hashes.join(", ") || "none"],
      ["shard size limit", d.size_limit ? fmtBytes(d.size_limit) : "none"],
    ]);
    document.querySelector("#dataset-columns tbody").replaceChildren(
      ...d.columns.map((c) =>
        el("tr", {}, el("td", {}, c.name), el("td", {}, el("code", {}, c.encoding)),
          el("td", {}, c.size === null ? "variable" : `${c.size} B`)),
      ),
    );
  } catch (exc) {
    kv(document.getElementById("dataset-summary"), [["error", `${exc.problem.code ?? ""} ${exc.message}`]]);
  }
  section.hidden = false;
}

// A cell's text: shortened values (bytes, arrays, images, long text) name their type and shape.
function cellText(value) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    return typeof value === "string" ? value : JSON.stringify(value);
  }
  if (!value.type) return JSON.stringify(value);
  const more = value.truncated ? " …" : "";
  switch (value.type) {
    case "ndarray":
      return `ndarray ${value.dtype} [${value.shape.join("×")}] ${value.head.join(", ")}${more}`;
    case "bytes":
      return `bytes(${value.length}) ${value.head}${more}`;
    case "image":
      return `image ${value.format ?? ""} ${value.mode} ${value.size.join("×")}`;
    case "list":
      return `list(${value.length}) ${value.head.map(cellText).join(", ")}${more}`;
    case "pkl":
      return `pkl(${value.length} bytes, not unpickled)`;
    case "str":
    case "json":
      return `${value.head}${more} (${value.length} chars)`;
    default:
      return JSON.stringify(value);
  }
}

async function showPreview() {
  const count = document.getElementById("preview-count").value;
  const table = document.getElementById("preview-table");
  try {
    const d = await api(`${path}/dataset?preview=${encodeURIComponent(count)}`);
    const names = d.columns.map((c) => c.name);
    table.replaceChildren(
      el("thead", {}, el("tr", {}, el("th", {}, "#"), ...names.map((n) => el("th", {}, n)))),
      el(
        "tbody",
        {},
        ...d.preview.samples.map((sample, i) =>
          el("tr", {}, el("td", {}, String(i)), ...names.map((n) => el("td", {}, cellText(sample[n])))),
        ),
      ),
    );
  } catch (exc) {
    table.replaceChildren(el("caption", { class: "error" }, exc.message));
  }
}

function render(job) {
  document.getElementById("job-state").replaceChildren(stateBadge(job.state));
  root.dataset.state = job.state;
  cancelButton.hidden = !["queued", "running"].includes(job.state);
  showRequest(job);
  showProgress(job);
  showTransitions(job);
  showOutcome(job);
  if (job.state === "succeeded" && !datasetShown) showDataset();
}

async function poll() {
  try {
    const job = await api(path);
    render(job);
    show(errorBanner, "");
    if (!FINAL.has(job.state)) setTimeout(poll, POLL_MS);
  } catch (exc) {
    if (exc instanceof ApiError && exc.status === 404) {
      show(errorBanner, "No such job, or it is not visible to you.");
      return;
    }
    show(errorBanner, `Could not load the job: ${exc.message}`);
    setTimeout(poll, POLL_MS * 3);
  }
}

cancelButton.addEventListener("click", () => dialog.showModal());
dialog.addEventListener("close", async () => {
  if (dialog.returnValue !== "cancel") return;
  try {
    render(await api(`${path}/cancel`, { method: "POST" }));
  } catch (exc) {
    show(errorBanner, `Cancel refused: ${exc.message}`);
  }
});
document.getElementById("preview-button").addEventListener("click", showPreview);

startSession().then(poll, (exc) => show(errorBanner, exc.message));
