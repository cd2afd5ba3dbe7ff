// throttle's dashboard: read-only, everything from the admin API, polled
// every second. With a token, the API is called as the CLI calls it
// (`Authorization: Bearer`); the page asks for it, or takes `#token=...`.
"use strict";

const POLL_MS = 1000;
const KEEP = 300; // points kept per chart: five minutes
const DROPS = ["over_limit", "deny_rule", "banned", "new_source_limit", "contended"];

let token = sessionStorage.getItem("throttle-token") || "";
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get("token")) {
  token = fragment.get("token");
  sessionStorage.setItem("throttle-token", token);
}

class Unauthorized extends Error {}

async function api(path) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(path, { headers });
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

const prompt = document.getElementById("token-prompt");
prompt.addEventListener("submit", (e) => {
  e.preventDefault();
  token = document.getElementById("token").value;
  sessionStorage.setItem("throttle-token", token);
  prompt.hidden = true;
  tick();
});

function chart(id, series, width) {
  const el = document.getElementById(id);
  const opts = {
    width: width || el.clientWidth || 600,
    height: 220,
    series: [{}, ...series.map((label, i) => ({ label, stroke: `hsl(${(i * 67) % 360} 70% 50%)`, width: 1.5 }))],
    axes: [{}, { size: 60 }],
  };
  const data = [[], ...series.map(() => [])];
  return { el, plot: new uPlot(opts, data, el), data };
}

function push(c, t, values) {
  c.data[0].push(t);
  values.forEach((v, i) => c.data[i + 1].push(v));
  if (c.data[0].length > KEEP) c.data.forEach((s) => s.shift());
  c.plot.setData(c.data);
  c.el.dataset.points = String(c.data[0].length);
}

const packets = chart("packets-chart", ["passed", ...DROPS]);
const controller = chart("controller-chart", ["scale", "p50 ms", "p99 ms"]);
window.addEventListener("resize", () => {
  for (const c of [packets, controller]) c.plot.setSize({ width: c.el.clientWidth, height: 220 });
});

let lastStats = null;
let lastSources = new Map();
let lastAt = 0;

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
}

function owner(s) {
  if (s.class) return `${s.class} ${s.limit ?? "0"}`;
  if (s.rule) return `rule ${s.rule}`;
  return "default";
}

async function tick() {
  try {
    const now = Date.now() / 1000;
    const secs = lastAt ? Math.max(now - lastAt, 0.001) : 0;
    const [status, stats, sources, events, ctl, rules, classes, sets] = await Promise.all([
      api("/v1/status"), api("/v1/stats"), api("/v1/sources?top=200&by=dropped"), api("/v1/events?n=50"),
      api("/v1/controller"), api("/v1/rules"), api("/v1/classes"), api("/v1/sets"),
    ]);
    prompt.hidden = true;
    document.getElementById("status").textContent =
      `${status.version} · ${status.ready ? "ready" : "attaching"} · ` +
      `${status.interfaces.map((i) => `${i.name} (${i.mode})`).join(", ") || "no interface"} · ` +
      `${status.sources_tracked} sources · scale ${status.scale.toFixed(3)}`;

    if (lastStats && secs) {
      const rate = (name) => Math.max(0, (stats.counters[name] - lastStats.counters[name]) / secs);
      const passed = rate("passed") + rate("new_source") + rate("allow_rule") + rate("out_of_scope");
      push(packets, now, [passed, ...DROPS.map(rate)]);
    }
    lastStats = stats;

    const rows = [];
    const seen = new Map();
    for (const s of sources.sources) {
      const key = `${s.source} ${owner(s)}`;
      seen.set(key, s);
      const before = lastSources.get(key);
      if (before && secs) {
        rows.push({ s, drop: (s.dropped - before.dropped) / secs, pass: (s.passed - before.passed) / secs });
      }
    }
    lastSources = seen;
    rows.sort((a, b) => b.drop - a.drop);
    const body = document.querySelector("#top tbody");
    body.replaceChildren();
    for (const { s, drop, pass } of rows.slice(0, 20)) {
      const row = document.createElement("tr");
      cell(row, s.source);
      cell(row, owner(s));
      cell(row, drop.toFixed(1));
      cell(row, pass.toFixed(1));
      body.appendChild(row);
    }

    const latency = ctl.latency || {};
    push(controller, now, [ctl.scale, latency.p50 ?? null, latency.p99 ?? null]);
    document.getElementById("controller").textContent =
      `${ctl.enabled ? "on" : "off"} · ${ctl.mode ?? ""} ${ctl.algorithm} · ${ctl.state} · ${ctl.reason}`;

    const list = document.getElementById("events");
    list.replaceChildren();
    for (const e of events.events.slice().reverse()) {
      const li = document.createElement("li");
      const fields = ["source", "class", "limit", "rule", "by"].filter((k) => e[k] != null).map((k) => `${k}=${e[k]}`);
      li.textContent = `${new Date(e.at_ms).toISOString().slice(11, 23)} ${e.kind} ${fields.join(" ")} ${e.detail ?? ""}`;
      list.appendChild(li);
    }

    const policy = document.getElementById("policy");
    policy.replaceChildren();
    const item = (text) => {
      const li = document.createElement("li");
      li.textContent = text;
      policy.appendChild(li);
    };
    const ruleHits = new Map((stats.rules || []).map((h) => [h.id, h]));
    const hits = (h) => !h ? "" : h.packets != null ? ` · ${h.packets} packets` : ` · passed ${h.passed} dropped ${h.dropped}`;
    for (const r of rules.rules) {
      item(`rule ${r.id}: ${r.action} ${r.cidr ?? "@" + r.set}${r.rate ? " " + r.rate : ""}${hits(ruleHits.get(r.id))}`);
    }
    const classHits = new Map((stats.classes || []).map((h) => [h.name, h]));
    for (const c of classes.classes) {
      item(`class ${c.name}: ${c.limits.map((l) => l.rate).join(", ")}${hits(classHits.get(c.name))}`);
    }
    for (const s of sets.sets) {
      item(`set ${s.name}: ${s.prefixes} prefixes${s.rule ? ", rule " + s.rule + hits(ruleHits.get(s.rule)) : ""}`);
    }
    item(`counters: ${Object.entries(stats.counters).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(", ")}`);
    lastAt = now;
  } catch (err) {
    if (err instanceof Unauthorized) {
      prompt.hidden = false;
      document.getElementById("status").textContent = token ? "the token was refused" : "a token is needed";
      return;
    }
    document.getElementById("status").textContent = `cannot reach the daemon: ${err.message}`;
  }
}

tick();
setInterval(() => { if (prompt.hidden) tick(); }, POLL_MS);
