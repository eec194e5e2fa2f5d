/* The embeddings page: a canvas scatter plot of one space's 2-D projection (docs/ui.md).
 * Data comes from /api/embeddings/* as compact JSON (coordinates are base64 float32). Every text
 * is put in the page with textContent, never as HTML. When the points are drawn, the body gets
 * data-emb-state="ready" and data-emb-render-ms (what tests and bench/embbench.py wait on). */
(function () {
  "use strict";
  const root = document.getElementById("emb");
  if (!root) return;
  const canvas = document.getElementById("emb-canvas");
  const tip = document.getElementById("emb-tip");
  const statusEl = document.getElementById("emb-status");
  const legendEl = document.getElementById("emb-legend");
  const nbEl = document.getElementById("emb-neighbours");
  const colourSel = document.getElementById("emb-colour");
  const spaceSel = document.getElementById("emb-space");
  const PALETTE = ["#4263eb", "#2b8a3e", "#e8590c", "#ae3ec9", "#0c8599", "#c2255c", "#5c940d",
    "#1864ab", "#a61e4d", "#d9480f", "#087f5b", "#5f3dc4", "#868e96", "#364fc7", "#e67700"];
  const state = { data: null, xy: null, sx: null, sy: null, grid: null, picked: -1,
    neighbours: new Map(), rag: new Map(), colour: "namespace" };

  function setStatus(text, cls) {
    statusEl.textContent = text;
    statusEl.className = "emb-status" + (cls ? " " + cls : "");
  }

  function params(extra) {
    const p = new URLSearchParams({ model: root.dataset.model, dim: root.dataset.dim,
      method: root.dataset.method });
    for (const k in extra || {}) p.set(k, extra[k]);
    return p.toString();
  }

  async function getJSON(url) {
    const r = await fetch(url, { headers: { accept: "application/json" } });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
    return [r.status, body];
  }

  async function load() {
    const deadline = performance.now() + 30 * 60 * 1000;
    for (;;) {
      let status, body;
      try {
        [status, body] = await getJSON("/api/embeddings/projection?" + params());
      } catch (err) {
        setStatus(String(err.message || err), "bad");
        return;
      }
      if (body.state === "ready") return ready(body);
      if (body.state === "error") { setStatus(body.error, "bad"); return; }
      setStatus("computing the " + (body.method || "") + " projection of " + body.count + " points…", "busy");
      if (performance.now() > deadline) { setStatus("still computing: reload later", "bad"); return; }
      await new Promise((res) => setTimeout(res, status === 202 ? 300 : 1000));
    }
  }

  function decode(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Float32Array(bytes.buffer);
  }

  async function ready(data) {
    state.data = data;
    document.getElementById("emb-method").textContent = data.method;
    state.xy = decode(data.xy);
    if (root.dataset.exchange) {
      try {
        const [, rag] = await getJSON("/api/embeddings/rag?exchange=" + encodeURIComponent(root.dataset.exchange));
        const space = rag.spaces.find((s) => s.model === data.model && s.dim === data.dim);
        if (space) for (const p in space.points) state.rag.set(Number(p), space.points[p]);
        const countEl = document.getElementById("emb-rag-count");
        if (countEl) countEl.textContent = state.rag.size + " point(s) in this space.";
      } catch (err) { setStatus(String(err.message || err), "bad"); }
    }
    layout();
    draw();
    const ms = Math.round(performance.now());  // since navigation started
    setStatus(data.count + " points · drawn in " + ms + " ms" +
      (data.stale ? " · newer points are being projected: reload soon" : ""));
    document.body.dataset.embRenderMs = String(ms);
    document.body.dataset.embState = "ready";
  }

  function layout() {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    const n = state.data.count, xy = state.xy, pad = 14;
    let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    for (let i = 0; i < n; i++) {
      const x = xy[2 * i], y = xy[2 * i + 1];
      if (x < minX) minX = x; if (x > maxX) maxX = x;
      if (y < minY) minY = y; if (y > maxY) maxY = y;
    }
    const spanX = maxX - minX || 1, spanY = maxY - minY || 1;
    const scale = Math.min((w - 2 * pad) / spanX, (h - 2 * pad) / spanY);
    const offX = (w - spanX * scale) / 2, offY = (h - spanY * scale) / 2;
    state.sx = new Float32Array(n);
    state.sy = new Float32Array(n);
    const cell = 12, cols = Math.ceil(w / cell) + 1, grid = new Map();
    for (let i = 0; i < n; i++) {
      const px = offX + (xy[2 * i] - minX) * scale;
      const py = h - (offY + (xy[2 * i + 1] - minY) * scale);
      state.sx[i] = px; state.sy[i] = py;
      const key = Math.floor(py / cell) * cols + Math.floor(px / cell);
      let bucket = grid.get(key);
      if (!bucket) grid.set(key, (bucket = []));
      bucket.push(i);
    }
    state.grid = { cell, cols, map: grid };
  }

  function colourOf(code) { return PALETTE[code % PALETTE.length]; }

  function draw() {
    const ctx = canvas.getContext("2d");
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, canvas.clientWidth, canvas.clientHeight);
    const cat = state.data.categories[state.colour];
    const n = state.data.count, dimmed = state.rag.size > 0 || state.picked >= 0;
    const byCode = new Map();
    for (let i = 0; i < n; i++) {
      const c = cat.codes[i];
      let list = byCode.get(c);
      if (!list) byCode.set(c, (list = []));
      list.push(i);
    }
    ctx.globalAlpha = dimmed ? 0.45 : 0.8;
    // Squares are several times faster to fill than circles: circles only while they are few.
    const round = n <= 3000, r = n > 5000 ? 1.5 : n > 500 ? 2.5 : 4;
    for (const [code, list] of byCode) {
      ctx.fillStyle = colourOf(code);
      if (round) {
        ctx.beginPath();
        for (const i of list) {
          ctx.moveTo(state.sx[i] + r, state.sy[i]);
          ctx.arc(state.sx[i], state.sy[i], r, 0, 2 * Math.PI);
        }
        ctx.fill();
      } else {
        for (const i of list) ctx.fillRect(state.sx[i] - r, state.sy[i] - r, 2 * r, 2 * r);
      }
    }
    ctx.globalAlpha = 1;
    ctx.lineWidth = 2;
    for (const [point, kind] of state.rag) {
      const i = indexOf(point);
      if (i < 0) continue;
      ring(ctx, i, kind === "query" ? 8 : 7, kind === "query" ? "#e03131" : "#f08c00", kind === "query");
    }
    for (const i of state.neighbours.keys()) ring(ctx, i, 7, "#1d1f24", false);
    if (state.picked >= 0) ring(ctx, state.picked, 8, "#3b5bdb", true);
    legend(cat, byCode);
  }

  function ring(ctx, i, radius, colour, fill) {
    ctx.beginPath();
    ctx.arc(state.sx[i], state.sy[i], radius, 0, 2 * Math.PI);
    ctx.strokeStyle = colour;
    ctx.stroke();
    if (fill) { ctx.globalAlpha = 0.5; ctx.fillStyle = colour; ctx.fill(); ctx.globalAlpha = 1; }
  }

  let pointIndex = null;
  function indexOf(point) {
    if (!pointIndex) {
      pointIndex = new Map();
      state.data.points.forEach((p, i) => pointIndex.set(p, i));
    }
    const i = pointIndex.get(point);
    return i === undefined ? -1 : i;
  }

  function legend(cat, byCode) {
    legendEl.replaceChildren();
    const shown = [...byCode.keys()].sort((a, b) => byCode.get(b).length - byCode.get(a).length);
    for (const code of shown.slice(0, 40)) {
      const li = document.createElement("li");
      const sw = document.createElement("span");
      sw.className = "emb-swatch";
      sw.style.background = colourOf(code);
      const label = document.createElement("span");
      label.textContent = cat.values[code] + " (" + byCode.get(code).length + ")";
      li.append(sw, label);
      legendEl.append(li);
    }
    if (shown.length > 40) {
      const li = document.createElement("li");
      li.className = "dim";
      li.textContent = "… and " + (shown.length - 40) + " more";
      legendEl.append(li);
    }
  }

  function nearest(mx, my) {
    const g = state.grid;
    if (!g) return -1;
    const cx = Math.floor(mx / g.cell), cy = Math.floor(my / g.cell);
    let best = -1, bestD = 64;
    for (let dy = -1; dy <= 1; dy++) {
      for (let dx = -1; dx <= 1; dx++) {
        const bucket = g.map.get((cy + dy) * g.cols + (cx + dx));
        if (!bucket) continue;
        for (const i of bucket) {
          const d = (state.sx[i] - mx) ** 2 + (state.sy[i] - my) ** 2;
          if (d < bestD) { bestD = d; best = i; }
        }
      }
    }
    return best;
  }

  function mouse(ev) {
    const rect = canvas.getBoundingClientRect();
    return [ev.clientX - rect.left, ev.clientY - rect.top];
  }

  canvas.addEventListener("mousemove", (ev) => {
    const [mx, my] = mouse(ev);
    const i = nearest(mx, my);
    if (i < 0) { tip.hidden = true; return; }
    const kind = state.rag.get(state.data.points[i]);
    tip.textContent = (kind ? "[" + kind + "] " : "") + state.data.text[i];
    tip.style.left = Math.min(mx + 12, canvas.clientWidth - 200) + "px";
    tip.style.top = (my + 12) + "px";
    tip.hidden = false;
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
  canvas.addEventListener("click", (ev) => {
    const [mx, my] = mouse(ev);
    const i = nearest(mx, my);
    if (i >= 0) pick(i);
  });

  async function pick(i) {
    state.picked = i;
    state.neighbours = new Map();
    draw();
    nbEl.textContent = "…";
    let body;
    try {
      [, body] = await getJSON("/api/embeddings/neighbours?point=" + state.data.points[i] + "&k=10");
    } catch (err) { nbEl.textContent = String(err.message || err); return; }
    nbEl.replaceChildren();
    nbEl.classList.remove("dim");
    const picked = document.createElement("div");
    picked.className = "emb-picked";
    picked.textContent = body.point.text;
    nbEl.append(picked, exchangeLink(body.point));
    const ol = document.createElement("ol");
    ol.className = "emb-nb";
    for (const nb of body.neighbours) {
      const j = indexOf(nb.point);
      if (j >= 0) state.neighbours.set(j, nb.score);
      const li = document.createElement("li");
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = nb.score.toFixed(4);
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = nb.text;
      li.append(score, " ", exchangeLink(nb), text);
      ol.append(li);
    }
    nbEl.append(ol);
    document.body.dataset.embNeighbours = String(body.neighbours.length);
    draw();
  }

  function exchangeLink(p) {
    const a = document.createElement("a");
    a.href = "/exchanges/" + encodeURIComponent(p.exchange);
    a.className = "mono small";
    a.textContent = p.exchange.slice(-8) + "#" + p.index;
    return a;
  }

  colourSel.addEventListener("change", () => { state.colour = colourSel.value; if (state.data) draw(); });
  spaceSel.addEventListener("change", () => {
    const opt = spaceSel.selectedOptions[0];
    const p = new URLSearchParams({ model: opt.value, dim: opt.dataset.dim, method: root.dataset.method });
    if (root.dataset.exchange) p.set("exchange", root.dataset.exchange);
    location.search = p.toString();
  });
  window.addEventListener("resize", () => { if (state.data) { layout(); draw(); } });
  // Read-only, for tests and debugging: where each point was drawn (CSS pixels in the canvas).
  window.llmreelEmbeddings = {
    positions: () => state.data ? state.data.points.map((p, i) => [p, state.sx[i], state.sy[i]]) : [],
    rag: () => Object.fromEntries(state.rag),
  };
  load();
})();
