// chroma-shift status page. Reads the admin JSON API with the operator's token, sent only as
// an Authorization header; the token lives in this tab's sessionStorage, never in a URL.
// Everything shown is set with textContent: values from the stores are never parsed as HTML.
"use strict";

const POLL_MS = 2000;
const TOKEN_KEY = "chroma-shift-admin-token";
const KNOWN_SECTIONS = new Set([
  "topology", "backends", "journal", "writes_held", "pending_intents", "dead_letters",
  "state", "collections", "shadow", "replay", "backfill", "audit",
]);

let token = null;
let pollTimer = null;
let switchState = null;

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// Formatting.

function text(id, value) {
  $(id).textContent = value === null || value === undefined ? "\u2014" : String(value);
}

function int(n) {
  return n === null || n === undefined ? "\u2014" : String(n);
}

function fixed(n, digits) {
  return typeof n === "number" ? n.toFixed(digits) : "\u2014";
}

function age(seconds) {
  if (typeof seconds !== "number") return "\u2014";
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.floor(seconds % 60) + " s";
  return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
}

function when(ms) {
  if (typeof ms !== "number") return "\u2014";
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function clock(ms) {
  if (typeof ms !== "number") return "\u2014";
  return new Date(ms).toISOString().slice(11, 19) + " UTC";
}

function bytes(n) {
  if (typeof n !== "number") return "\u2014";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return (unit === 0 ? String(value) : value.toFixed(1)) + " " + units[unit];
}

function cell(row, value, className) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "\u2014" : String(value);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function rows(id, items, fill, empty) {
  const body = $(id);
  body.replaceChildren();
  for (const item of items) {
    const row = document.createElement("tr");
    fill(row, item);
    body.appendChild(row);
  }
  if (items.length === 0 && empty) {
    const row = document.createElement("tr");
    const td = cell(row, empty, "muted");
    td.colSpan = body.parentElement.querySelectorAll("thead th").length;
    body.appendChild(row);
  }
}

function flag(id, good, yes, no) {
  const el = $(id);
  el.textContent = good ? yes : no;
  el.className = good ? "good" : "bad";
}

// ---------------------------------------------------------------------------------------------
// The admin API.

async function call(method, path, body) {
  const headers = { Authorization: "Bearer " + token, Accept: "application/json" };
  const init = { method, headers, cache: "no-store", credentials: "same-origin", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let json = null;
  try {
    json = await response.json();
  } catch (_) {
    json = null;
  }
  return { status: response.status, json, retryAfter: response.headers.get("Retry-After") };
}

function refusal(answer) {
  if (answer.status === 401) return "The admin token was refused.";
  if (answer.status === 429) {
    return "Too many failed admin logins from this address; retry in " +
      (answer.retryAfter || "a few") + " s.";
  }
  if (answer.status === 404) return "The admin API is off on this proxy ([admin] enabled = false).";
  const message = answer.json && answer.json.message ? answer.json.message : "";
  return "The admin API answered " + answer.status + (message ? ": " + message : ".");
}

// ---------------------------------------------------------------------------------------------
// Sign in and out.

function showLogin(message) {
  stopPolling();
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $("dashboard").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("updated").textContent = "";
  $("banner").hidden = true;
  $("login-error").hidden = !message;
  $("login-error").textContent = message || "";
  $("token").focus();
}

async function signIn(candidate) {
  token = candidate;
  let answer;
  try {
    answer = await call("GET", "/admin/status");
  } catch (e) {
    showLogin("The proxy did not answer: " + e.message);
    return;
  }
  if (answer.status !== 200) {
    showLogin(refusal(answer));
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, candidate);
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("logout").hidden = false;
  render(answer.json);
  poll();
}

function stopPolling() {
  if (pollTimer !== null) clearTimeout(pollTimer);
  pollTimer = null;
}

// Polls the status and the audit log, one round at a time.
async function poll() {
  stopPolling();
  if (token === null) return;
  try {
    const [status, audit] = await Promise.all([
      call("GET", "/admin/status"),
      call("GET", "/admin/audit?limit=20"),
    ]);
    if (status.status === 401 || status.status === 429) {
      showLogin(refusal(status));
      return;
    }
    if (status.status === 200) {
      render(status.json);
      $("banner").hidden = true;
    } else {
      banner(refusal(status));
    }
    if (audit.status === 200) renderAudit(audit.json.entries || []);
  } catch (e) {
    banner("The proxy did not answer: " + e.message + " (showing the last answer)");
  }
  if (token !== null) pollTimer = setTimeout(poll, POLL_MS);
}

function banner(message) {
  $("banner").textContent = message;
  $("banner").hidden = false;
}

// ---------------------------------------------------------------------------------------------
// Rendering /admin/status.

function phase(status) {
  const t = status.topology;
  if (typeof t.phase === "string") return t.phase;
  if (t.paused) return "paused (writes held)";
  if (status.writes_held > 0) return "switching (writes held)";
  return "serving";
}

function render(status) {
  const t = status.topology;
  text("primary", t.primary);
  text("secondary", t.secondary);
  text("epoch", int(t.epoch));
  text("phase", phase(status));
  $("phase").className = phase(status) === "serving" ? "good" : "warn";
  text("write-mode", t.write_mode);
  text("read-policy", "canary " + t.read_policy.canary_percent + " %, shadow " +
    t.read_policy.shadow_percent + " %");
  text("writes-held", int(status.writes_held));
  text("collections", int(status.collections));
  $("cutover").disabled = t.primary === "new";
  $("rollback").disabled = t.primary === "old";

  rows("backend-rows", ["old", "new"], (row, name) => {
    const health = status.backends[name];
    row.dataset.backend = name;
    cell(row, name);
    cell(row, name === t.primary ? "primary" : "secondary");
    const up = cell(row, health.up ? "up" : "down", health.up ? "good up" : "bad up");
    up.dataset.up = String(health.up);
    cell(row, fixed(health.latency_ms, 1) + " ms", "num");
    cell(row, int(health.consecutive_failures), "num");
    cell(row, clock(health.checked_at));
    cell(row, health.error, "reason");
  });
  flag("state-writable", status.state.writable, "yes", "no: " + status.state.unwritable_reason);
  text("state-journal-bytes", bytes(status.state.journal_bytes) +
    (status.state.max_journal_bytes ? " of " + bytes(status.state.max_journal_bytes) : ""));
  text("pending-intents", int(status.pending_intents.recorded) + " recorded, " +
    int(status.pending_intents.settling) + " settling");

  renderLag(status);
  renderReplay(status.replay);
  renderDeadLetters(status.dead_letters);
  renderBackfill(status.backfill);
  renderShadow(status.shadow);
  renderMore(status);
  $("updated").textContent = "updated " + clock(Date.now());
}

function renderLag(status) {
  const lagRows = [];
  for (const target of ["old", "new"]) {
    const journal = status.journal[target];
    text("journal-" + target, int(journal.entries) + " entries" +
      (journal.oldest_age_s === null ? "" : ", oldest " + age(journal.oldest_age_s)));
    $("journal-" + target).dataset.entries = String(journal.entries);
    for (const [key, lag] of Object.entries(journal.collections)) {
      lagRows.push({ target, key, lag });
    }
  }
  lagRows.sort((a, b) => b.lag.entries - a.lag.entries);
  rows("lag-rows", lagRows, (row, { target, key, lag }) => {
    row.dataset.target = target;
    row.dataset.collection = key;
    cell(row, target);
    cell(row, key);
    cell(row, lag.name);
    cell(row, int(lag.entries), "num entries");
    cell(row, age(lag.oldest_age_s), "num age");
  });
  $("lag-empty").hidden = lagRows.length > 0;
}

function renderReplay(replay) {
  const targets = replay ? ["old", "new"].filter((t) => replay[t]) : [];
  rows("replay-rows", targets, (row, target) => {
    const r = replay[target];
    cell(row, target);
    const stopped = r.stopped ? r.state + ": " + r.stopped.reason : r.state;
    cell(row, stopped, r.stopped ? "bad" : "good");
    cell(row, int(r.lanes), "num");
    cell(row, bytes(r.held_bytes), "num");
    const waiting = Object.entries(r.waiting || {}).map(([k, v]) => k + ": " + v);
    cell(row, waiting.length ? waiting.join("; ") : "\u2014", "reason");
  }, "no replay in this process");
}

function renderDeadLetters(dead) {
  const count = $("dead-letter-count");
  count.textContent = int(dead.count);
  count.className = dead.count > 0 ? "pill bad" : "pill";
  rows("dead-letter-rows", dead.first, (row, letter) => {
    row.dataset.seq = String(letter.seq);
    cell(row, int(letter.seq), "num");
    cell(row, letter.target);
    cell(row, letter.collection);
    cell(row, when(letter.parked_ms));
    cell(row, letter.reason, "reason");
  }, "none: every mirrored write was applied or waits in the journal");
}

function renderBackfill(backfill) {
  if (!backfill) {
    text("backfill-state", "not run by this process");
    return;
  }
  text("backfill-state", backfill.state);
  text("backfill-records", int(backfill.done_records) + " of " + int(backfill.total_records));
  $("backfill-records").dataset.done = String(backfill.done_records);
  $("backfill-records").dataset.total = String(backfill.total_records);
  text("backfill-rate", fixed(backfill.records_per_second, 1) + " records/s");
  text("backfill-eta", backfill.eta_seconds === null ? null : age(backfill.eta_seconds));
  text("backfill-error", backfill.error);
  const progress = $("backfill-progress");
  progress.max = Math.max(backfill.total_records, 1);
  progress.value = backfill.done_records;
  rows("backfill-rows", backfill.collections || [], (row, c) => {
    row.dataset.collection = c.client_id;
    cell(row, c.tenant + "/" + c.database + "/" + c.name);
    cell(row, int(c.done), "num");
    cell(row, int(c.total), "num");
    cell(row, c.finished ? "yes" : "no");
  }, "no collection copied yet");
}

function renderShadow(shadow) {
  const totals = $("shadow-totals");
  totals.replaceChildren();
  if (!shadow) {
    rows("shadow-rows", [], () => {}, "no shadow reads in this process");
    rows("mismatch-rows", [], () => {});
    return;
  }
  for (const [outcome, n] of Object.entries(shadow.totals || {})) {
    const dt = document.createElement("dt");
    dt.textContent = outcome;
    const dd = document.createElement("dd");
    dd.textContent = int(n);
    dd.id = "shadow-total-" + outcome;
    totals.append(dt, dd);
  }
  rows("shadow-rows", shadow.collections || [], (row, c) => {
    row.dataset.collection = c.collection;
    cell(row, c.collection);
    cell(row, c.name);
    cell(row, int((c.shadow && c.shadow.match) || 0), "num");
    cell(row, int((c.shadow && c.shadow.mismatch) || 0), "num");
    cell(row, fixed(c.recall_last, 3), "num");
    cell(row, fixed(c.recall_min, 3), "num");
    cell(row, fixed(c.drift_max, 4), "num");
  }, "no shadow reads yet (the read policy's shadow_percent is 0, or no reads)");
  rows("mismatch-rows", shadow.recent_mismatches || [], (row, m) => {
    row.dataset.mismatch = m.operation;
    cell(row, when(m.at_ms));
    cell(row, m.collection ? m.collection.name + " (" + m.collection.id + ")" : null);
    cell(row, m.operation);
    cell(row, m.description, "reason");
  }, "no mismatch");
}

function renderAudit(entries) {
  rows("audit-rows", entries, (row, e) => {
    row.dataset.action = e.action;
    cell(row, when(e.at_ms));
    cell(row, e.actor);
    cell(row, e.action);
    cell(row, e.detail);
    const outcome = e.outcome.reason ? e.outcome.status + ": " + e.outcome.reason : e.outcome.status;
    cell(row, outcome, e.outcome.status === "done" ? "good" : "bad");
  }, "no admin action recorded");
}

// Sections this page does not know (added by newer components) are shown as they come.
function renderMore(status) {
  const facts = $("more-facts");
  facts.replaceChildren();
  const extra = Object.keys(status).filter((k) => !KNOWN_SECTIONS.has(k));
  for (const key of extra) {
    const dt = document.createElement("dt");
    dt.textContent = key;
    const dd = document.createElement("dd");
    const code = document.createElement("code");
    code.textContent = JSON.stringify(status[key]);
    dd.appendChild(code);
    facts.append(dt, dd);
  }
  $("more").hidden = extra.length === 0;
}

// ---------------------------------------------------------------------------------------------
// Cutover and rollback: a dry run first, its plan and checks, then a typed confirmation.

async function openSwitch(verb) {
  switchState = { verb, dryRunPassed: false, busy: false };
  $("switch-word").textContent = verb;
  $("switch-force").checked = false;
  $("switch-confirm").value = "";
  $("switch-result").textContent = "";
  $("switch-dialog").showModal();
  await dryRun();
}

function switchTitle(verb, stage) {
  return (verb === "cutover" ? "Cut over to new" : "Roll back to old") + ": " + stage;
}

async function dryRun() {
  const state = switchState;
  state.dryRunPassed = false;
  $("switch-title").textContent = switchTitle(state.verb, "dry run");
  updateRun();
  $("switch-summary").textContent = "Running the dry run\u2026";
  $("switch-checks").replaceChildren();
  $("switch-plan").replaceChildren();
  $("switch-notes").replaceChildren();
  $("switch-refused").hidden = true;
  let answer;
  try {
    answer = await call("POST", "/admin/" + state.verb,
      { dry_run: true, force: $("switch-force").checked });
  } catch (e) {
    $("switch-summary").textContent = "The proxy did not answer: " + e.message;
    return;
  }
  if (state !== switchState) return;
  const report = answer.json;
  if ((answer.status !== 200 && answer.status !== 409) || !report || !report.checks) {
    $("switch-summary").textContent = refusal(answer);
    return;
  }
  showReport(report);
  state.dryRunPassed = answer.status === 200 && !report.refused;
  updateRun();
}

function showReport(report) {
  $("switch-summary").textContent = (report.dry_run ? "Dry run: " : "") + "from " +
    report.from + " to " + report.to + ", epoch " + report.epoch + ".";
  rows("switch-checks", report.checks, (row, check) => {
    row.dataset.check = check.name;
    cell(row, check.name);
    cell(row, check.passed ? "passed" : "failed", check.passed ? "good" : "bad");
    cell(row, check.detail, "reason");
  });
  const plan = $("switch-plan");
  plan.replaceChildren();
  for (const step of report.plan) {
    const li = document.createElement("li");
    li.textContent = step;
    plan.appendChild(li);
  }
  const notes = $("switch-notes");
  notes.replaceChildren();
  for (const note of report.notes || []) {
    const li = document.createElement("li");
    li.textContent = note;
    notes.appendChild(li);
  }
  $("switch-refused").hidden = !report.refused;
  $("switch-refused").textContent = report.refused ? "Refused: " + report.refused : "";
}

function updateRun() {
  const state = switchState;
  const typed = $("switch-confirm").value.trim() === (state ? state.verb : null);
  $("switch-run").disabled = !(state && state.dryRunPassed && typed && !state.busy);
  $("switch-run").textContent = state ? "Run " + state.verb : "Run";
}

async function runSwitch() {
  const state = switchState;
  if (!state || !state.dryRunPassed || $("switch-confirm").value.trim() !== state.verb) return;
  state.busy = true;
  updateRun();
  $("switch-result").textContent = "Running the " + state.verb + "\u2026";
  $("switch-result").className = "";
  let answer;
  try {
    answer = await call("POST", "/admin/" + state.verb,
      { dry_run: false, force: $("switch-force").checked });
  } catch (e) {
    $("switch-result").textContent = "The proxy did not answer: " + e.message;
    state.busy = false;
    updateRun();
    return;
  }
  const report = answer.json;
  if (report && report.checks) showReport(report);
  if (answer.status === 200 && report && report.switched) {
    $("switch-result").textContent = "Done: " + report.to + " is primary, epoch " + report.epoch +
      "; writes held " + fixed(report.writes_held_ms, 0) + " ms, " + report.drained_entries +
      " journal entries drained.";
    $("switch-result").className = "good";
    $("switch-title").textContent = switchTitle(state.verb, "done");
  } else {
    $("switch-result").textContent = report && report.refused ? "Refused: " + report.refused
      : refusal(answer);
    $("switch-result").className = "bad";
    $("switch-title").textContent = switchTitle(state.verb, "not done");
  }
  // A switch is run once per confirmation.
  state.dryRunPassed = false;
  state.busy = false;
  $("switch-confirm").value = "";
  updateRun();
  poll();
}

// ---------------------------------------------------------------------------------------------
// Wiring.

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const candidate = $("token").value.trim();
    $("token").value = "";
    if (candidate) signIn(candidate);
  });
  $("logout").addEventListener("click", () => showLogin(""));
  $("cutover").addEventListener("click", () => openSwitch("cutover"));
  $("rollback").addEventListener("click", () => openSwitch("rollback"));
  $("switch-force").addEventListener("change", () => {
    $("switch-confirm").value = "";
    dryRun();
  });
  $("switch-confirm").addEventListener("input", updateRun);
  $("switch-confirm").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      runSwitch();
    }
  });
  $("switch-run").addEventListener("click", runSwitch);
  $("switch-close").addEventListener("click", () => {
    switchState = null;
    $("switch-dialog").close();
  });
  $("switch-dialog").addEventListener("close", () => {
    switchState = null;
  });
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    signIn(saved);
  } else {
    showLogin("");
  }
});
