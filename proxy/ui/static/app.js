// llmreel ui: keyboard, live updates, copy buttons, thread step navigation.
// Loaded as a static file: the CSP forbids inline script. Never builds HTML from data; the
// server renders (and escapes) every fragment it inserts.
"use strict";
(function () {
  const page = document.body.dataset.page;

  // --- tables: j/k to move, Enter to open, / to search -----------------------------------
  function rows() { return Array.from(document.querySelectorAll("table.grid tbody tr[data-href]")); }
  let selected = null;  // the id (or href) of the selected row, kept across live refreshes
  function select(row) {
    rows().forEach(r => r.classList.remove("sel"));
    if (!row) return;
    row.classList.add("sel");
    selected = row.dataset.id || row.dataset.href;
    row.scrollIntoView({ block: "nearest" });
  }
  function current() { return document.querySelector("table.grid tbody tr.sel"); }
  document.addEventListener("keydown", function (event) {
    const target = event.target;
    const typing = target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT");
    if (event.key === "Escape" && typing) { target.blur(); return; }
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    const list = rows();
    if (event.key === "/") {
      const search = document.getElementById("search") || document.querySelector(".filters input");
      if (search) { event.preventDefault(); search.focus(); search.select(); }
    } else if ((event.key === "j" || event.key === "k") && list.length) {
      const at = list.indexOf(current());
      const next = event.key === "j" ? Math.min(at + 1, list.length - 1) : Math.max(at - 1, 0);
      select(list[at < 0 ? 0 : next]);
      event.preventDefault();
    } else if (event.key === "Enter" && current()) {
      window.location.href = current().dataset.href;
    }
  });
  document.addEventListener("click", function (event) {
    const row = event.target.closest && event.target.closest("table.grid tbody tr[data-href]");
    if (row && !event.target.closest("a, button, input")) select(row);
  });

  // --- live: the exchanges list refreshes when the server announces new exchanges ----------
  const results = document.getElementById("results");
  if (page === "exchanges" && results && results.dataset.live === "1" && window.EventSource) {
    let pending = false;
    let known = new Set(rows().map(r => r.dataset.id));
    const source = new EventSource("/api/events");
    function refresh() {
      pending = false;
      const params = new URLSearchParams(window.location.search);
      params.set("fragment", "1");
      fetch("/?" + params.toString(), { headers: { "accept": "text/html" } })
        .then(r => r.ok ? r.text() : Promise.reject(r.status))
        .then(html => {
          results.innerHTML = html;  // rendered and escaped by the server
          rows().forEach(r => {
            if (!known.has(r.dataset.id)) r.classList.add("new");
            if (selected && r.dataset.id === selected) r.classList.add("sel");
          });
          known = new Set(rows().map(r => r.dataset.id));
          document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
        })
        .catch(() => {});
    }
    source.addEventListener("exchanges", function () {
      if (!pending) { pending = true; setTimeout(refresh, 150); }
    });
    source.onerror = function () { const l = document.getElementById("live"); if (l) l.classList.add("off"); };
    source.onopen = function () { const l = document.getElementById("live"); if (l) l.classList.remove("off"); };
  }

  // --- copy buttons ------------------------------------------------------------------------
  document.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      const source = document.getElementById(button.dataset.copy);
      if (!source || !navigator.clipboard) return;
      navigator.clipboard.writeText(source.textContent).then(function () {
        button.textContent = "copied";
        setTimeout(function () { button.textContent = "copy"; }, 1200);
      });
    });
  });

  // --- thread: open the step named in the address, jump, expand and collapse ---------------
  if (page === "thread") {
    function openStep() {
      const id = decodeURIComponent(window.location.hash.slice(1));
      const step = id && document.getElementById(id);
      if (step) { const d = step.querySelector("details"); if (d) d.open = true; step.scrollIntoView({ block: "start" }); }
    }
    window.addEventListener("hashchange", openStep);
    openStep();
    const jump = document.getElementById("jump");
    if (jump) jump.addEventListener("change", function () { if (jump.value) window.location.hash = "step-" + jump.value; });
    const all = (open) => document.querySelectorAll("ol.steps details").forEach(d => { d.open = open; });
    const expand = document.getElementById("expand-all"), collapse = document.getElementById("collapse-all");
    if (expand) expand.addEventListener("click", () => all(true));
    if (collapse) collapse.addEventListener("click", () => all(false));
  }
})();
