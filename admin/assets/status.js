"use strict";
// Everything comes from this node's admin API: /admin/v1/stats (1-second buckets, last 5 minutes),
// /admin/v1/status and /admin/v1/upstreams. The token, when the node has one, is taken from the
// page's #token= fragment (never sent to the server as part of the URL) or typed in, and kept
// for this tab only.
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
const TOP = 8;
let token = sessionStorage.getItem("ringway-token") || "";
// Whether the refresh loop runs (it stops while the page waits for a token).
let running = false;

function takeToken() {
  const frag = new URLSearchParams(location.hash.slice(1));
  if (!frag.get("token")) return false;
  token = frag.get("token");
  sessionStorage.setItem("ringway-token", token);
  history.replaceState(null, "", location.pathname);
  return true;
}
takeToken();
const charts = {};
let refreshes = 0;

async function api(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401) throw new Error("unauthorized");
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return Number(v).toFixed(digits);
}

// The x axis: every second of the window, so that keys without traffic show gaps.
function axis(stats) {
  const xs = [];
  if (stats.from === null) return xs;
  for (let t = stats.from; t < stats.to; t += stats.resolution_s) xs.push(t);
  return xs;
}

// The first second of the window the node was counting (workers tick every second).
let since = null;

// One series per key (the busiest TOP), as values on `xs` from column `col` mapped by `f`;
// with `zero`, seconds the node was counting without traffic for the key are 0, not gaps.
function seriesOf(stats, xs, col, f, zero) {
  const i = stats.columns.indexOf(col);
  const calls = stats.columns.indexOf("calls");
  const at = new Map(xs.map((t, n) => [t, n]));
  const out = [];
  for (const item of stats.items.slice(0, TOP)) {
    const ys = xs.map(t => zero && since !== null && t >= since ? 0 : null);
    for (const p of item.series) {
      const n = at.get(p[0]);
      if (n !== undefined) ys[n] = f(p[i], p, calls);
    }
    out.push({ label: item.key, ys });
  }
  return out;
}

function totalSeries(stats, xs, col, f) {
  const i = stats.columns.indexOf(col);
  const at = new Map(xs.map((t, n) => [t, n]));
  const ys = new Array(xs.length).fill(null);
  for (const p of stats.total.series || []) {
    const n = at.get(p[0]);
    if (n !== undefined) ys[n] = f(p[i], p);
  }
  return ys;
}

// Draws (or updates) a chart; a new set of series names makes a new chart.
function draw(id, xs, lines) {
  const box = document.getElementById(id);
  const width = Math.max(300, box.clientWidth || 540);
  const names = lines.map(l => l.label).join("\u0000");
  const data = [xs, ...lines.map(l => l.ys)];
  let c = charts[id];
  if (c && c.names !== names) {
    c.plot.destroy();
    c = undefined;
  }
  if (!lines.length || !xs.length) {
    if (c) { c.plot.destroy(); delete charts[id]; }
    box.replaceChildren(el("div", { class: "empty" }, "no traffic in the last 5 minutes"));
    return;
  }
  if (!c) {
    box.replaceChildren();
    const opts = {
      width, height: 200,
      scales: { x: { time: true } },
      series: [{}, ...lines.map((l, n) => ({ label: l.label, stroke: COLORS[n % COLORS.length], width: 1.5, spanGaps: false }))],
      axes: [{}, { size: 50 }],
      legend: { live: false },
    };
    charts[id] = { plot: new uPlot(opts, data, box), names };
  } else {
    c.plot.setData(data);
  }
  box.setAttribute("data-points", String(lines.reduce((s, l) => s + l.ys.filter(v => v !== null).length, 0)));
}

function tile(label, value) {
  const t = el("div", { class: "tile" });
  t.append(el("b", {}, value), el("span", {}, label));
  return t;
}

function table(head, rows) {
  const t = el("table");
  const tr = el("tr");
  for (const h of head) tr.append(el("th", {}, h));
  t.append(tr);
  for (const r of rows) {
    const row = el("tr");
    for (const cell of r) {
      const td = el("td", cell.cls ? { class: cell.cls } : {}, cell.text !== undefined ? cell.text : cell);
      row.append(td);
    }
    t.append(row);
  }
  return t;
}

async function health(upstreams) {
  const rows = [];
  for (const u of upstreams.items.slice(0, 20)) {
    try {
      const h = await api("/admin/v1/upstreams/" + encodeURIComponent(u.id) + "/health");
      for (const t of h.targets) {
        rows.push([u.id, t.target, { text: t.state, cls: t.state === "healthy" ? "ok" : "bad" }, h.circuit_breaker || "–", t.last_probe || "–"]);
      }
    } catch (e) {
      rows.push([u.id, "–", { text: "unknown", cls: "bad" }, "–", String(e.message)]);
    }
  }
  return table(["upstream", "target", "state", "breaker", "last probe"], rows);
}

async function refresh() {
  const [routes, ups, workers, status, upstreams] = await Promise.all([
    api("/admin/v1/stats?by=route&window=5m"),
    api("/admin/v1/stats?by=upstream&window=5m"),
    api("/admin/v1/stats?by=worker&window=5m"),
    api("/admin/v1/status"),
    api("/admin/v1/upstreams"),
  ]);
  document.getElementById("login").hidden = true;
  document.getElementById("board").hidden = false;
  const revs = [...new Set(status.workers.map(w => w.revision))];
  document.getElementById("node").textContent =
    `v${status.version} · ${status.workers.length} worker(s), ${status.driver} · revision ${status.revision}` +
    (revs.length > 1 || revs[0] !== status.revision ? ` (workers run ${revs.join(", ")})` : "");

  const ws = workers.total.series || [];
  since = ws.length ? ws[0][0] : null;
  const xs = axis(routes);
  const per = routes.resolution_s;
  const rps = (v) => v / per;
  draw("c-rps", xs, seriesOf(routes, xs, "calls", rps, true));
  draw("c-lat", xs, routes.items.length ? [
    { label: "p50", ys: totalSeries(routes, xs, "p50_ms", v => v) },
    { label: "p99", ys: totalSeries(routes, xs, "p99_ms", v => v) },
  ] : []);
  draw("c-err", xs, seriesOf(routes, xs, "status_5xx", (v, p, calls) => p[calls] ? v / p[calls] : null));
  const uxs = axis(ups);
  draw("c-up", uxs, seriesOf(ups, uxs, "calls", rps, true));
  draw("c-uplat", uxs, seriesOf(ups, uxs, "p99_ms", v => v));
  const hitsCol = routes.columns.indexOf("cache_hits");
  draw("c-cache", xs, routes.items.length ? [
    { label: "cache hit ratio", ys: totalSeries(routes, xs, "cache_lookups", (v, p) => v ? p[hitsCol] / v : null) },
    { label: "limit refusals/s", ys: totalSeries(routes, xs, "limited", v => rps(v)) },
  ] : []);
  const wxs = axis(workers);
  draw("c-work", wxs, seriesOf(workers, wxs, "calls", rps, true));
  draw("c-lag", wxs, seriesOf(workers, wxs, "loop_lag_ms", v => v));

  const t = routes.total;
  // The last whole second every worker has reported.
  const last = ws.slice(-2)[0];
  const tiles = document.getElementById("tiles");
  tiles.replaceChildren(
    tile("requests/s (last second)", fmt(last ? last[1] / per : 0, 0)),
    tile("requests/s (5 min)", fmt(t.rps, 1)),
    tile("p50 ms (5 min)", fmt(t.latency_ms.p50, 2)),
    tile("p99 ms (5 min)", fmt(t.latency_ms.p99, 2)),
    tile("5xx share (5 min)", t.error_rate === null ? "–" : fmt(100 * t.error_rate, 2) + "%"),
    tile("cache hit ratio", t.cache.hit_ratio === null ? "–" : fmt(100 * t.cache.hit_ratio, 1) + "%"),
    tile("limit refusals (5 min)", String(t.limited)),
    tile("open connections", status.connections ? String(status.connections.open) : "–"),
  );
  document.getElementById("workers").replaceChildren(table(
    ["worker", "cpu", "driver", "revision", "cache entries", "limit keys"],
    status.workers.map(w => [String(w.id), w.cpu === null ? "–" : String(w.cpu), w.driver,
      { text: String(w.revision), cls: w.revision === status.revision ? "ok" : "bad" }, String(w.cache_entries), String(w.rate_limit_keys)])));
  document.getElementById("health").replaceChildren(await health(upstreams));

  refreshes += 1;
  document.body.dataset.refreshes = String(refreshes);
  document.body.dataset.charts = String(Object.keys(charts).length);
  document.body.dataset.calls = String(t.calls);
  document.body.dataset.revision = String(status.revision);
}

function start() {
  if (!running) {
    running = true;
    loop();
  }
}

async function loop() {
  try {
    await refresh();
    document.getElementById("problem").textContent = "";
    delete document.body.dataset.error;
  } catch (e) {
    if (e.message === "unauthorized") {
      document.getElementById("board").hidden = true;
      document.getElementById("login").hidden = false;
      document.getElementById("problem").textContent = token ? "the token was refused" : "";
      document.body.dataset.error = "unauthorized";
      running = false;
      return;
    }
    document.getElementById("problem").textContent = "cannot reach the admin API: " + e.message;
    document.body.dataset.error = e.message;
  }
  setTimeout(loop, 1000);
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = document.getElementById("token").value;
  sessionStorage.setItem("ringway-token", token);
  start();
});
window.addEventListener("hashchange", () => { if (takeToken()) start(); });
start();
