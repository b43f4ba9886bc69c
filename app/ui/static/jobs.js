// The jobs list: newest first, filtered by state, paged by cursor, refreshed every 2 seconds.
import {
  api, el, fmtBytes, fmtDuration, fmtInt, progressFraction, rowsPerSecond, seconds, show,
  startSession, stateBadge,
} from "./console.js";

const PAGE = 20;
const REFRESH_MS = 2000;
const body = document.getElementById("jobs-body");
const filter = document.getElementById("state-filter");
const newer = document.getElementById("newer");
const older = document.getElementById("older");
const label = document.getElementById("page-label");
const error = document.getElementById("jobs-error");
const empty = document.getElementById("jobs-empty");

// cursors[i] is the cursor of page i (null for the first page).
let cursors = [null];
let nextCursor = null;
let timer = null;

function progressCell(job) {
  const p = job.progress;
  const rate = rowsPerSecond(job);
  const parts = p.partitions_total ? `${p.partitions_done}/${p.partitions_total} partitions` : "";
  return el(
    "td",
    { class: "progress-col" },
    el("progress", { max: 1, value: progressFraction(job).toFixed(4) }),
    el(
      "div",
      { class: "progress-text" },
      `${fmtInt(p.rows_written)} rows · ${fmtInt(p.shards_written)} shards · ` +
        `${fmtBytes(p.bytes_written)}${parts ? ` · ${parts}` : ""}` +
        `${rate !== null ? ` · ${fmtInt(Math.round(rate))} rows/s` : ""}`,
    ),
  );
}

function row(job) {
  const r = job.request;
  return el(
    "tr",
    { "data-job-id": job.id, "data-state": job.state },
    el("td", {}, el("a", { href: `/ui/jobs/${encodeURIComponent(job.id)}` }, job.id)),
    el("td", {}, stateBadge(job.state)),
    el("td", { class: "wrap" }, r.source_table),
    el("td", { class: "wrap" }, r.target),
    el("td", {}, fmtDuration(seconds(job.created_at)), " ago"),
    el("td", {}, job.started_at ? fmtDuration(seconds(job.started_at, job.finished_at)) : "–"),
    progressCell(job),
  );
}

async function refresh() {
  const params = new URLSearchParams({ limit: String(PAGE) });
  if (filter.value) params.set("state", filter.value);
  const cursor = cursors[cursors.length - 1];
  if (cursor) params.set("cursor", cursor);
  try {
    const page = await api(`/v1/jobs?${params}`);
    body.replaceChildren(...page.jobs.map(row));
    nextCursor = page.next_cursor;
    show(error, "");
    empty.hidden = page.jobs.length > 0;
  } catch (exc) {
    show(error, `Could not load the jobs: ${exc.message}`);
  }
  older.disabled = !nextCursor;
  newer.disabled = cursors.length <= 1;
  label.textContent = `page ${cursors.length}`;
}

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(async () => {
    await refresh();
    schedule();
  }, REFRESH_MS);
}

async function reload() {
  await refresh();
  schedule();
}

filter.addEventListener("change", () => {
  cursors = [null];
  reload();
});
older.addEventListener("click", () => {
  if (!nextCursor) return;
  cursors.push(nextCursor);
  reload();
});
newer.addEventListener("click", () => {
  if (cursors.length > 1) cursors.pop();
  reload();
});

startSession().then(reload, (exc) => show(error, exc.message));
