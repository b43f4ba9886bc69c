// The submit form: the API validates (the same rules as for any client) and each field's error
// is shown beside the field; JSON fields are parsed here first so their syntax errors show too.
import { ApiError, api, show, startSession } from "./console.js";

const form = document.getElementById("submit-form");
const formError = document.getElementById("form-error");
const FIELDS = [
  "source_table", "target", "compression", "hashes", "size_limit", "partitions", "mode",
  "null_policy", "columns", "fill_values", "filter", "callback_url",
];
// Refusals that concern one field though they are not validation errors.
const CODE_FIELD = { source_not_allowed: "source_table", target_not_allowed: "target" };

function fieldError(name, message) {
  const node = document.getElementById(`err-${name}`);
  show(node, message);
  form.elements[name].setAttribute("aria-invalid", message ? "true" : "false");
}

function clearErrors() {
  FIELDS.forEach((name) => fieldError(name, ""));
  show(formError, "");
}

function parseJson(name, errors) {
  const text = form.elements[name].value.trim();
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch (exc) {
    errors[name] = `not valid JSON: ${exc.message}`;
    return undefined;
  }
}

// The body as the API expects it; a partition count that is not a whole number is sent as
// typed, so the API's own message is shown for it.
function body(errors) {
  const v = (name) => form.elements[name].value.trim();
  const request = { source_table: v("source_table"), target: v("target") };
  request.compression = v("compression") || null;
  request.hashes = v("hashes") ? v("hashes").split(",").map((h) => h.trim()).filter(Boolean) : [];
  const size = v("size_limit");
  if (size) request.size_limit = /^\d+$/.test(size) ? Number(size) : size;
  const partitions = v("partitions");
  if (partitions) request.partitions = /^-?\d+$/.test(partitions) ? Number(partitions) : partitions;
  request.mode = v("mode");
  request.null_policy = v("null_policy");
  const columns = parseJson("columns", errors);
  if (columns !== undefined) request.columns = columns;
  const fills = parseJson("fill_values", errors);
  if (fills !== undefined) request.fill_values = fills;
  const filter = parseJson("filter", errors);
  if (filter !== undefined) request.filter = filter;
  if (v("callback_url")) request.callback_url = v("callback_url");
  return request;
}

function showProblem(problem) {
  let placed = false;
  for (const item of problem.errors ?? []) {
    const name = item.field.split(".")[0];
    if (FIELDS.includes(name)) {
      fieldError(name, item.message);
      placed = true;
    }
  }
  const field = CODE_FIELD[problem.code];
  if (field) {
    fieldError(field, problem.detail);
    placed = true;
  }
  if (!placed) show(formError, `${problem.title ?? "Refused"}: ${problem.detail ?? ""}`);
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors();
  const errors = {};
  const request = body(errors);
  if (Object.keys(errors).length) {
    Object.entries(errors).forEach(([name, message]) => fieldError(name, message));
    return;
  }
  const button = document.getElementById("submit-button");
  button.disabled = true;
  try {
    const job = await api("/v1/jobs", { method: "POST", body: request });
    window.location.assign(`/ui/jobs/${encodeURIComponent(job.id)}`);
  } catch (exc) {
    if (exc instanceof ApiError) showProblem(exc.problem);
    else show(formError, exc.message);
  } finally {
    button.disabled = false;
  }
});

startSession().catch((exc) => show(formError, exc.message));
