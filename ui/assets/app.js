// The Torus dashboard: polls the read-only JSON API (the same answers as
// `torusctl -o json`) and redraws. Plain JavaScript, no dependencies.
"use strict";

const POLL_MS = 1500;
const MAX_EVENTS = 50;
const RATE_WINDOW_MS = 30000;

const state = { afterSeq: 0, events: [], samples: [], healSeen: false };

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function human(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0, v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
}

function duration(s) {
  if (!isFinite(s) || s < 0) return "–";
  s = Math.round(s);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function ago(t) {
  const d = new Date(t);
  if (isNaN(d) || d.getFullYear() < 2000) return "–";
  return duration((Date.now() - d.getTime()) / 1000) + " ago";
}

function badge(s) { return el("span", { class: "state " + s }, s); }

async function get(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": " + r.status + " " + (await r.text()).trim());
  return r.json();
}

function renderSummary(st) {
  $("sum-ring").textContent = "version " + st.ring_version + ", replication " + st.replication + ", " + st.ring_members + " members";
  const p = st.placement || {};
  const pl = $("sum-placement");
  pl.dataset.placement = p.degraded ? "degraded" : "ok";
  pl.textContent = p.degraded ? "DEGRADED: " + p.reason : "ok (" + p.domains + " " + p.failure_domain + " domains for replication " + p.replication + ")";
  const peers = st.peers || {};
  const up = peers.up || 0, down = peers.down || 0;
  const sp = $("sum-peers");
  sp.dataset.peersUp = up; sp.dataset.peersDown = down;
  sp.textContent = up + " up, " + down + " down, " + (peers.draining || 0) + " draining, " + (peers.new || 0) + " new";
  const vh = st.volume_health || {};
  const sv = $("sum-volumes");
  sv.dataset.volumesHealthy = vh.healthy || 0;
  sv.dataset.volumesDegraded = vh.degraded || 0;
  sv.dataset.volumesUnavailable = vh.unavailable || 0;
  sv.textContent = st.volumes + " (" + st.open_volumes + " open): " + (vh.healthy || 0) + " healthy, " + (vh.degraded || 0) +
    " degraded, " + (vh.unavailable || 0) + " unavailable" + (vh.unknown ? ", " + vh.unknown + " not reported" : "");
  const pct = Math.floor((st.progress ?? 1) * 100);
  $("sum-progress").dataset.progress = st.progress;
  $("sum-progress").textContent = pct + "%";
  $("sum-progress-bar").style.width = pct + "%";
}

// renderHealing shows the backlog, and its rate and time left from the
// pending bytes of successive polls.
function renderHealing(st) {
  const pending = (st.heal_pending || 0) + (st.rebalance_pending || 0);
  const now = Date.now();
  state.samples.push({ t: now, pending });
  while (state.samples.length > 2 && now - state.samples[0].t > RATE_WINDOW_MS) state.samples.shift();
  const sec = $("healing");
  const active = pending > 0 || st.under_replicated > 0 || st.unavailable > 0;
  if (active) state.healSeen = true;
  sec.dataset.healing = active ? "active" : "idle";
  sec.dataset.pending = pending;
  sec.dataset.healSeen = state.healSeen ? "1" : "0";
  if (!active) {
    $("heal-line").textContent = "Nothing pending.";
    $("heal-rate").dataset.rate = ""; $("heal-rate").textContent = "–"; $("heal-eta").textContent = "–";
  } else {
    $("heal-line").textContent = human(st.heal_pending) + " to heal, " + human(st.rebalance_pending) + " to rebalance; " +
      st.under_replicated + " segments under-replicated, " + st.unavailable + " unavailable";
    const first = state.samples[0], last = state.samples[state.samples.length - 1];
    const dt = (last.t - first.t) / 1000;
    const rate = dt > 0 ? (first.pending - last.pending) / dt : 0;
    $("heal-rate").dataset.rate = rate > 0 ? rate : "";
    $("heal-rate").textContent = rate > 0 ? human(rate) + "/s" : "rate –";
    $("heal-eta").textContent = rate > 0 ? duration(pending / rate) + " left" : "time left –";
  }
  const pct = Math.floor((st.progress ?? 1) * 100);
  $("heal-bar").style.width = pct + "%";
}

function renderPeers(peers) {
  const tb = $("peers").tBodies[0];
  tb.replaceChildren(...peers.map((p) => {
    const used = p.capacity > 0 ? Math.min(100, (100 * p.used) / p.capacity) : 0;
    const loc = [p.zone, p.rack, p.host].filter(Boolean).join("/") || "–";
    const bar = el("div", { class: "bar" }, el("div", { style: "width:" + used.toFixed(1) + "%" }));
    return el("tr", { "data-peer-id": p.id, "data-peer-state": p.state },
      el("td", {}, p.id), el("td", {}, p.address || "–"), el("td", {}, loc), el("td", {}, badge(p.state)),
      el("td", {}, bar, " " + human(p.used) + " / " + human(p.capacity)), el("td", {}, human(p.pending)),
      el("td", {}, ago(p.last_seen)));
  }));
}

function renderVolumes(rows) {
  const tb = $("volumes").tBodies[0];
  tb.replaceChildren(...rows.map((v) => {
    const h = v.health || "unknown";
    const w = v.writer ? v.writer + " (epoch " + v.epoch + ")" : "–";
    return el("tr", { "data-volume": v.name, "data-volume-health": h, "data-under-replicated": v.under_replicated ?? "", "data-pending-bytes": v.pending_bytes ?? "" },
      el("td", {}, v.name), el("td", {}, human(v.size)), el("td", {}, human(v.used)), el("td", {}, w),
      el("td", {}, badge(h)), el("td", {}, v.under_replicated ?? "–"), el("td", {}, human(v.pending_bytes)));
  }));
}

const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// renderRing draws each ring member as an arc sized by its weight and
// colored by its peer's state.
function renderRing(ring, peers) {
  const g = $("ring");
  const byId = new Map(peers.map((p) => [p.id, p]));
  const members = ring.members || [];
  const total = members.reduce((s, m) => s + Math.max(m.weight || 1, 0), 0) || 1;
  const R = 100, W = 26, gap = members.length > 1 ? 0.02 : 0;
  const parts = [svg("circle", { r: R, fill: "none", stroke: "#e4e6ea", "stroke-width": W })];
  let a = -Math.PI / 2;
  for (const m of members) {
    const span = (2 * Math.PI * Math.max(m.weight || 1, 0)) / total;
    const a0 = a + gap / 2, a1 = a + span - gap / 2;
    const p = byId.get(m.id);
    const st = p ? p.state : "unknown";
    const large = a1 - a0 > Math.PI ? 1 : 0;
    const d = members.length === 1
      ? "M " + R + " 0 A " + R + " " + R + " 0 1 1 " + (-R) + " 0 A " + R + " " + R + " 0 1 1 " + R + " 0"
      : "M " + R * Math.cos(a0) + " " + R * Math.sin(a0) + " A " + R + " " + R + " 0 " + large + " 1 " + R * Math.cos(a1) + " " + R * Math.sin(a1);
    const color = getComputedStyle(document.documentElement).getPropertyValue("--" + st).trim() || "#4a7bd0";
    const arc = svg("path", { d, fill: "none", stroke: color, "stroke-width": W, "data-ring-member": m.id, "data-peer-state": st });
    arc.append(svg("title", {}, m.id + " (" + st + ", weight " + m.weight + ")"));
    parts.push(arc);
    const mid = (a0 + a1) / 2, L = R + W / 2 + 8, c = Math.cos(mid);
    const anchor = c > 0.2 ? "start" : c < -0.2 ? "end" : "middle";
    parts.push(svg("text", { x: L * c, y: L * Math.sin(mid), "text-anchor": anchor, "dominant-baseline": "middle" },
      (m.id.length > 8 ? m.id.slice(0, 8) : m.id) + " · " + st));
    a += span;
  }
  parts.push(svg("text", { x: 0, y: -6, "text-anchor": "middle", "font-size": "14" }, "ring v" + ring.version));
  parts.push(svg("text", { x: 0, y: 12, "text-anchor": "middle" }, "replication " + ring.replication));
  g.replaceChildren(...parts);
  g.dataset.ringVersion = ring.version;
}

function renderEvents(evs) {
  for (const e of evs) {
    state.events.unshift(e);
    state.afterSeq = Math.max(state.afterSeq, e.seq);
  }
  state.events.length = Math.min(state.events.length, MAX_EVENTS);
  if (state.events.length === 0) {
    $("events").replaceChildren(el("li", { class: "muted" }, "No events recorded yet."));
    return;
  }
  $("events").replaceChildren(...state.events.map((e) => el("li", { class: e.severity, "data-event-kind": e.kind, "data-seq": e.seq },
    el("time", { datetime: e.time }, new Date(e.time).toLocaleTimeString()), e.kind + ": " + e.message)));
}

async function poll() {
  try {
    const [st, peers, ring, vols, evs] = await Promise.all([
      get("/api/v1/status"), get("/api/v1/peers"), get("/api/v1/ring"), get("/api/v1/volumes"),
      get("/api/v1/events?after=" + state.afterSeq)]);
    renderSummary(st);
    renderHealing(st);
    renderPeers(peers);
    renderRing(ring, peers);
    renderVolumes(vols);
    renderEvents(evs);
    $("conn").dataset.conn = "ok";
    $("conn").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    $("conn").dataset.conn = "error";
    $("conn").textContent = String(err.message || err);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
