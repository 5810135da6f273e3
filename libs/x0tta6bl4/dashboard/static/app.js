// x0tta6bl4 dashboard: draws the sections the server pushes as server-sent events (no library, no CDN).
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const state = { mesh: null, cycles: null, proposals: null, audit: null, selected: null, paused: false };
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }
  function time(ns) {
    if (!ns) return "";
    return new Date(ns / 1e6).toISOString().substring(11, 19);
  }
  function badge(status) {
    return el("span", { class: "badge " + String(status).replace(/ /g, "-") }, status);
  }
  function shortTrace(t) { return t ? t : "no trace"; }

  // ---- mesh map ------------------------------------------------------------------------------------
  function layout(nodes) {
    const n = nodes.length, cols = Math.max(1, Math.ceil(Math.sqrt(n))), rows = Math.max(1, Math.ceil(n / cols));
    const pad = 70, w = 600 - 2 * pad, h = 600 - 2 * pad, pos = {};
    nodes.forEach((node, i) => {
      if (typeof node.x === "number" && typeof node.y === "number") {   // the server's layout of the links
        pos[node.id] = { x: pad + w * node.x, y: pad + h * node.y };
        return;
      }
      const c = i % cols, r = Math.floor(i / cols);
      pos[node.id] = { x: pad + (cols > 1 ? (w * c) / (cols - 1) : w / 2), y: pad + (rows > 1 ? (h * r) / (rows - 1) : h / 2) };
    });
    return pos;
  }
  function describeNode(n) {
    let s = n.id + ": " + (n.silent ? "failed (silent)" : n.health);
    if (n.routed_around) s += ", routed around";
    if (n.reasons && n.reasons.length) s += " (" + n.reasons.join("; ") + ")";
    return s;
  }
  // the map is updated in place (one <g> per node, one <line> per link): focus and screenshots stay on
  // the same elements while updates arrive
  const nodeEls = new Map(), linkEls = new Map();
  function set(e, attrs) {
    for (const [k, v] of Object.entries(attrs)) if (e.getAttribute(k) !== String(v)) e.setAttribute(k, v);
  }
  function nodeElement(id) {
    const g = svg("g", { class: "node", tabindex: "0", role: "button", "data-node": id });
    g.appendChild(svg("circle", {}));
    const t = svg("text", {}); t.textContent = id; g.appendChild(t);
    const tag = svg("text", { class: "tag" }); g.appendChild(tag);
    g.appendChild(svg("title", {}));
    g.addEventListener("click", () => select(id));
    g.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); select(id); }
    });
    return g;
  }
  function renderMesh(m) {
    const map = $("map");
    const pos = layout(m.nodes);
    const r = Math.max(14, Math.min(34, 220 / Math.max(1, Math.sqrt(m.nodes.length))));
    const routed = new Set(m.routed_around);
    const seenLinks = new Set();
    for (const l of m.links) {
      const a = pos[l.a], b = pos[l.b];
      if (!a || !b) continue;
      const key = l.a + "-" + l.b;
      seenLinks.add(key);
      let e = linkEls.get(key);
      if (!e) { e = svg("line", { "data-link": key }); linkEls.set(key, e); map.insertBefore(e, map.firstChild); }
      let cls = "link" + (l.up ? "" : " down");
      if (!l.up && (routed.has(l.a) || routed.has(l.b))) cls = "link avoided";
      set(e, { class: cls, x1: a.x, y1: a.y, x2: b.x, y2: b.y, "data-up": String(l.up) });
    }
    for (const [key, e] of linkEls) if (!seenLinks.has(key)) { e.remove(); linkEls.delete(key); }
    const seenNodes = new Set();
    for (const n of m.nodes) {
      const p = pos[n.id];
      seenNodes.add(n.id);
      let g = nodeEls.get(n.id);
      if (!g) { g = nodeElement(n.id); nodeEls.set(n.id, g); map.appendChild(g); }
      set(g, { "data-health": n.health, "data-silent": String(n.silent), "data-routed-around": String(n.routed_around),
        "aria-label": describeNode(n), "aria-pressed": String(state.selected === n.id) });
      const [circle, label, tag, title] = g.children;
      set(circle, { cx: p.x, cy: p.y, r: r });
      set(label, { x: p.x, y: p.y });
      set(tag, { x: p.x, y: p.y + r + 14 });
      const tagText = n.routed_around ? "routed around" : (n.silent ? "down" : "");
      if (tag.textContent !== tagText) tag.textContent = tagText;
      if (title.textContent !== describeNode(n)) title.textContent = describeNode(n);
    }
    for (const [id, g] of nodeEls) if (!seenNodes.has(id)) { g.remove(); nodeEls.delete(id); }
    const c = m.counts || {};
    const parts = Object.keys(c).sort().map((k) => c[k] + " " + k);
    $("summary").textContent = m.nodes.length + " nodes: " + parts.join(", ") +
      (m.routed_around.length ? " — routed around: " + m.routed_around.join(", ") : "");
    if (state.selected) renderDetail(state.selected, false);
  }
  function select(id) {
    state.selected = id;
    renderDetail(id, true);
    for (const g of document.querySelectorAll(".node")) g.setAttribute("aria-pressed", String(g.dataset.node === id));
  }
  function renderDetail(id, announce) {
    const n = state.mesh && state.mesh.nodes.find((x) => x.id === id);
    const box = $("node-detail");
    if (!n) return;
    box.replaceChildren();
    box.appendChild(el("h3", {}, "Node " + n.id));
    const dl = el("dl", { class: "detail" });
    const rows = [["health", n.silent ? "failed (silent)" : n.health], ["routed around", n.routed_around ? "yes" : "no"],
      ["reasons", (n.reasons || []).join("; ") || "-"], ["avoided by", (n.avoided_by || []).join(", ") || "-"], ["neighbours", n.neighbours.join(", ") || "-"],
      ["p99 latency", n.p99_ms === null ? "-" : n.p99_ms + " ms"], ["loss", n.loss_pct === null ? "-" : n.loss_pct + " %"],
      ["last report", n.age_s === null ? "never" : n.age_s + " s ago"]];
    for (const [k, v] of rows) { dl.appendChild(el("dt", {}, k)); dl.appendChild(el("dd", {}, v)); }
    box.appendChild(dl);
    if (!announce) box.setAttribute("aria-live", "off"); else box.setAttribute("aria-live", "polite");
  }

  // ---- cycles ---------------------------------------------------------------------------------------
  const opened = new Map();     // cycle id -> open or closed by the operator (kept through updates)
  function cycleBlock(c, open) {
    const d = el("details", { class: "cycle", "data-cycle": c.cycle_id, "data-status": c.status, "data-target": c.target });
    d.open = opened.has(c.cycle_id) ? opened.get(c.cycle_id) : open;
    d.addEventListener("toggle", () => {       // only the operator's choice is kept (not the default)
      if (d.open !== open) opened.set(c.cycle_id, d.open); else opened.delete(c.cycle_id);
    });
    const s = el("summary", {});
    s.appendChild(badge(c.status));
    s.appendChild(document.createTextNode(" " + time(c.started_ns) + " " + (c.fault || "") + (c.target ? " at " + c.target : "") + " "));
    s.appendChild(el("span", { class: "trace", "data-trace": c.trace_id }, "trace " + shortTrace(c.trace_id)));
    d.appendChild(s);
    d.appendChild(el("div", { class: "trace" }, "cycle " + c.cycle_id));
    const ol = el("ol", { class: "stages" });
    for (const st of c.stages) {
      const li = el("li", { "data-stage": st.stage });
      li.appendChild(el("span", { class: "stage" }, st.stage));
      li.appendChild(document.createTextNode(" " + time(st.ts_ns) + " — " + st.text));
      ol.appendChild(li);
    }
    d.appendChild(ol);
    return d;
  }
  function renderCycles(c) {
    const cur = $("current-cycle");
    cur.replaceChildren(c.current ? cycleBlock(c.current, true) : el("p", {}, "no cycle yet"));
    const rec = $("recent-cycles");
    rec.replaceChildren();
    if (!c.recent.length) rec.appendChild(el("p", {}, "none yet"));
    for (const x of c.recent) rec.appendChild(cycleBlock(x, false));
  }

  // ---- proposals --------------------------------------------------------------------------------------
  function renderProposals(p) {
    const box = $("proposals");
    box.replaceChildren();
    if (!p.proposals.length) { box.appendChild(el("p", {}, "no proposal seen since the dashboard started")); return; }
    const t = el("table", {});
    const head = el("tr", {});
    for (const h of ["proposal", "action", "state", "tally yes / no / abstain", "turnout"]) head.appendChild(el("th", { scope: "col" }, h));
    t.appendChild(el("thead", {})).appendChild(head);
    const body = t.appendChild(el("tbody", {}));
    for (const x of p.proposals) {
      const tr = el("tr", { "data-proposal": x.id, "data-state": x.state });
      tr.appendChild(el("td", {}, x.title || x.id));
      tr.appendChild(el("td", {}, x.action));
      const st = el("td", {}); st.appendChild(badge(x.state)); tr.appendChild(st);
      tr.appendChild(el("td", { class: "tally" }, x.tally.yes.toFixed(2) + " / " + x.tally.no.toFixed(2) + " / " + x.tally.abstain.toFixed(2)));
      tr.appendChild(el("td", {}, (100 * x.tally.turnout).toFixed(0) + " % of " + x.tally.eligible.toFixed(2) + " (quorum " + (100 * x.quorum).toFixed(0) + " %)"));
      body.appendChild(tr);
    }
    box.appendChild(t);
  }

  // ---- audit ------------------------------------------------------------------------------------------
  function renderAudit(a) {
    const body = document.querySelector("#audit tbody");
    body.replaceChildren();
    for (const e of a.events) {
      const tr = el("tr", { "data-event": e.event_type });
      tr.appendChild(el("td", {}, time(e.ts_ns)));
      tr.appendChild(el("td", {}, e.service));
      tr.appendChild(el("td", {}, e.event_type));
      tr.appendChild(el("td", {}, e.subject_id));
      tr.appendChild(el("td", { class: "trace" }, (e.cycle_id || "-") + (e.trace_id ? " / " + e.trace_id : "")));
      body.appendChild(tr);
    }
  }

  const RENDER = { mesh: renderMesh, cycles: renderCycles, proposals: renderProposals, audit: renderAudit };

  function connect() {
    const es = new EventSource("/events");
    es.onopen = () => { $("conn").dataset.state = "live"; $("conn").textContent = "live"; };
    es.onerror = () => { $("conn").dataset.state = "down"; $("conn").textContent = "disconnected, retrying"; };
    for (const name of Object.keys(RENDER)) {
      es.addEventListener(name, (ev) => {
        state[name] = JSON.parse(ev.data);
        if (state.paused) return;            // kept; drawn when the operator resumes
        RENDER[name](state[name]);
        document.body.dataset[name] = "loaded";
      });
    }
  }

  // ---- operator ---------------------------------------------------------------------------------------
  function pauseButton() {
    const b = $("pause");
    b.addEventListener("click", () => {
      state.paused = !state.paused;
      b.setAttribute("aria-pressed", String(state.paused));
      b.textContent = state.paused ? "Resume live updates" : "Pause live updates";
      document.body.dataset.paused = String(state.paused);
      if (!state.paused) for (const name of Object.keys(RENDER)) if (state[name]) RENDER[name](state[name]);
    });
  }

  function operator() {
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem("x0-token", $("token").value.trim());
      $("op-result").textContent = "token kept for this tab";
    });
    $("run-cycle").addEventListener("click", async () => {
      const token = sessionStorage.getItem("x0-token") || "";
      const headers = { "Content-Type": "application/json" };
      if (token) headers.Authorization = "Bearer " + token;
      try {
        const r = await fetch("/api/cycle", { method: "POST", headers: headers, body: "{}" });
        const doc = await r.json();
        $("op-result").dataset.status = String(r.status);
        $("op-result").textContent = r.ok ? "cycle " + doc.cycle_id + " started" : "refused: " + doc.error;
      } catch (e) {
        $("op-result").textContent = "failed: " + e;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => { pauseButton(); operator(); connect(); });
})();
