// clipdex page: the URL holds the query (bookmarkable, back button works); every
// string from the server goes into the page through textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 30;
const FILTERS = ["tag", "folder", "from", "to"];
let current = null; // {url, offset} of the search whose results are shown
let detailId = null;

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

function filterParams() {
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    const value = $(name).value.trim();
    if (value) params.set(name, value);
  }
  return params;
}

function card(hit) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "card";
  button.dataset.id = hit.id;
  const name = hit.path.split("/").pop();
  button.title = hit.path;
  const img = document.createElement("img");
  img.src = `/api/images/${hit.id}/thumbnail`;
  img.alt = name;
  img.loading = "lazy";
  const caption = document.createElement("span");
  caption.className = "caption";
  const label = document.createElement("span");
  label.className = "name";
  label.textContent = name;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(3);
  caption.append(label, score);
  button.append(img, caption);
  button.addEventListener("click", () => openDetail(hit.id));
  li.append(button);
  return li;
}

function render(body, append, describe) {
  const grid = $("grid");
  if (!append) grid.replaceChildren();
  for (const hit of body.results) grid.append(card(hit));
  $("more").hidden = !body.has_more;
  const shown = grid.children.length;
  setStatus(shown ? `${shown} results ${describe}` : `No results ${describe}.`);
}

async function load(url, append, describe, options) {
  showError("");
  try {
    const body = await api(url, options);
    render(body, append, describe);
  } catch (err) {
    showError(err.message);
  }
}

function runFromUrl() {
  const params = new URLSearchParams(location.search);
  $("q").value = params.get("q") || "";
  for (const name of FILTERS) $(name).value = params.get(name) || "";
  const query = filterParams();
  query.set("k", PAGE);
  const similar = params.get("similar");
  if (similar) {
    current = { url: `/api/images/${encodeURIComponent(similar)}/similar?${query}`, offset: 0,
                describe: `like picture ${similar}` };
  } else if (params.get("q")) {
    query.set("q", params.get("q"));
    current = { url: `/api/search?${query}`, offset: 0, describe: `for “${params.get("q")}”` };
  } else {
    current = null;
    $("grid").replaceChildren();
    $("more").hidden = true;
    return;
  }
  load(current.url, false, current.describe);
}

function navigate(params) {
  history.pushState(null, "", `?${params}`);
  runFromUrl();
}

function searchByFile(file) {
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  const query = filterParams();
  query.set("k", PAGE);
  current = null;
  $("more").hidden = true;
  load(`/api/search?${query}`, false, `like ${file.name}`, { method: "POST", body: form });
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
  try {
    const body = await api("/api/tags");
    const select = $("tag");
    for (const tag of body.tags) {
      const option = document.createElement("option");
      option.value = tag.label;
      option.textContent = `${tag.label} (${tag.count})`;
      select.append(option);
    }
    const wanted = new URLSearchParams(location.search).get("tag");
    if (wanted) select.value = wanted;
  } catch (err) { /* no library yet: the page says so */ }
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const params = filterParams();
  const q = $("q").value.trim();
  if (!q) { showError("Type something to search for, or choose a picture."); return; }
  params.set("q", q);
  navigate(params);
});
for (const name of FILTERS) {
  $(name).addEventListener("change", () => {
    const params = new URLSearchParams(location.search);
    if (!params.get("q") && !params.get("similar")) return;
    for (const f of FILTERS) params.delete(f);
    for (const [key, value] of filterParams()) params.set(key, value);
    navigate(params);
  });
}
$("more").addEventListener("click", () => {
  if (!current) return;
  current.offset += PAGE;
  load(`${current.url}&offset=${current.offset}`, true, current.describe);
});
$("similar").addEventListener("click", () => {
  $("detail").close();
  const params = filterParams();
  params.set("similar", detailId);
  navigate(params);
});
$("pick").addEventListener("click", () => $("upload").click());
$("upload").addEventListener("change", (event) => searchByFile(event.target.files[0]));
document.addEventListener("dragover", (event) => { event.preventDefault(); $("drop-hint").hidden = false; });
document.addEventListener("dragleave", (event) => { if (!event.relatedTarget) $("drop-hint").hidden = true; });
document.addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop-hint").hidden = true;
  searchByFile(event.dataTransfer.files[0]);
});
document.addEventListener("keydown", (event) => {
  if (event.key === "/" && document.activeElement !== $("q") && !$("detail").open) {
    event.preventDefault();
    $("q").focus();
  }
});
window.addEventListener("popstate", runFromUrl);

loadTags();
runFromUrl();
