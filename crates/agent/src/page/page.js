// The agent's status page. The control token is asked for once and kept in
// this tab's sessionStorage: never in a URL, so never in the history, a
// referrer or a server log. Data goes into the page as text nodes only.
"use strict";

const KEY = "ferry.token";
const HISTORY_S = 600;
let timer = null;
let samples = [];            // [{t, lag}] for the chart
const previous = new Map();  // shard -> {t, copied} for snapshot rates

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function headers() {
  const h = { "Accept": "application/json" };
  const t = sessionStorage.getItem(KEY);
  if (t) h["Authorization"] = "Bearer " + t;
  return h;
}

async function api(path, body) {
  const opts = { headers: headers(), cache: "no-store", credentials: "same-origin" };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  return fetch(path, opts);
}

function showLogin(message) {
  if (timer) { clearInterval(timer); timer = null; }
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  if (!timer) timer = setInterval(refresh, 1000);
}

async function refresh() {
  let r;
  try {
    r = await api("/v1/status");
  } catch (e) {
    $("updated").textContent = "agent unreachable: " + e.message;
    return;
  }
  if (r.status === 401) {
    sessionStorage.removeItem(KEY);
    showLogin("The agent refused the token: give the one in the journal directory's agent.token.");
    return;
  }
  if (!r.ok) {
    $("updated").textContent = "status answered " + r.status;
    return;
  }
  render(await r.json());
}

function fmtDuration(s) {
  if (!isFinite(s) || s < 0) return "";
  if (s < 60) return Math.round(s) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
}

function bar(fraction) {
  const b = el("span", null, "bar");
  const fill = el("span");
  fill.style.width = Math.max(0, Math.min(100, fraction * 100)).toFixed(1) + "%";
  b.appendChild(fill);
  return b;
}

function cell(row, text, cls) {
  const td = el("td", text, cls);
  row.appendChild(td);
  return td;
}

function render(s) {
  const now = Date.now() / 1000;
  const state = $("state");
  state.textContent = s.state.replace("_", " ");
  state.className = "state " + s.state;
  $("routes").textContent = s.sources.join(", ") + " \u2192 " + s.targets.join(", ");
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  $("error-box").hidden = !s.error;
  $("error").textContent = s.error || "";
  $("cutover").textContent = s.cutover.phase.replace(/_/g, " ") + (s.cutover.message ? ": " + s.cutover.message : "");
  renderProof(s.proof);
  const live = s.state === "syncing";
  $("stop").disabled = !live;
  $("abort").disabled = !(live || s.state === "cutting_over");

  const body = $("shards").tBodies[0];
  body.replaceChildren();
  let maxLag = 0;
  for (const sh of s.lag.shards) {
    const targets = Object.entries(sh.targets);
    if (targets.length === 0) targets.push(["", null]);
    let progress = null, eta = "";
    if (sh.phase === "snapshot") {
      const prev = previous.get(sh.shard);
      let rate = 0;
      if (prev && now > prev.t) rate = (sh.copied - prev.copied) / (now - prev.t);
      previous.set(sh.shard, { t: now, copied: sh.copied });
      const total = Math.max(sh.total, sh.copied, 1);
      progress = [sh.copied / total, sh.copied + " / " + sh.total + (rate > 0 ? " (" + Math.round(rate) + "/s)" : "")];
      if (rate > 0) eta = fmtDuration((sh.total - sh.copied) / rate);
    }
    for (const [name, t] of targets) {
      const row = el("tr");
      row.dataset.shard = sh.shard;
      cell(row, sh.shard, "num");
      cell(row, sh.phase);
      const p = cell(row, "");
      if (progress) { p.appendChild(bar(progress[0])); p.appendChild(el("span", " " + progress[1], "muted")); }
      else if (sh.phase === "streaming") { p.appendChild(bar(1)); p.appendChild(el("span", " copied; following changes", "muted")); }
      cell(row, name);
      cell(row, sh.journaled_seq, "num");
      cell(row, t ? t.applied_seq : "", "num");
      cell(row, t ? t.lag_events : "", "num lag-events");
      cell(row, t ? t.lag_seconds.toFixed(1) : "", "num");
      cell(row, t ? Math.round(t.rate_per_s) : "", "num");
      if (!eta && t && t.lag_events > 0 && t.rate_per_s > 0) eta = fmtDuration(t.lag_events / t.rate_per_s);
      cell(row, eta, "num");
      const err = (t && t.error) || (sh.phase === "stopped" ? sh.error : "");
      cell(row, err || "", "err");
      if (t) maxLag = Math.max(maxLag, t.lag_events);
      body.appendChild(row);
    }
  }
  samples.push({ t: now, lag: maxLag });
  samples = samples.filter((x) => now - x.t <= HISTORY_S);
  drawChart();
  renderVerification(s.verification || []);
  const unmapped = s.unmapped || [];
  $("unmapped-box").hidden = unmapped.length === 0;
  $("unmapped").replaceChildren(...unmapped.map((u) => el("li", u)));
}

function renderProof(p) {
  const box = $("proof");
  box.replaceChildren();
  if (!p) return;
  box.appendChild(el("p", "Read-only window " + p.read_only_window_ms + " ms; " + p.verified_keys +
    " keys verified, " + p.differences + " differences; source made read-only by " + p.read_only_mode + ".", p.differences ? "err" : ""));
  const t = el("table");
  t.id = "proof-shards";
  const head = el("tr");
  for (const h of ["shard", "fence", "applied"]) head.appendChild(el("th", h));
  t.appendChild(head);
  for (const sh of p.shards) {
    const row = el("tr");
    cell(row, sh.shard, "num");
    cell(row, sh.fence_seq, "num");
    cell(row, Object.entries(sh.applied).map(([k, v]) => k + ": " + v).join(", "));
    t.appendChild(row);
  }
  box.appendChild(t);
  for (const step of p.next_steps || []) box.appendChild(el("p", "Next: " + step, "muted"));
}

function renderVerification(list) {
  $("verify-box").hidden = list.length === 0;
  const body = $("verify").tBodies[0];
  body.replaceChildren();
  for (const v of list) {
    const row = el("tr");
    cell(row, v.source);
    cell(row, v.target);
    cell(row, v.verified + " / " + v.ranges, "num");
    cell(row, v.passes, "num");
    cell(row, v.keys_read, "num");
    cell(row, v.differences.length ? v.differences.map((d) => d.key_suffix + " (" + d.detail + ")").join("; ") : "none",
      v.differences.length ? "err" : "");
    body.appendChild(row);
  }
}

function drawChart() {
  const svg = $("chart");
  const NS = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  if (samples.length < 2) return;
  const t0 = samples[0].t, t1 = samples[samples.length - 1].t;
  const top = Math.max(1, ...samples.map((x) => x.lag));
  const pts = samples.map((x) => {
    const px = t1 > t0 ? ((x.t - t0) / (t1 - t0)) * 590 + 5 : 5;
    const py = 110 - (x.lag / top) * 100;
    return px.toFixed(1) + "," + py.toFixed(1);
  });
  const line = document.createElementNS(NS, "polyline");
  line.setAttribute("points", pts.join(" "));
  svg.appendChild(line);
  const label = document.createElementNS(NS, "text");
  label.setAttribute("x", "6");
  label.setAttribute("y", "10");
  label.textContent = "max " + top + " events";
  svg.appendChild(label);
}

async function control(body, question) {
  if (!confirm(question)) return;
  const r = await api("/v1/stop", body);
  const answer = await r.json().catch(() => ({}));
  $("cutover").textContent = answer.message || ("stop answered " + r.status);
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const t = $("token").value.trim();
  $("token").value = "";
  if (!t) return;
  sessionStorage.setItem(KEY, t);
  showApp();
  await refresh();
});
$("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); showLogin(""); });
$("stop").addEventListener("click", () => control({}, "Cut over now? The source becomes read-only until the target is verified and opened."));
$("abort").addEventListener("click", () => control({ abort: true }, "Abort? The agent stops without opening the target."));

(async function boot() {
  // Agents that require client certificates need no token: try without.
  let r;
  try { r = await api("/v1/status"); } catch (e) { showLogin("The agent is unreachable: " + e.message); return; }
  if (r.status === 401) { showLogin(""); return; }
  showApp();
  if (r.ok) render(await r.json());
})();
