// The redisbreaker dashboard: renders the state the server streams on /events.
// Plain DOM with textContent only, so nothing read from Redis is ever parsed as HTML.
"use strict";

const TOKEN_KEY = "redisbreaker.token";
const STATE_LABEL = {
  closed: "closed", open: "open", half_open: "half-open",
  forced_open: "forced open", disabled: "disabled",
};

let last = null;           // the latest full state
let clockSkew = 0;         // server clock minus ours, ms
let lastHeard = 0;         // when the stream last said anything (our clock)
let pending = null;        // the action the dialog is asking about

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child != null) node.append(child);
  }
  return node;
}

function serverNow() { return Date.now() + clockSkew; }

function ago(ms) {
  if (!ms) return "";
  const s = Math.max(0, Math.round((serverNow() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

function duration(seconds) {
  const s = Math.ceil(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function badge(state) {
  return el("span", { class: `badge state-${state}`, text: STATE_LABEL[state] || state });
}

function label(b) {
  return b.scope === "cluster" ? b.name : `${b.name} [${b.scope} ${b.scope_key}]`;
}

// -- rendering ---------------------------------------------------------------------

function render(state) {
  last = state;
  clockSkew = state.server_ms - Date.now();
  document.body.classList.toggle("control-on", state.control);
  for (const node of document.querySelectorAll(".control")) node.hidden = !state.control;
  $("mode").textContent = state.control ? "control on" : "read-only";
  $("mode").className = state.control ? "mode mode-control" : "mode";
  renderSummary(state.breakers);
  renderBreakers(state.breakers, state.control);
  renderPaused(state.workers);
  renderTransactions(state.transactions);
  renderDeadLetters(state.dead_letters || []);
  renderEvents(state.events);
}

function renderSummary(breakers) {
  const counts = {};
  for (const b of breakers) counts[b.state] = (counts[b.state] || 0) + 1;
  const parts = [`${breakers.length} breakers`];
  for (const s of ["open", "forced_open", "half_open", "disabled"]) {
    if (counts[s]) parts.push(`${counts[s]} ${STATE_LABEL[s]}`);
  }
  $("summary").textContent = parts.join(" · ");
}

function renderBreakers(breakers, control) {
  const filter = $("filter").value.trim().toLowerCase();
  const start = performance.now();
  const rows = document.createDocumentFragment();
  for (const b of breakers) {
    const text = `${label(b)} ${b.state} ${STATE_LABEL[b.state]}`.toLowerCase();
    const rate = Math.round(b.failure_rate * 100);
    const reason = el("td", { class: "reason" });
    if (b.reason) reason.append(el("div", { text: b.reason }));
    const detail = b.reason_detail || {};
    const who = [detail.error, detail.by, ago(detail.at_ms)].filter(Boolean).join(" · ");
    if (who) reason.append(el("div", { class: "muted", text: who }));
    const retry = el("td", { class: "retry" });
    if (b.state === "open") {
      retry.setAttribute("data-deadline", String(start + b.retry_after * 1000));
    } else if (b.state === "forced_open") {
      retry.append(el("span", { class: "muted", text: "until reset" }));
    }
    const row = el("tr", {
      "data-name": b.name, "data-scope": b.scope, "data-key": b.scope_key, "data-state": b.state,
      hidden: Boolean(filter) && !text.includes(filter),
    },
      el("td", { class: "name" }, el("span", { text: b.name }),
        b.scope === "cluster" ? null : el("span", { class: "scope", text: `${b.scope} ${b.scope_key}` })),
      el("td", {}, badge(b.state)),
      el("td", {}, el("span", { class: "rate" },
        el("span", { class: "bar" }, el("span", { class: `fill fill-${Math.min(10, Math.round(rate / 10))}` })),
        el("span", { text: `${rate}%` }))),
      el("td", { class: "num", text: String(b.calls) }),
      el("td", { class: "num", text: String(b.trips), title: `${b.totals.trips} trips ever` }),
      retry,
      reason,
      control ? el("td", { class: "actions" }, ...actionsFor(b)) : null,
    );
    rows.append(row);
  }
  $("breakers").tBodies[0].replaceChildren(rows);
  $("no-breakers").hidden = breakers.length > 0;
  tick();
}

function actionsFor(b) {
  const act = (action, text, cls) => el("button", {
    type: "button", class: `act ${cls || ""}`, text, "data-action": action,
  });
  if (b.name === "pause") return [act("resume", "Resume", "good")];
  const out = [];
  if (b.state !== "closed") out.push(act("reset", "Reset", "good"));
  if (b.state !== "forced_open") out.push(act("force-open", "Force open", "bad"));
  return out;
}

function renderPaused(workers) {
  const rows = [];
  for (const w of workers) {
    for (const [queue, p] of Object.entries(w.paused)) {
      rows.push(el("tr", { "data-worker": w.worker, "data-queue": queue },
        el("td", { text: w.worker }), el("td", { text: w.host }),
        el("td", {}, el("span", { class: "badge state-open", text: queue })),
        el("td", { text: ago(p.since_ms) }), el("td", { text: p.by || p.mode || "" })));
    }
  }
  $("paused").tBodies[0].replaceChildren(...rows);
  $("no-paused").hidden = rows.length > 0;
  $("paused").hidden = rows.length === 0;

  $("workers").tBodies[0].replaceChildren(...workers.map((w) => el("tr", { "data-worker": w.worker },
    el("td", { text: w.worker }), el("td", { text: w.host }), el("td", { class: "num", text: String(w.pid) }),
    el("td", {}, ...w.queues.map((q) => el("span", {
      class: q in w.paused ? "queue queue-paused" : "queue", text: q,
    }))),
    el("td", { text: ago(w.at_ms) }))));
  $("no-workers").hidden = workers.length > 0;
  $("workers").hidden = workers.length === 0;
}

function renderTransactions(txs) {
  const order = (t) => (t.outcome === "pending" ? 0 : 1);
  const sorted = [...txs].sort((a, b) => order(a) - order(b));
  $("transactions").tBodies[0].replaceChildren(...sorted.map((t) => {
    const waiting = Math.max(0, t.participants - t.yes - t.no);
    const deadline = t.outcome === "pending" ? duration(Math.max(0, t.deadline_ms - serverNow()) / 1000) : "";
    return el("tr", { "data-tx": t.tx_id, "data-outcome": t.outcome, class: t.outcome === "pending" ? "" : "decided" },
      el("td", { class: "name", text: t.tx_id, title: t.reason }),
      el("td", {}, el("span", { class: `badge outcome-${t.outcome}`, text: t.outcome })),
      el("td", { class: "num yes", text: String(t.yes) }),
      el("td", { class: "num no", text: String(t.no) }),
      el("td", { class: "num", text: String(waiting) }),
      el("td", { text: deadline }));
  }));
  $("no-transactions").hidden = txs.length > 0;
  $("transactions").hidden = txs.length === 0;
}

function renderDeadLetters(queues) {
  $("dead-letters").tBodies[0].replaceChildren(...queues.map((q) =>
    el("tr", { "data-queue": q.queue, "data-entries": String(q.entries) },
      el("td", { class: "name", text: q.queue }),
      el("td", { class: "num", text: String(q.entries) }),
      el("td", { class: "num", text: String(q.added) }),
      el("td", { class: "num", text: String(q.dropped) }),
      el("td", { class: "num", text: String(q.replayed) }))));
  $("no-dead-letters").hidden = queues.length > 0;
  $("dead-letters").hidden = queues.length === 0;
}

function renderEvents(events) {
  $("events").replaceChildren(...events.map((e) => {
    if (e.kind === "breaker") {
      const who = e.scope === "cluster" ? e.name : `${e.name} [${e.scope} ${e.scope_key}]`;
      return el("li", { "data-kind": "breaker" },
        el("span", { class: "when", text: clock(e.at_ms) }),
        el("span", { class: "what", text: who }),
        badge(e.old), el("span", { class: "arrow", text: "→" }), badge(e.new),
        el("span", { class: "muted", text: e.origin }));
    }
    return el("li", { "data-kind": "transaction" },
      el("span", { class: "when", text: clock(e.at_ms) }),
      el("span", { class: "what", text: `transaction ${e.tx_id}` }),
      el("span", { class: `badge outcome-${e.outcome}`, text: e.outcome }),
      el("span", { class: "muted", text: `${e.yes} yes · ${e.no} no of ${e.participants} — ${e.reason}` }));
  }));
  $("no-events").hidden = events.length > 0;
}

// Countdowns run on our clock between updates, so "retry in" moves every second
// even when the server has nothing new to say.
function tick() {
  const now = performance.now();
  for (const cell of document.querySelectorAll("[data-deadline]")) {
    const left = (Number(cell.getAttribute("data-deadline")) - now) / 1000;
    cell.textContent = left > 0 ? duration(left) : "trial due";
  }
  const quiet = Date.now() - lastHeard;
  if (lastHeard && quiet > 3500) setLink("stale", `no update for ${Math.round(quiet / 1000)}s`);
}

function setLink(kind, text) {
  $("link").className = `link ${kind}`;
  $("link").textContent = text;
}

function showProblem(text) {
  $("problem").hidden = !text;
  $("problem").textContent = text || "";
}

// -- live stream -------------------------------------------------------------------

function connect() {
  const source = new EventSource("events");
  source.onopen = () => setLink("live", "live");
  source.onerror = () => setLink("down", "reconnecting…");
  source.onmessage = (message) => {
    lastHeard = Date.now();
    setLink("live", "live");
    const data = JSON.parse(message.data);
    if (data.error) {
      showProblem(`Redis: ${data.error}`);
      return;
    }
    showProblem("");
    render(data);
  };
  source.addEventListener("tick", (message) => {
    lastHeard = Date.now();
    setLink("live", "live");
    clockSkew = JSON.parse(message.data).server_ms - Date.now();
  });
}

// -- control -----------------------------------------------------------------------

function ask(action, target) {
  pending = { action, target };
  const isPause = action === "pause";
  const titles = {
    reset: "Reset", "force-open": "Force open", resume: "Resume", pause: "Pause consumption",
  };
  $("ask-title").textContent = isPause ? titles.pause : `${titles[action]} ${label(target)}`;
  $("ask-scope-row").hidden = !isPause;
  $("ask-key-row").hidden = !isPause;
  $("ask-seconds-row").hidden = !isPause;
  $("ask-token-row").hidden = Boolean(sessionStorage.getItem(TOKEN_KEY));
  $("ask-reason").value = "";
  $("ask-error").hidden = true;
  $("ask").showModal();
  $("ask-reason").focus();
}

async function submitAsk(event) {
  event.preventDefault();
  const typed = $("ask-token").value.trim();
  if (typed) sessionStorage.setItem(TOKEN_KEY, typed);
  const token = sessionStorage.getItem(TOKEN_KEY) || "";
  const { action, target } = pending;
  const reason = $("ask-reason").value.trim() || null;
  let url;
  let body;
  if (action === "pause") {
    const seconds = $("ask-seconds").value ? Number($("ask-seconds").value) : null;
    const scope = $("ask-scope").value;
    url = "api/pause";
    body = { scope, key: scope === "cluster" ? "" : $("ask-key").value.trim(), seconds, reason };
  } else if (action === "resume") {
    url = "api/resume";
    body = { scope: target.scope, key: target.scope_key, reason };
  } else {
    url = `api/breakers/${action}`;
    body = { name: target.name, scope: target.scope, key: target.scope_key, reason };
  }
  const answer = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
    body: JSON.stringify(body),
  }).catch((err) => ({ ok: false, status: 0, json: async () => ({ error: String(err) }) }));
  if (answer.ok) {
    $("ask-token").value = "";
    $("ask").close();
    return;
  }
  const detail = await answer.json().catch(() => ({}));
  if (answer.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("ask-token-row").hidden = false;
  }
  $("ask-error").textContent = detail.error || `failed (HTTP ${answer.status})`;
  $("ask-error").hidden = false;
}

function onBreakerClick(event) {
  const button = event.target.closest("button[data-action]");
  if (!button || !last) return;
  const row = button.closest("tr");
  const target = last.breakers.find((b) => b.name === row.getAttribute("data-name")
    && b.scope === row.getAttribute("data-scope") && b.scope_key === row.getAttribute("data-key"));
  if (target) ask(button.getAttribute("data-action"), target);
}

document.addEventListener("DOMContentLoaded", () => {
  $("breakers").tBodies[0].addEventListener("click", onBreakerClick);
  $("pause-button").addEventListener("click", () => ask("pause", null));
  $("ask-form").addEventListener("submit", submitAsk);
  $("ask-cancel").addEventListener("click", () => $("ask").close());
  $("ask-scope").addEventListener("change", () => {
    $("ask-key").disabled = $("ask-scope").value === "cluster";
  });
  $("ask-key").disabled = true;
  $("filter").addEventListener("input", () => last && renderBreakers(last.breakers, last.control));
  setInterval(tick, 250);
  connect();
});
