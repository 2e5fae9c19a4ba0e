// The operator console (handlers and their shadow candidates, dead letters): reads and acts through the admin API with the bearer token the operator
// typed in (kept in sessionStorage for this tab only, never in the URL). No framework, no build.
"use strict";

const TOKEN_KEY = "order-host-admin-token";
const $ = (sel) => document.querySelector(sel);

function token() { return sessionStorage.getItem(TOKEN_KEY); }

// One admin API call; rejects with the API's own message on a non-2xx answer.
async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${token()}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(data?.error?.message || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  row.appendChild(td);
}

async function loadHandlers() {
  const handlers = await api("GET", "/admin/handlers");
  const body = $("#handlers tbody");
  body.replaceChildren();
  for (const h of handlers) {
    const row = document.createElement("tr");
    row.dataset.handler = h.name;
    const v = h.current;
    cell(row, h.name);
    cell(row, v ? v.short_version : "(none)");
    cell(row, v?.source);
    cell(row, v?.events.join(", "));
    cell(row, v?.invocations);
    cell(row, v?.errors);
    cell(row, v?.p99_ms?.toFixed(2));
    const s = h.shadow;
    cell(row, s ? `${s.state}: ${s.compared} compared, ${s.different} different, ${s.candidate_errors} errors` : "");
    if (s) {
      row.classList.add("has-shadow");
      row.addEventListener("click", () => showShadow(h.name));
    }
    body.appendChild(row);
  }
}

// One side of a comparison, as a line: the actions' kinds and subjects, or the error.
function answer(side) {
  if (side.outcome !== "actions") return `${side.outcome}: ${side.output}`;
  return side.output.map((a) => {
    const [kind, body] = Object.entries(a)[0];
    return `${kind} ${body.subject ?? body.status ?? body.message ?? ""}`.trim();
  }).join("; ") || "(no actions)";
}

async function showShadow(name) {
  const s = await api("GET", `/admin/handlers/${encodeURIComponent(name)}/shadow`);
  const section = $("#shadow");
  section.hidden = false;
  section.dataset.handler = name;
  section.dataset.state = s.state;
  $("#shadow-handler").textContent = name;
  const fields = $("#shadow-fields");
  fields.replaceChildren();
  const policy = [s.policy.promote_after && `promote after ${s.policy.promote_after}`,
    s.policy.max_diff_rate != null && `max diff rate ${s.policy.max_diff_rate}`,
    s.policy.max_errors != null && `max errors ${s.policy.max_errors}`].filter(Boolean).join(", ");
  const rows = [["state", s.state], ["candidate", s.candidate_version.slice(0, 12)],
    ["policy", policy || "none: promote or abort by hand"], ["decided by", s.decided_by], ["reason", s.reason],
    ["compared", s.compared], ["identical", s.identical], ["different", s.different],
    ["candidate errors", s.candidate_errors], ["skipped", s.skipped],
    ["serving p50 / p99 ms", `${s.serving.p50_ms.toFixed(2)} / ${s.serving.p99_ms.toFixed(2)}`],
    ["candidate p50 / p99 ms", `${s.candidate.p50_ms.toFixed(2)} / ${s.candidate.p99_ms.toFixed(2)}`]];
  for (const [label, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.textContent = value ?? "";
    dd.dataset.field = label;
    fields.append(dt, dd);
  }
  const body = $("#diffs tbody");
  body.replaceChildren();
  for (const d of [...s.diffs].reverse()) {
    const row = document.createElement("tr");
    row.className = "diff";
    row.title = JSON.stringify(d.input, null, 2);
    for (const text of [new Date(d.at).toLocaleString(), d.order_id, d.event_id, answer(d.serving), answer(d.candidate)]) {
      cell(row, text);
    }
    body.appendChild(row);
  }
  $("#no-diffs").hidden = s.diffs.length > 0;
  const running = s.state === "running";
  $("#promote").disabled = !running;
  $("#abort").disabled = !running;
}

async function decide(action) {
  const name = $("#shadow").dataset.handler;
  const result = $("#shadow-result");
  try {
    const path = `/admin/handlers/${encodeURIComponent(name)}/shadow`;
    if (action === "promote") await api("POST", `${path}/promote`);
    else await api("DELETE", path);
    result.textContent = action === "promote" ? "promoted: it serves now" : "aborted";
    result.className = "";
  } catch (e) {
    result.textContent = e.message;
    result.className = "error";
  }
  result.dataset.outcome = result.textContent;
  await Promise.all([loadHandlers(), showShadow(name)]);
}

function filterQuery() {
  const params = new URLSearchParams();
  for (const [name, value] of new FormData($("#filters"))) {
    if (value.trim()) params.set(name, value.trim());
  }
  return params.toString();
}

async function loadDeadLetters() {
  const page = await api("GET", `/admin/dead-letters?${filterQuery()}`);
  const body = $("#dead-letters tbody");
  body.replaceChildren();
  for (const d of page.items) {
    const row = document.createElement("tr");
    row.className = "letter";
    row.dataset.id = d.id;
    row.dataset.state = d.state;
    for (const text of [d.id, d.state, d.handler, d.class, d.order_id, new Date(d.created_at).toLocaleString(), d.reason]) {
      cell(row, text);
    }
    row.addEventListener("click", () => showDetail(d.id));
    body.appendChild(row);
  }
  $("#empty").hidden = page.items.length > 0;
  $("#counts").textContent = page.counts.map((c) => `${c.count} × ${c.handler} / ${c.class}`).join(" · ");
}

async function showDetail(id) {
  const d = await api("GET", `/admin/dead-letters/${id}`);
  const letter = d.dead_letter;
  $("#detail").hidden = false;
  $("#detail").dataset.id = id;
  $("#detail").dataset.state = letter.state;
  $("#detail-id").textContent = id;
  const fields = $("#detail-fields");
  fields.replaceChildren();
  const rows = [["state", letter.state], ["handler", `${letter.handler} @ ${letter.handler_version.slice(0, 12)}`],
    ["class", letter.class], ["reason", letter.reason], ["attempts", letter.attempts],
    ["event", d.event ? `${d.event.type} ${d.event.event_id}` : `undecodable: ${d.undecodable}`],
    ["order", letter.order_id], ["source", `${letter.topic}[${letter.partition}]@${letter.offset}`],
    ["failed redrives", letter.failures.length], ["resolution", letter.resolution]];
  for (const [name, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value ?? "";
    dd.dataset.field = name;
    fields.append(dt, dd);
  }
  $("#detail-record").textContent = JSON.stringify(d.record, null, 2);
  const open = letter.state === "open";
  $("#redrive").disabled = !open;
  $("#discard").disabled = !open;
}

async function act(action) {
  const id = $("#detail").dataset.id;
  const result = $("#action-result");
  try {
    if (action === "redrive") {
      const r = await api("POST", `/admin/dead-letters/${id}/redrive`);
      result.textContent = r.outcome === "applied" ? "applied" : `failed again: ${r.reason}`;
    } else {
      await api("POST", `/admin/dead-letters/${id}/discard`, { reason: $("#discard-reason").value });
      result.textContent = "discarded";
    }
    result.className = "";
  } catch (e) {
    result.textContent = e.message;
    result.className = "error";
  }
  result.dataset.outcome = result.textContent;
  await Promise.all([loadDeadLetters(), showDetail(id)]);
}

async function open() {
  try {
    await Promise.all([loadHandlers(), loadDeadLetters()]);
    $("#login").hidden = true;
    $("#console").hidden = false;
    $("#logout").hidden = false;
  } catch (e) {
    const error = $("#login-error");
    error.textContent = e.status === 401 ? "That token was refused." : e.status === 404
      ? "The admin API is off (ADMIN_TOKEN is not set on the host)." : e.message;
    error.hidden = false;
    sessionStorage.removeItem(TOKEN_KEY);
  }
}

$("#login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, new FormData(event.target).get("token"));
  open();
});
$("#logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
$("#filters").addEventListener("submit", (event) => { event.preventDefault(); loadDeadLetters(); });
$("#redrive").addEventListener("click", () => act("redrive"));
$("#promote").addEventListener("click", () => decide("promote"));
$("#abort").addEventListener("click", () => decide("abort"));
$("#discard").addEventListener("click", () => act("discard"));
if (token()) open();
