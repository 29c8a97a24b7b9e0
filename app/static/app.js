// The xlir search page: plain JavaScript, no framework, no requests outside this server.
// API: GET /ready (languages, reranker), GET /collections (when the server has named collections),
// POST /search or /collections/{name}/search. Errors come as {"error": code, "detail": text} (app/errors.py).
"use strict";

(() => {
  const KEY_STORE = "xlir.apiKey";
  const STAGES = ["encode", "retrieve", "fuse", "feedback", "rerank", "highlight"];
  const $ = (id) => document.getElementById(id);
  const els = {
    form: $("search-form"), q: $("q"), key: $("api-key"), status: $("status"), chips: $("lang-chips"),
    collectionBox: $("collection-box"), collection: $("collection"), rerankNote: $("rerank-note"),
    k: $("k"), error: $("error"), summary: $("summary"), timings: $("timings"), results: $("results"),
    region: $("results-region"),
  };
  const state = {
    collections: [],      // GET /collections: [{name, docs, languages, default}]
    defaultName: null,    // the collection the unnamed routes serve
    languages: {},        // lang -> docs, of the chosen collection
    selected: new Set(),  // chosen language chips (empty = all)
    seq: 0,               // the latest search; older answers are ignored
  };
  // timing of the last search, for tests and benchmarks: Enter -> results in the DOM
  window.xlirPage = { searches: 0, lastMs: null, lastCount: null, serverMs: null, highlighted: 0 };

  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    const key = els.key.value.trim();
    if (key) h["X-API-Key"] = key;
    return h;
  }

  // the server's error body as one line: "422 query_too_long: the query has ..."
  async function failure(resp) {
    let code = "http_error";
    let detail = resp.statusText || "request failed";
    try {
      const body = await resp.json();
      if (body && typeof body === "object") {
        code = body.error || code;
        detail = body.detail || (body.ready === false ? "index not ready" : detail);
      }
    } catch (_) { /* not JSON: keep the status text */ }
    const err = new Error(`${resp.status} ${code}: ${detail}`);
    err.status = resp.status;
    err.code = code;
    err.detail = detail;
    return err;
  }

  async function getJSON(path) {
    const resp = await fetch(path, { headers: headers(false) });
    if (!resp.ok) throw await failure(resp);
    return resp.json();
  }

  // the routes of the chosen collection: the unnamed ones for the default (or when there are no collections)
  function base() {
    const name = els.collection.value;
    return name && name !== state.defaultName ? `/collections/${encodeURIComponent(name)}` : "";
  }

  // ---- set-up: readiness, collections, languages -----------------------------------------------------------

  function describe(ready) {
    const parts = [];
    if (ready.docs != null) parts.push(`${ready.docs.toLocaleString()} documents`);
    if (ready.languages) parts.push(`${Object.keys(ready.languages).length} languages`);
    if (ready.encoder) parts.push(`encoder ${ready.encoder}`);
    parts.push(ready.reranker ? `reranker ${ready.reranker}` : "no reranker");
    return parts.join(" · ");
  }

  function setRerank(reranker) {
    const on = document.querySelector('input[name="rerank"][value="on"]');
    on.disabled = !reranker;
    if (!reranker) {
      document.querySelector('input[name="rerank"][value="off"]').checked = true;
      els.rerankNote.textContent = "the server has no reranker (XLIR_RERANKER)";
      els.rerankNote.hidden = false;
    } else {
      els.rerankNote.hidden = true;
    }
  }

  function renderChips() {
    els.chips.replaceChildren();
    const langs = Object.entries(state.languages).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    for (const [lang, n] of langs) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "chip";
      b.dataset.lang = lang;
      b.setAttribute("aria-pressed", String(state.selected.has(lang)));
      b.title = `${n} documents`;
      b.textContent = lang;
      const count = document.createElement("span");
      count.className = "count";
      count.textContent = String(n);
      b.append(" ", count);
      b.addEventListener("click", () => {
        if (state.selected.has(lang)) state.selected.delete(lang); else state.selected.add(lang);
        b.setAttribute("aria-pressed", String(state.selected.has(lang)));
        if (els.q.value.trim()) search();
      });
      els.chips.append(b);
    }
  }

  // GET /collections: {"default": name, "collections": [{name, default, ready, docs, languages}]}
  async function loadCollections() {
    state.collections = [];
    state.defaultName = null;
    try {
      const resp = await fetch("/collections", { headers: headers(false) });
      if (!resp.ok) return;  // a server without collections: the unnamed routes only
      const body = await resp.json();
      const list = Array.isArray(body.collections) ? body.collections.filter((c) => c && c.name) : [];
      const marked = list.find((c) => c.default);
      state.collections = list;
      state.defaultName = body.default || (marked ? marked.name : null) || (list.length ? list[0].name : null);
    } catch (_) { /* no collections */ }
  }

  async function loadLanguages() {
    const name = els.collection.value;
    const chosen = state.collections.find((c) => c.name === name);
    let ready = null;
    try {
      ready = await getJSON(`${base()}/ready`);
    } catch (err) {
      if (!chosen || !chosen.languages) throw err;
    }
    state.languages = (ready && ready.languages) || (chosen && chosen.languages) || {};
    for (const lang of [...state.selected]) if (!(lang in state.languages)) state.selected.delete(lang);
    renderChips();
    return ready;
  }

  async function init() {
    els.key.value = localStorage.getItem(KEY_STORE) || "";
    try {
      const ready = await getJSON("/ready");
      setRerank(ready.reranker);
      await loadCollections();
      const keep = els.collection.value;
      els.collection.replaceChildren();
      els.collectionBox.hidden = true;
      if (state.collections.length > 1) {
        for (const c of state.collections) {
          const o = document.createElement("option");
          o.value = c.name;
          o.textContent = c.docs != null ? `${c.name} (${c.docs})` : c.name;
          els.collection.append(o);
        }
        if (state.collections.some((c) => c.name === keep)) els.collection.value = keep;
        els.collectionBox.hidden = false;
      }
      const current = await loadLanguages();
      els.status.textContent = describe(current || ready);
    } catch (err) {
      els.status.textContent = `not ready: ${err.message}`;
    }
  }

  // ---- searching ----------------------------------------------------------------------------------------------

  function radio(name) {
    return document.querySelector(`input[name="${name}"]:checked`).value;
  }

  function request(query) {
    const body = {
      query, k: Number(els.k.value), mode: radio("mode"), feedback: radio("feedback"),
      rerank: radio("rerank") === "on",
    };
    if (state.selected.size) body.langs = [...state.selected].sort();
    return body;
  }

  async function post(body) {
    const resp = await fetch(`${base()}/search`, {
      method: "POST", headers: headers(true), body: JSON.stringify(body),
    });
    if (resp.ok) return resp.json();
    throw await failure(resp);
  }

  // the text with the spans (code point offsets, end exclusive) in <mark>; built as DOM nodes, so escaped
  function marked(text, spans) {
    const frag = document.createDocumentFragment();
    const chars = Array.from(text);
    let at = 0;
    const sorted = (spans || []).map((s) => [Number(s[0]), Number(s[1])]).sort((a, b) => a[0] - b[0]);
    for (let [start, end] of sorted) {
      start = Math.max(start, at);
      end = Math.min(end, chars.length);
      if (!(end > start)) continue;
      if (start > at) frag.append(chars.slice(at, start).join(""));
      const m = document.createElement("mark");
      m.textContent = chars.slice(start, end).join("");
      frag.append(m);
      at = end;
    }
    if (at < chars.length) frag.append(chars.slice(at).join(""));
    return frag;
  }

  // the hit's highlight (its best sentence, the query's terms in <mark>), else its snippet
  function hitText(hit) {
    const text = document.createElement("p");
    if (hit.highlight && typeof hit.highlight.text === "string") {
      text.className = "highlight";
      text.dataset.source = hit.highlight.source || "";
      text.append(marked(hit.highlight.text, hit.highlight.spans));
    } else {
      text.className = "snippet";
      text.textContent = hit.snippet;
    }
    return text;
  }

  function hitItem(hit, i) {
    const li = document.createElement("li");
    li.className = "hit";
    li.tabIndex = -1;
    li.dataset.id = hit.id;
    li.dataset.lang = hit.lang;
    const head = document.createElement("div");
    head.className = "hit-head";
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = hit.lang;
    badge.setAttribute("aria-label", `language ${hit.lang}`);
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = hit.title || hit.id;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `#${i + 1} · ${hit.id} · ${Number(hit.score).toFixed(3)}`;
    head.append(badge, title, score);
    li.append(head, hitText(hit));
    li.addEventListener("click", () => li.focus());
    return li;
  }

  function showTimings(resp) {
    const t = resp.timings_ms || {};
    const parts = STAGES.filter((s) => s in t).map((s) => `${s} ${t[s].toFixed(1)} ms`);
    const total = "total" in t ? t.total : resp.took_ms;
    parts.push(`total ${Number(total).toFixed(1)} ms`);
    els.timings.replaceChildren();
    for (const p of parts) {
      const s = document.createElement("span");
      s.className = "stage";
      s.textContent = p;
      els.timings.append(s);
    }
  }

  function summary(resp) {
    const bits = [`${resp.results.length} results`, `mode ${resp.mode}${resp.fusion ? ` (${resp.fusion})` : ""}`];
    const c = resp.centering;
    if (c && c.query_lang) bits.push(`query language ${c.query_lang}${c.lang_source === "detected" ? " (detected)" : ""}`);
    if (resp.feedback) bits.push(`feedback ${resp.feedback.applied ? "applied" : "not applied"}`);
    if (resp.rerank) bits.push(resp.rerank.applied ? `reranked by ${resp.rerank.model}` : `not reranked: ${resp.rerank.reason}`);
    return bits.join(" · ");
  }

  function showError(err) {
    els.error.textContent = err.message;
    els.error.hidden = false;
  }

  function clearOutput() {
    els.error.hidden = true;
    els.error.textContent = "";
    els.summary.textContent = "";
    els.timings.replaceChildren();
    els.results.replaceChildren();
  }

  function showHighlights(resp) {
    const items = new Map(hits().map((li) => [li.dataset.id, li]));
    let shown = 0;
    for (const hit of resp.results) {
      const li = items.get(hit.id);
      if (!li || !hit.highlight) continue;
      li.querySelector("p").replaceWith(hitText(hit));
      shown += 1;
    }
    const ms = (resp.timings_ms || {}).highlight;
    if (ms != null) {
      const s = document.createElement("span");
      s.className = "stage";
      s.textContent = `highlight ${ms.toFixed(1)} ms`;
      els.timings.append(s);
    }
    return shown;
  }

  // Two requests: the results first (shown at once), then, with highlights on, the same search with
  // highlight: true, whose sentences replace the snippets: highlights cost the server far more than the search
  // (dense ones encode the hits' sentences), and the first results should not wait for them.
  async function search() {
    const query = els.q.value;
    if (!query.trim()) return;
    const started = performance.now();
    const seq = ++state.seq;
    const body = request(query);
    const highlight = radio("highlight") === "on";
    let rendered = false;
    els.region.setAttribute("aria-busy", "true");
    try {
      const resp = await post(body);
      if (seq !== state.seq) return;
      clearOutput();
      els.results.append(...resp.results.map(hitItem));
      els.summary.textContent = summary(resp);
      showTimings(resp);
      rendered = true;
      const t = resp.timings_ms || {};
      const page = {
        searches: window.xlirPage.searches + 1, lastMs: performance.now() - started, paintedMs: null,
        lastCount: resp.results.length, serverMs: "total" in t ? t.total : resp.took_ms, timings: t,
        highlighted: resp.results.filter((h) => h.highlight).length, highlightMs: null, done: false,
      };
      window.xlirPage = page;
      // after the next frame is drawn: Enter -> results on screen
      requestAnimationFrame(() => setTimeout(() => { page.paintedMs = performance.now() - started; }, 0));
      if (highlight && resp.results.length) {
        const full = await post({ ...body, highlight: true });
        if (seq !== state.seq) return;
        page.highlighted = showHighlights(full);
        page.highlightMs = performance.now() - started;
        page.timings = { ...t, highlight: (full.timings_ms || {}).highlight };
      }
      page.done = true;
    } catch (err) {
      if (seq !== state.seq) return;
      if (!rendered) clearOutput();  // a failed highlight request keeps the results
      showError(err);
      window.xlirPage.done = true;
    } finally {
      if (seq === state.seq) els.region.setAttribute("aria-busy", "false");
    }
  }

  // ---- keyboard ------------------------------------------------------------------------------------------------

  function hits() {
    return Array.from(els.results.querySelectorAll(".hit"));
  }

  function move(delta) {
    const list = hits();
    if (!list.length) return false;
    const at = list.indexOf(document.activeElement);
    const next = at < 0 ? (delta > 0 ? 0 : list.length - 1) : at + delta;
    if (next < 0) {
      els.q.focus();
      return true;
    }
    list[Math.min(next, list.length - 1)].focus();
    return true;
  }

  function typing(target) {
    return target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === "/" && !typing(ev.target)) {
      ev.preventDefault();
      els.q.focus();
      els.q.select();
    } else if (ev.key === "Escape" && ev.target !== els.key) {
      ev.preventDefault();
      state.seq++;
      els.q.value = "";
      clearOutput();
      els.q.focus();
    } else if ((ev.key === "ArrowDown" || ev.key === "ArrowUp")
               && (ev.target === els.q || ev.target.classList.contains("hit") || !typing(ev.target))) {
      if (move(ev.key === "ArrowDown" ? 1 : -1)) ev.preventDefault();
    }
  });

  els.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    search();
  });
  els.key.addEventListener("change", () => {
    const key = els.key.value.trim();
    if (key) localStorage.setItem(KEY_STORE, key); else localStorage.removeItem(KEY_STORE);
    init();
  });
  els.collection.addEventListener("change", async () => {
    try {
      const ready = await loadLanguages();
      if (ready) els.status.textContent = describe(ready);
      if (els.q.value.trim()) search();
    } catch (err) {
      showError(err);
    }
  });
  for (const input of document.querySelectorAll(".switch input, #k")) {
    input.addEventListener("change", () => { if (els.q.value.trim()) search(); });
  }

  init();
  els.q.focus();
})();
