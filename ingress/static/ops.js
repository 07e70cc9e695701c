"use strict";
const KEEP = 90;              // points per chart (3 minutes at one sample per 2 s)
const series = {};            // "model/version" -> {queued: [], rps: [], p95: [], free: []}
const fromHash = new URLSearchParams(location.hash.slice(1)).get("key");
if (fromHash) { sessionStorage.setItem("mbkey", fromHash); window.history.replaceState(null, "", location.pathname); }
let key = sessionStorage.getItem("mbkey") || prompt("Admin API key");
if (key) sessionStorage.setItem("mbkey", key);

function chart(values, color, label) {
  const w = 260, h = 70, max = Math.max(1, ...values.map(v => v || 0));
  const step = w / (KEEP - 1);
  const start = KEEP - values.length;
  const points = values.map((v, i) => `${((start + i) * step).toFixed(1)},${(h - 4 - (v || 0) / max * (h - 8)).toFixed(1)}`).join(" ");
  return `<figure><svg width="${w}" height="${h}" data-points="${values.length}"><polyline stroke="${color}" points="${points}"/></svg>` +
         `<figcaption>${label} (max ${max.toFixed(max < 10 ? 1 : 0)})</figcaption></figure>`;
}

function shares(r, esc) {
  if (!r.shares || !r.shares.length) return "";
  const staged = r.shares.reduce((n, s) => n + s.queued, 0);
  const pct = v => v == null ? "–" : `${Math.round(v * 100)} %`;
  const cells = r.shares.map(s => `<tr><td>${esc(s.consumer)}</td><td>${s.queued}</td>
    <td>${pct(staged ? s.queued / staged : null)}</td><td>${pct(s.served_share)}</td></tr>`).join("");
  return `<table class="shares"><tr><th>consumer</th><th>queued</th><th>queued share</th>
    <th>served share (1 min)</th></tr>${cells}</table>`;
}

function render(rows) {
  const out = rows.map(r => {
    const id = `${r.model}/${r.version}`;
    const hst = series[id] || (series[id] = {queued: [], rps: [], p95: [], free: []});
    for (const [k, v] of [["queued", r.queued], ["rps", r.requests_per_s], ["p95", r.p95_ms], ["free", r.free_slots]]) {
      hst[k].push(v); if (hst[k].length > KEEP) hst[k].shift();
    }
    const esc = s => String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
    return `<section class="model"><h2>${esc(r.model)} <small>${esc(r.version)}</small></h2>
      <div class="figures">
        <div>queued<b>${r.queued}</b></div><div>in flight<b>${r.in_flight}</b></div>
        <div>redelivered<b>${r.redelivered}</b></div><div>workers<b>${r.workers}</b></div>
        <div>free slots<b>${r.free_slots}/${r.capacity}</b></div><div>req/s<b>${r.requests_per_s}</b></div>
        <div>p50 / p95<b>${r.p50_ms ?? "–"} / ${r.p95_ms ?? "–"} ms</b></div><div>tokens/s<b>${r.tokens_per_s}</b></div>
        ${r.affinity_hit_rate == null ? "" : `<div>affinity home<b>${Math.round(r.affinity_hit_rate * 100)} %</b></div>`}
      </div>
      ${shares(r, esc)}
      <div class="charts">${chart(hst.queued, "#d9480f", "queued")}${chart(hst.rps, "#1c7ed6", "requests/s")}
        ${chart(hst.p95, "#7048e8", "p95 latency ms")}${chart(hst.free, "#2b8a3e", "free slots")}</div></section>`;
  });
  document.getElementById("models").innerHTML = out.join("");
}

async function tick() {
  try {
    const res = await fetch("/admin/ops/data", {headers: {Authorization: `Bearer ${key}`}});
    if (res.status === 401 || res.status === 403) {
      document.getElementById("status").textContent = "not authorized: open /ops#key=<admin key>";
      return;
    }
    const data = await res.json();
    render(data.models);
    document.getElementById("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    document.getElementById("status").textContent = `unreachable (${e})`;
  }
}
tick();
setInterval(tick, 2000);
