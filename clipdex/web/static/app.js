// clipdex page: the URL holds the query (bookmarkable, back button works); every
// string from the server goes into the page through textContent, never as HTML.
// Searches are built from the URL (or the upload), never from half-loaded form controls. An ES module.
import { FILTERS, describeFilters, pickFilters, reasonText } from "./filters.js";

const $ = (id) => document.getElementById(id);
const PAGE = 30;
const INTRO = $("status").textContent;
let view = null; // the search whose results are shown: {kind, filters, offset, fetch(offset), found(n), none}
let seq = 0; // answers to superseded requests are dropped
let knownTags = null; // Set of tag labels, once /api/tags answered
let detailId = null;
let previewUrl = null; // blob: URL of the uploaded picture shown as the reference

async function api(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    throw new Error(body && body.message ? body.message : `${response.status} ${response.statusText}`);
  }
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function setStatus(text) { $("status").textContent = text; }

function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

// -- filters ------------------------------------------------------------------

const urlFilters = () => pickFilters((name) => new URLSearchParams(location.search).get(name));
const formFilters = () => pickFilters((name) => $(name).value);

function tagOptionText(label, count) {
  if (count !== undefined) return `${label} (${count})`;
  return knownTags ? `${label} (no pictures)` : label;
}

function setTag(value) {
  const select = $("tag");
  if (value && ![...select.options].some((o) => o.value === value)) {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = tagOptionText(value);
    select.append(option);
  }
  select.value = value;
}

/** Put ``filters`` into the form controls, the count on the toggle and the clear button. */
function showFilters(filters) {
  for (const name of FILTERS) {
    if (name === "tag") setTag(filters.get(name) || "");
    else $(name).value = filters.get(name) || "";
  }
  countFilters(filters);
}

function countFilters(filters) {
  const active = describeFilters(filters).length;
  $("filter-count").textContent = active;
  $("filter-count").hidden = !active;
  $("clear-all").hidden = !active;
}

// -- results ------------------------------------------------------------------

function card(hit) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "card";
  button.dataset.id = hit.id;
  button.title = hit.path;
  const parts = hit.path.split(/[\\/]/);
  const name = parts.pop();
  const folder = parts.pop();
  const img = document.createElement("img");
  img.src = `/api/images/${hit.id}/thumbnail`;
  img.alt = name;
  img.loading = "lazy";
  // "red/circle-002.jpg": right-to-left box, left-to-right text, so a long path loses its start
  const where = document.createElement("span");
  where.className = "where";
  const text = document.createElement("bdi");
  text.dir = "ltr";
  if (folder) {
    const dir = document.createElement("span");
    dir.className = "folder";
    dir.textContent = `${folder}/`;
    text.append(dir);
  }
  const label = document.createElement("span");
  label.className = "name";
  label.textContent = name;
  text.append(label);
  where.append(text);
  const score = document.createElement("span");
  score.className = "score";
  if (hit.relevance === null || hit.relevance === undefined) {
    score.textContent = hit.score.toFixed(3);
    score.title = "similarity (cosine)";
  } else {
    score.textContent = hit.relevance.toFixed(2);
    score.title = "relevance: 0.50 and above is a match";
    if (hit.relevance < 0.5) score.classList.add("weak");
  }
  if (urlOptions().sort === "date") { // the answer is in capture-date order: show the dates
    const taken = document.createElement("span");
    taken.className = "taken";
    taken.textContent = hit.captured_at ? hit.captured_at.slice(0, 10) : "undated";
    button.append(img, score, where, taken);
  } else {
    button.append(img, score, where);
  }
  button.addEventListener("click", () => openDetail(hit.id));
  li.append(button);
  return li;
}

function showReference(src, name, detail) {
  $("ref-img").src = src;
  $("ref-img").alt = name;
  $("ref-name").textContent = name;
  $("ref-path").textContent = detail;
  $("reference").hidden = false;
}

function clearResults(status) {
  $("grid").replaceChildren();
  $("more").hidden = true;
  $("empty").hidden = true;
  $("reference").hidden = true;
  setStatus(status);
}

/** ``reasonText``, plus the answer "only matches" gives when pictures pass the filters but none matches. */
function noMatchText(reason) {
  if (reason.kind !== "no_match") return reasonText(reason);
  const closest = reason.closest;
  const where = describeFilters(view.filters).length ? ` among the ${plural(reason.among, "picture")} the filters keep` : "";
  return (closest ? `No picture matches${where}; the closest has relevance ${closest.relevance.toFixed(2)} (a match needs 0.50).`
    : `No picture matches${where}.`);
}

/** Why nothing came back: the filters in use, what is known about them, a way out. */
function explainEmpty(body) {
  const active = describeFilters(view.filters);
  const hints = (body.why_empty || []).map(noMatchText).filter(Boolean);
  $("empty-filters").textContent = active.length ? `Filters in use: ${active.join(" · ")}.` : "";
  const list = $("empty-hints");
  list.replaceChildren();
  for (const hint of hints) {
    const li = document.createElement("li");
    li.textContent = hint;
    list.append(li);
  }
  $("clear-filters").hidden = !active.length;
  $("empty").hidden = !active.length && !hints.length;
}

function render(body, append) {
  const grid = $("grid");
  if (!append) grid.replaceChildren();
  for (const hit of body.results) grid.append(card(hit));
  $("more").hidden = !body.has_more;
  const shown = grid.children.length;
  setStatus(shown ? view.found(shown, body.matches) : view.none);
  if (shown) $("empty").hidden = true;
  else explainEmpty(body);
}

async function load(append) {
  const mine = ++seq;
  showError("");
  try {
    const body = await view.fetch(view.offset);
    if (mine === seq) render(body, append);
  } catch (err) {
    if (mine !== seq) return;
    showError(err.message);
    if (append) view.offset -= PAGE; // "More results" asks for the same page again
    else $("reference").hidden = true;
  }
}

function pageQuery(filters, extra) {
  const query = new URLSearchParams(filters);
  if (urlOptions().sort === "date") query.set("sort", "date");
  for (const [key, value] of Object.entries(extra || {})) query.set(key, value);
  query.set("k", PAGE);
  return query;
}

/** The result options in the URL: only matches (text searches) and the order. "By date taken" orders the
 * whole answer, so it goes with "Only matches" (a plain search is a ranking, loaded page by page). */
function urlOptions() {
  const params = new URLSearchParams(location.search);
  const matches = params.get("matches") === "1";
  return { matches, sort: matches && params.get("sort") === "date" ? "date" : "score" };
}

function showOptions(options) {
  $("matches").checked = options.matches;
  $("sort").value = options.sort;
}

function startText(q, filters) {
  const { matches, sort } = urlOptions();
  const query = pageQuery(filters, { q, sort, ...(matches ? { matches: 1 } : {}) });
  view = {
    kind: "text", filters, offset: 0,
    fetch: (offset) => api(`/api/search?${query}&offset=${offset}`),
    found: (n, total) => (matches ? `${total ?? n} ${(total ?? n) === 1 ? "match" : "matches"} for “${q}”` + (total > n ? `, ${n} shown` : "")
      : `${plural(n, "result")} for “${q}”`),
    none: matches ? `Nothing matches “${q}”.` : `No results for “${q}”.`,
  };
  load(false);
}

function startSimilar(id, filters) {
  const query = pageQuery(filters);
  const path = `/api/images/${encodeURIComponent(id)}`;
  const mine = view = {
    kind: "similar", filters, offset: 0,
    fetch: (offset) => api(`${path}/similar?${query}&offset=${offset}`),
    found: (n) => plural(n, "similar picture"),
    none: "No similar pictures.",
  };
  api(path).then((info) => {
    if (view === mine) showReference(`${path}/thumbnail`, info.name, info.path);
  }, () => { /* the search reports the unknown id */ });
  load(false);
}

function startUpload(file, filters) {
  const query = pageQuery(filters);
  view = {
    kind: "upload", file, filters, offset: 0,
    fetch: (offset) => {
      const form = new FormData();
      form.append("image", file);
      return api(`/api/search?${query}&offset=${offset}`, { method: "POST", body: form });
    },
    found: (n) => plural(n, "similar picture"),
    none: "No similar pictures.",
  };
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  showReference(previewUrl, file.name, "your picture (not added to the library)");
  load(false);
}

function runFromUrl() {
  const params = new URLSearchParams(location.search);
  const filters = urlFilters();
  $("q").value = params.get("q") || "";
  showFilters(filters);
  showOptions(urlOptions());
  clearResults("Searching…");
  const similar = params.get("similar"), q = (params.get("q") || "").trim();
  if (similar) startSimilar(similar, filters);
  else if (q) startText(q, filters);
  else {
    view = null;
    seq++;
    showError("");
    setStatus(INTRO);
  }
}

function navigate(params) {
  history.pushState(null, "", `?${params}`);
  runFromUrl();
}

function filtersOnlyUrl(filters) { return String(filters) ? `?${filters}` : location.pathname; }

function searchByFile(file) {
  if (!file) return;
  const filters = formFilters();
  history.pushState(null, "", filtersOnlyUrl(filters)); // back returns to the previous search
  $("q").value = "";
  clearResults("Searching…");
  startUpload(file, filters);
}

/** Re-run what is shown with ``filters`` (the form's, or none). */
function refilter(filters) {
  countFilters(filters);
  if (view && view.kind === "upload") {
    history.replaceState(null, "", filtersOnlyUrl(filters));
    showFilters(filters);
    clearResults("Searching…");
    startUpload(view.file, filters);
    return;
  }
  const params = new URLSearchParams(location.search);
  if (!params.get("q") && !params.get("similar")) { showFilters(filters); return; }
  for (const name of FILTERS) params.delete(name);
  for (const [key, value] of filters) params.set(key, value);
  navigate(params);
}

async function openDetail(id) {
  showError("");
  try {
    const info = await api(`/api/images/${id}`);
    detailId = id;
    $("detail-img").src = `/api/images/${id}/preview`;
    $("detail-img").alt = info.name;
    $("detail-name").textContent = info.name;
    $("detail-path").textContent = info.path;
    $("detail-dims").textContent = `${info.width} × ${info.height}`;
    $("detail-date").textContent = info.captured_at ? info.captured_at.replace("T", " ") : "unknown";
    const tags = $("detail-tags");
    tags.replaceChildren();
    for (const tag of info.tags) {
      const li = document.createElement("li");
      li.textContent = `${tag.label} ${(tag.probability * 100).toFixed(0)}%`;
      tags.append(li);
    }
    $("detail-file").href = `/api/images/${id}/file`;
    $("detail").showModal();
    $("similar").focus();
  } catch (err) {
    showError(err.message);
  }
}

async function loadTags() {
  let body;
  try { body = await api("/api/tags"); } catch (err) { return; /* no library yet: the page says so */ }
  const select = $("tag");
  knownTags = new Set(body.tags.map((t) => t.label));
  const present = new Map([...select.options].map((o) => [o.value, o]));
  for (const tag of body.tags) {
    const option = present.get(tag.label) || select.appendChild(document.createElement("option"));
    option.value = tag.label;
    option.textContent = tagOptionText(tag.label, tag.count);
  }
  for (const [value, option] of present) {
    if (!value || knownTags.has(value)) continue;
    if (value === select.value) option.textContent = tagOptionText(value);
    else option.remove(); // a tag no picture has any more (taken off in the detail view)
  }
}

function typing(element) {
  return element && (element.isContentEditable || ["INPUT", "SELECT", "TEXTAREA"].includes(element.tagName));
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const params = formFilters();
  const q = $("q").value.trim();
  if (!q) { showError("Type something to search for, or choose a picture."); return; }
  params.set("q", q);
  setOptions(params);
  navigate(params);
});

/** The form's result options into ``params`` (only what differs from the defaults). */
function setOptions(params, changed) {
  if (changed === "sort" && $("sort").value === "date") $("matches").checked = true;
  if (changed === "matches" && !$("matches").checked) $("sort").value = "score";
  if ($("matches").checked) params.set("matches", "1"); else params.delete("matches");
  if ($("sort").value === "date") params.set("sort", "date"); else params.delete("sort");
  return params;
}

for (const name of ["matches", "sort"]) {
  $(name).addEventListener("change", () => {
    const q = $("q").value.trim(); // what is typed runs, as the Search button would run it
    const params = q ? formFilters() : new URLSearchParams(location.search);
    if (q) params.set("q", q);
    setOptions(params, name);
    if (params.get("q") || params.get("similar")) navigate(params);
    else history.replaceState(null, "", `?${params}`);
  });
}
for (const name of FILTERS) $(name).addEventListener("change", () => refilter(formFilters()));
$("clear-filters").addEventListener("click", () => refilter(new URLSearchParams()));
$("clear-all").addEventListener("click", () => refilter(new URLSearchParams()));
$("filters-toggle").addEventListener("click", () => {
  const open = $("filters-toggle").getAttribute("aria-expanded") !== "true";
  $("filters-toggle").setAttribute("aria-expanded", String(open));
  document.body.classList.toggle("filters-open", open);
});
$("more").addEventListener("click", () => {
  if (!view) return;
  view.offset += PAGE;
  load(true);
});
$("similar").addEventListener("click", () => {
  $("detail").close();
  const params = formFilters();
  params.set("similar", detailId);
  navigate(params);
});
$("pick").addEventListener("click", () => $("upload").click());
$("upload").addEventListener("change", (event) => {
  searchByFile(event.target.files[0]);
  event.target.value = ""; // choosing the same file again searches again
});
document.addEventListener("dragover", (event) => { event.preventDefault(); $("drop-hint").hidden = false; });
document.addEventListener("dragleave", (event) => { if (!event.relatedTarget) $("drop-hint").hidden = true; });
document.addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop-hint").hidden = true;
  searchByFile(event.dataTransfer.files[0]);
});
document.addEventListener("keydown", (event) => {
  if (event.key === "/" && !typing(document.activeElement) && !$("detail").open) {
    event.preventDefault();
    $("q").focus();
  }
});
window.addEventListener("popstate", runFromUrl);
document.addEventListener("clipdex:tags-changed", loadTags); // a tag given or taken off (tagedit.js)

loadTags();
runFromUrl();
