// llmreel ui: the playground. Sends variants of a logged request (POST /api/playground/run,
// answers streamed as NDJSON), and "Run ×N" (POST /api/playground/probe).
// Builds every node with textContent: data never becomes HTML. A typed key lives in this
// script's memory only (never localStorage, sessionStorage or cookies).
"use strict";
(function () {
  const cols = document.getElementById("pg-cols");
  if (!cols) return;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const from = cols.dataset.from;
  const draft = JSON.parse(cols.dataset.draft);
  const keyInput = document.getElementById("pg-key");
  let typedKey = "";  // the page's memory: the only place a typed key is kept
  keyInput.addEventListener("input", function () { typedKey = keyInput.value.trim(); });

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function diffInto(target, ops) {
    target.textContent = "";
    ops.forEach(function (op) {
      const kind = op[0] === "+" ? "ins" : op[0] === "-" ? "del" : "span";
      target.appendChild(el(kind, kind === "span" ? "" : "pg-" + kind, op[1]));
    });
  }
  function money(usd) { return usd === null || usd === undefined ? "cost unknown" : "$" + Number(usd).toFixed(6); }

  // --- variants ------------------------------------------------------------------------------
  const first = cols.querySelector(".pg-variant");
  first.querySelector(".pg-body").value = JSON.stringify(draft.body, null, 2);
  first.dataset.headers = JSON.stringify(draft.headers || {});
  function variants() { return Array.from(cols.querySelectorAll(".pg-variant")); }
  function renumber() {
    variants().forEach(function (v, i) { v.querySelector(".pg-name").textContent = "Variant " + (i + 1); });
  }
  document.getElementById("pg-add").addEventListener("click", function () {
    const last = variants()[variants().length - 1];
    const copy = last.cloneNode(true);
    copy.querySelectorAll("textarea, input").forEach(function (field, i) {
      field.value = last.querySelectorAll("textarea, input")[i].value;
    });
    copy.querySelector(".pg-result").textContent = "";
    copy.querySelector(".pg-meta").textContent = "";
    cols.appendChild(copy);
    renumber();
  });
  cols.addEventListener("click", function (event) {
    const remove = event.target.closest(".pg-remove");
    if (remove && variants().length > 1) { remove.closest(".pg-variant").remove(); renumber(); }
  });

  function requestOf(variant) {
    // The JSON body as edited, plus the fields changed since they were shown.
    const body = JSON.parse(variant.querySelector(".pg-body").value);
    const edits = {};
    variant.querySelectorAll("[data-edit]").forEach(function (field) {
      if (field.value === field.dataset.initial) return;
      const name = field.dataset.edit;
      edits[name] = name === "temperature" ? Number(field.value) : field.value;
    });
    return {
      from: from, n: 1, record: document.getElementById("pg-record").checked, key: typedKey,
      request: { url: variant.querySelector(".pg-url").value, body: body,
                 headers: JSON.parse(variant.dataset.headers || "{}") },
      edits: edits,
    };
  }
  function post(path, payload, accept) {
    return fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": csrf, "accept": accept },
      body: JSON.stringify(payload),
    });
  }

  async function send(variant) {
    const out = variant.querySelector(".pg-result");
    const meta = variant.querySelector(".pg-meta");
    out.textContent = "";
    out.classList.remove("bad");
    meta.textContent = "sending…";
    let payload;
    try { payload = requestOf(variant); } catch (exc) {
      meta.textContent = ""; out.classList.add("bad"); out.textContent = "the request body is not valid JSON: " + exc.message;
      return;
    }
    const reply = await post("/api/playground/run", payload, "application/x-ndjson");
    if (!reply.ok) {
      const problem = await reply.json().catch(function () { return { error: "HTTP " + reply.status }; });
      meta.textContent = "";
      out.classList.add("bad");
      out.textContent = problem.error;
      return;
    }
    const reader = reply.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const chunk = await reader.read();
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      let at;
      while ((at = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, at);
        buffer = buffer.slice(at + 1);
        if (line) show(variant, JSON.parse(line));
      }
    }
  }
  function show(variant, event) {
    const out = variant.querySelector(".pg-result");
    const meta = variant.querySelector(".pg-meta");
    if (event.event === "text") { out.textContent = event.text; meta.textContent = "streaming…"; return; }
    if (event.event === "error") { out.classList.add("bad"); out.textContent = event.error; meta.textContent = ""; return; }
    const run = event.runs[0];
    variant.dataset.done = "1";
    variant.querySelector(".pg-body").value = JSON.stringify(event.request.body, null, 2);
    variant.querySelectorAll("[data-edit]").forEach(function (f) { f.dataset.initial = f.value; });
    meta.textContent = "";
    if (run.id) {
      const link = el("a", "mono", run.id);
      link.href = "/exchanges/" + encodeURIComponent(run.id);
      meta.appendChild(link);
    }
    meta.appendChild(document.createTextNode(" · HTTP " + run.status + " · " + run.cache + " · " +
      (run.input_tokens || 0) + " in / " + (run.output_tokens || 0) + " out · " + money(run.cost_usd)));
    if (run.error) { out.classList.add("bad"); out.textContent = run.error; return; }
    diffInto(out, run.diff);  // the answer, with what differs from the original marked
  }
  document.getElementById("pg-send").addEventListener("click", function () {
    variants().forEach(function (v) { delete v.dataset.done; send(v); });
  });

  // --- Run ×N ----------------------------------------------------------------------------------
  const probeN = document.getElementById("probe-n");
  const probeButton = document.getElementById("probe-run");
  probeN.addEventListener("input", function () { probeButton.textContent = "Run ×" + probeN.value; });
  probeButton.addEventListener("click", async function () {
    const target = document.getElementById("probe-out");
    target.textContent = "";
    let payload;
    try { payload = requestOf(variants()[0]); } catch (exc) {
      target.appendChild(el("p", "bad", "the request body is not valid JSON: " + exc.message));
      return;
    }
    payload.n = Number(probeN.value);
    payload.seed = Number(document.getElementById("probe-seed").value || 0);
    payload.threshold = Number(document.getElementById("probe-threshold").value || 0.9);
    payload.perturb = Array.from(document.querySelectorAll(".probe-perturb:checked")).map(function (c) { return c.value; });
    target.appendChild(el("p", "dim", "running " + payload.n + " times…"));
    probeButton.disabled = true;
    try {
      const reply = await post("/api/playground/probe", payload, "application/json");
      const report = await reply.json();
      target.textContent = "";
      if (!reply.ok) { target.appendChild(el("p", "bad", report.error)); return; }
      renderProbe(target, report);
    } finally {
      probeButton.disabled = false;
    }
  });
  function renderProbe(target, r) {
    const verdict = el("p", "pg-verdict " + (r.stable ? "ok" : "bad"),
      (r.stable ? "Stable" : "Unstable") + ": score " + r.score.toFixed(3) + " (threshold " + r.threshold + ")");
    target.appendChild(verdict);
    const sim = r.similarity;
    target.appendChild(el("p", "pg-figures", r.distinct + " distinct answer(s) in " + r.answered +
      (r.errors ? " (" + r.errors + " failed)" : "") + " · edit similarity mean " + sim.edit.mean.toFixed(3) +
      ", min " + sim.edit.min.toFixed(3) + " · token Jaccard mean " + sim.jaccard.mean.toFixed(3) +
      ", min " + sim.jaccard.min.toFixed(3) + " · " + money(r.cost.usd)));
    if (r.fields) {
      const table = el("table", "kv pg-fields");
      const head = el("tr");
      ["field", "value", "type", "present"].forEach(function (h) { head.appendChild(el("th", "", h)); });
      table.appendChild(head);
      r.fields.fields.forEach(function (f) {
        const row = el("tr");
        row.appendChild(el("td", "mono", f.path));
        [f.value, f.type, f.present].forEach(function (v) { row.appendChild(el("td", v < 1 ? "bad" : "", v.toFixed(2))); });
        table.appendChild(row);
      });
      target.appendChild(el("p", "", r.fields.kind + " agreement: " +
        ["tools", "keys", "types", "values"].filter(function (k) { return k in r.fields; })
          .map(function (k) { return k + " " + r.fields[k].toFixed(2); }).join(", ")));
      target.appendChild(table);
    }
    const groups = el("div", "pg-groups");
    r.groups.forEach(function (g, i) {
      const card = el("div", "pg-group panel");
      const title = el("h3", "", "#" + (i + 1) + " ×" + g.count + " ");
      g.runs.forEach(function (index) {
        const run = r.runs[index];
        if (!run || !run.id) return;
        const link = el("a", "mono small", "run " + index);
        link.href = "/exchanges/" + encodeURIComponent(run.id);
        link.title = (run.perturbations || []).join(", ") || "as recorded";
        title.appendChild(link);
        title.appendChild(document.createTextNode(" "));
      });
      card.appendChild(title);
      const answer = el("pre", "pg-answer");
      diffInto(answer, g.diff);  // against the most common answer
      card.appendChild(answer);
      groups.appendChild(card);
    });
    target.appendChild(groups);
  }
})();
