// searchlite's search page: plain JavaScript, no build step, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 30;
let state = { q: "", similar: null, model: "", compare: [], view: "" };
let nextOffset = null;
let loading = false;
let lastUpload = null;

async function api(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function filterParams() {
  const p = new URLSearchParams();
  if ($("folder").value.trim()) p.set("folder", $("folder").value.trim());
  if ($("after").value) p.set("after", $("after").value);
  if ($("before").value) p.set("before", $("before").value);  // a date alone: the whole day (server side)
  if ($("place").value.trim()) p.set("place", $("place").value.trim());
  if ($("camera").value.trim()) p.set("camera", $("camera").value.trim());
  if ($("text-filter").value.trim()) p.set("text", $("text-filter").value.trim());
  if ($("min-prob").value) p.set("min_prob", $("min-prob").value);
  if (state.model) p.set("model", state.model);
  return p;
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

// Case- and accent-insensitive form of a string, as the server folds text ("Zürich" -> "zurich").
const fold = (text) => text.normalize("NFKD").replace(/\p{M}/gu, "").toLowerCase();

// The words of the query to highlight: its terms without quotes, weights, operators and prefix stars.
function queryWords(q) {
  return q.split(/\s+[+-]\s+/).flatMap((term) => term.replace(/^-?\d+(\.\d+)?:/, "").replace(/["*]/g, " ")
    .split(/[\s_.,;:]+/)).map(fold).filter((w) => w.length > 0);
}

// The text with the query's words marked: built from text nodes and <mark> elements, never HTML,
// so whatever a photo's text holds (OCR, file names, XMP) is shown as text.
function highlighted(text, words) {
  const out = document.createDocumentFragment();
  let folded = "";
  const origin = [];  // index in `text` of each character of `folded`
  [...text].forEach((c, i, chars) => {
    const at = chars.slice(0, i).join("").length;
    for (const f of fold(c)) { folded += f; origin.push(at); }
  });
  const marks = [];
  for (const w of words) {
    for (let at = folded.indexOf(w); at >= 0 && w; at = folded.indexOf(w, at + w.length)) {
      marks.push([origin[at], (origin[at + w.length] ?? text.length)]);
    }
  }
  marks.sort((a, b) => a[0] - b[0]);
  let pos = 0;
  for (const [lo, hi] of marks) {
    if (lo < pos) continue;  // overlapping words: the first wins
    out.append(document.createTextNode(text.slice(pos, lo)));
    const mark = document.createElement("mark");
    mark.textContent = text.slice(lo, hi);
    out.append(mark);
    pos = hi;
  }
  out.append(document.createTextNode(text.slice(pos)));
  return out;
}

// Why a photo matched (hybrid search): each field's matched text with the query's words marked, and its place.
function why(result) {
  const box = document.createElement("div");
  box.className = "why";
  const words = queryWords(state.q || "");
  for (const m of result.matches || []) {
    const line = document.createElement("p");
    line.className = "match";
    line.dataset.field = m.field;
    const label = document.createElement("b");
    label.textContent = `${m.field}: `;
    line.append(label, highlighted(m.text, words));
    box.append(line);
  }
  if (result.place && !(result.matches || []).some((m) => m.field === "place")) {
    const place = document.createElement("p");
    place.className = "place";
    const label = document.createElement("b");
    label.textContent = "place: ";
    place.append(label, document.createTextNode(result.place));
    box.append(place);
  }
  return box;
}

function card(result, onOpen) {
  const div = document.createElement("div");
  div.className = "card";
  div.dataset.id = result.id;
  div.dataset.path = result.path;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.src = result.thumbnail;
  img.alt = result.path.split("/").pop();
  img.addEventListener("click", () => onOpen(result));
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = result.probability.toFixed(2);
  badge.title = `probability ${result.probability.toFixed(3)}, cosine ${result.score.toFixed(4)}`;
  const similar = document.createElement("button");
  similar.className = "similar";
  similar.textContent = "similar";
  similar.addEventListener("click", () => go({ q: "", similar: result.id }));
  div.append(img, badge, similar);
  if ((result.matches && result.matches.length) || result.place) div.append(why(result));
  if (result.also_in && result.also_in.length) {
    div.classList.add("agreed");
    const agree = document.createElement("span");
    agree.className = "agree";
    agree.textContent = `✓ ${result.also_in.length}`;
    agree.title = `also found by ${result.also_in.join(", ")}`;
    div.append(agree);
  }
  return div;
}

async function openDetail(result) {
  $("detail-image").src = result.image;
  const info = $("detail-info");
  info.replaceChildren();
  const add = (name, value) => {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    info.append(dt, dd);
  };
  add("path", result.path);
  if (result.raw_path) add("raw", result.raw_path);
  add("taken", result.taken_at || "unknown");
  add("size", result.width && result.height ? `${result.width} × ${result.height}` : "unknown");
  add("probability", result.probability.toFixed(3));
  if (result.place) add("place", result.place);
  for (const m of result.matches || []) add(`matched ${m.field}`, m.text);
  $("detail-similar").onclick = () => { $("detail").close(); go({ q: "", similar: result.id, view: "" }); };
  $("detail").showModal();
  if (state.q) {
    try {
      const scores = await api(`/api/scores?id=${result.id}&q=${encodeURIComponent(state.q)}`);
      for (const [model, s] of Object.entries(scores)) {
        add(model, `score ${s.score.toFixed(4)}, probability ${s.probability.toFixed(3)}`);
      }
    } catch (e) { add("scores", e.message); }
  }
}

async function loadPage() {
  if (loading || nextOffset === null) return;
  loading = true;
  try {
    const p = filterParams();
    p.set("k", PAGE);
    p.set("offset", nextOffset);
    let page;
    if (lastUpload && state.similar === "upload") {
      const form = new FormData();
      form.append("file", lastUpload);
      form.append("k", PAGE);
      form.append("offset", nextOffset);
      for (const [key, value] of filterParams()) form.append(key, value);  // the same filters as a text search
      page = await api("/api/similar", { method: "POST", body: form });
    } else if (state.similar) {
      p.set("id", state.similar);
      page = await api(`/api/similar?${p}`);
    } else {
      p.set("q", state.q);
      page = await api(`/api/search?${p}`);
    }
    for (const r of page.results) $("grid").append(card(r, openDetail));
    nextOffset = page.next_offset;
    const n = $("grid").children.length;
    $("status").textContent = n ? `${n} photo${n === 1 ? "" : "s"}${nextOffset === null ? "" : " (scroll for more)"}`
      : "no photo matches";
    showError("");
  } catch (e) {
    nextOffset = null;
    showError(e.message);
  } finally {
    loading = false;
  }
  if (nextOffset !== null && $("sentinel").getBoundingClientRect().top < window.innerHeight) loadPage();
}

async function runCompare() {
  const view = $("compare-view");
  view.replaceChildren();
  const models = [state.model || $("model").value, ...state.compare].filter((m, i, all) => m && all.indexOf(m) === i);
  const p = filterParams();  // every model's column obeys the page's filters
  p.delete("model");
  p.delete("min_prob");
  p.set("q", state.q);
  p.set("models", models.join(","));
  p.set("k", PAGE);
  const out = await api(`/api/compare?${p}`);
  for (const [model, results] of Object.entries(out)) {
    const column = document.createElement("section");
    const title = document.createElement("h2");
    title.textContent = model;
    const grid = document.createElement("div");
    grid.className = "grid";
    for (const r of results) grid.append(card(r, openDetail));
    column.append(title, grid);
    view.append(column);
  }
  $("status").textContent = `${models.length} models side by side; ✓ marks photos the others also found`;
}

function size(bytes) {
  if (bytes >= 1 << 20) return `${(bytes / (1 << 20)).toFixed(1)} MB`;
  return bytes >= 1024 ? `${(bytes / 1024).toFixed(0)} KB` : `${bytes} B`;
}

// The Duplicates view (?view=duplicates): each group side by side, the suggested keeper marked;
// it only shows them (moving copies away is `searchlite duplicates --move-to`).
async function runDuplicates() {
  const view = $("duplicates-view");
  view.replaceChildren();
  const p = filterParams();
  p.delete("min_prob");
  const threshold = new URLSearchParams(location.search).get("threshold");
  if (threshold) p.set("threshold", threshold);
  $("status").textContent = "looking for duplicates…";
  const out = await api(`/api/duplicates?${p}`);
  for (const group of out.groups) {
    const row = document.createElement("section");
    row.className = "dup-group";
    for (const m of group.members) {
      const div = document.createElement("figure");
      div.className = "dup" + (m.keep ? " keep" : "");
      div.dataset.path = m.path;
      const img = document.createElement("img");
      img.loading = "lazy";
      img.src = m.thumbnail;
      img.alt = m.path.split("/").pop();
      img.addEventListener("click", () => openDetail({ ...m, image: `/api/image/${m.id}`, probability: m.similarity }));
      const caption = document.createElement("figcaption");
      const lines = [m.keep ? "keep" : `similarity ${m.similarity.toFixed(3)}`,
        `${m.width || "?"} × ${m.height || "?"}, ${size(m.size)}`, m.taken_at ? m.taken_at.slice(0, 16).replace("T", " ") : "date unknown",
        m.path];
      for (const text of lines) {
        const line = document.createElement("span");
        line.textContent = text;
        caption.append(line);
      }
      div.append(img, caption);
      row.append(div);
    }
    view.append(row);
  }
  const copies = out.groups.reduce((n, g) => n + g.members.length - 1, 0);
  $("status").textContent = out.total ? `${out.total} groups of duplicates` +
    (out.next_offset === null ? "" : ` (first ${out.groups.length} shown)`) + `; ${copies} copies of a kept photo`
    : "no duplicates found";
}

async function run() {
  $("grid").replaceChildren();
  $("compare-view").replaceChildren();
  const duplicates = state.view === "duplicates";
  $("duplicates-view").hidden = !duplicates;
  if (duplicates) {
    $("grid").hidden = true;
    $("compare-view").hidden = true;
    nextOffset = null;
    showError("");
    try { await runDuplicates(); } catch (e) { showError(e.message); }
    return;
  }
  $("duplicates-view").replaceChildren();
  $("q").value = state.q;
  if (state.model) $("model").value = state.model;
  const comparing = state.compare.length > 0 && state.q;
  $("grid").hidden = comparing;
  $("compare-view").hidden = !comparing;
  showError("");
  if (!state.q && !state.similar) { $("status").textContent = ""; nextOffset = null; return; }
  if (comparing) {
    nextOffset = null;
    try { await runCompare(); } catch (e) { showError(e.message); }
    return;
  }
  nextOffset = 0;
  await loadPage();
}

function urlOf(s) {
  const p = new URLSearchParams();
  if (s.q) p.set("q", s.q);
  if (s.similar && s.similar !== "upload") p.set("similar", s.similar);
  if (s.model) p.set("model", s.model);
  if (s.compare.length) p.set("compare", s.compare.join(","));
  if (s.view) p.set("view", s.view);
  return p.toString() ? `/?${p}` : "/";
}

function go(changes) {
  state = { ...state, ...changes };
  history.pushState(state, "", urlOf(state));
  run();
}

function fromUrl() {
  const p = new URLSearchParams(location.search);
  state = {
    q: p.get("q") || "",
    similar: p.get("similar") ? Number(p.get("similar")) : null,
    model: p.get("model") || "",
    compare: (p.get("compare") || "").split(",").filter(Boolean),
    view: p.get("view") === "duplicates" ? "duplicates" : "",
  };
}

function search(file) {
  const compare = $("compare").checked ? [...$("compare-models").selectedOptions].map((o) => o.value) : [];
  if (file) {
    lastUpload = file;
    go({ q: "", similar: "upload", compare: [], view: "" });
  } else {
    go({ q: $("q").value.trim(), similar: null, model: $("model").value, compare, view: "" });
  }
}

async function init() {
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
  $("upload").addEventListener("change", () => $("upload").files[0] && search($("upload").files[0]));
  $("detail-close").addEventListener("click", () => $("detail").close());
  $("duplicates-link").addEventListener("click", (e) => {
    e.preventDefault();
    go({ q: "", similar: null, compare: [], view: "duplicates" });
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && !["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName)) {
      e.preventDefault();
      $("q").focus();
    }
  });
  document.addEventListener("dragover", (e) => { e.preventDefault(); $("drop").hidden = false; });
  $("drop").addEventListener("dragleave", () => { $("drop").hidden = true; });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    $("drop").hidden = true;
    const file = e.dataTransfer.files[0];
    if (file) search(file);
  });
  new IntersectionObserver((entries) => { if (entries[0].isIntersecting) loadPage(); }).observe($("sentinel"));
  window.addEventListener("popstate", () => { fromUrl(); run(); });
  try {
    const status = await api("/api/status");
    for (const m of status.models.filter((m) => m.indexed)) {
      for (const select of [$("model"), $("compare-models")]) {
        const option = document.createElement("option");
        option.value = m.model;
        option.textContent = m.model.length > 40 ? "…" + m.model.slice(-39) : m.model;
        select.append(option);
      }
    }
  } catch (e) { showError(e.message); }
  document.body.dataset.ready = "1";
  fromUrl();
  run();
}

init();
