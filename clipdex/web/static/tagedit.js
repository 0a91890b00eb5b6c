// Add and remove a picture's tags in the detail view (clipdex.web.tagedit). An ES module beside
// app.js, which it does not change: when the detail dialog opens (or shows another picture) this
// script lists the picture's tags itself, each with a remove button and where it came from, and
// adds a small form to give a tag. The picture is the one whose original #detail-file links to.
// Every string from the server goes into the page through textContent, never as HTML.

const $ = (id) => document.getElementById(id);
// X-Clipdex marks a write as the page's own: the server refuses writes without it (no HTML form
// elsewhere can send it, nor JSON).
const WRITE = { "Content-Type": "application/json", "X-Clipdex": "1" };
let shown = null; // id of the picture whose tags are listed

function pictureId() {
  const m = /^\/api\/images\/(\d+)\/file$/.exec($("detail-file").getAttribute("href") || "");
  return m ? m[1] : null;
}

function showProblem(message) {
  const box = $("tag-edit-error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function call(method, id, label) {
  const options = method === "GET" ? {} : { method, headers: WRITE, body: JSON.stringify({ label }) };
  const response = await fetch(`/api/images/${id}/tags`, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error(body && body.message ? body.message : `${response.status} ${response.statusText}`);
  return body;
}

function render(id, tags) {
  const list = $("detail-tags");
  list.replaceChildren();
  const seen = new Set();
  for (const tag of tags) { // the person's first, then the most probable: one entry per label
    if (seen.has(tag.label)) continue;
    seen.add(tag.label);
    const li = document.createElement("li");
    li.dataset.label = tag.label;
    const mine = tag.source === "person";
    li.append(mine ? tag.label : `${tag.label} ${(tag.probability * 100).toFixed(0)}%`);
    li.title = mine ? "tagged by a person" : `from the tagging pass "${tag.pass}"`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "link tag-remove";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Remove tag ${tag.label}`);
    remove.title = "Remove this tag (tagging passes will not give it back)";
    remove.addEventListener("click", () => edit("DELETE", id, tag.label));
    li.append(" ", remove);
    list.append(li);
  }
}

async function edit(method, id, label) {
  showProblem("");
  try {
    const body = await call(method, id, label);
    if (shown === id) render(id, body.tags);
    document.dispatchEvent(new CustomEvent("clipdex:tags-changed")); // app.js reloads the tag filter
    return true;
  } catch (err) {
    showProblem(err.message);
    return false;
  }
}

function ensureForm() {
  if ($("tag-add")) return;
  const form = document.createElement("form");
  form.id = "tag-add";
  const input = document.createElement("input");
  input.id = "tag-add-label";
  input.maxLength = 100;
  input.autocomplete = "off";
  input.placeholder = "Add a tag";
  input.setAttribute("aria-label", "New tag for this picture");
  const button = document.createElement("button");
  button.type = "submit";
  button.textContent = "Add tag";
  form.append(input, " ", button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const label = input.value.trim();
    if (label && shown && await edit("POST", shown, label)) input.value = "";
  });
  const problem = document.createElement("p");
  problem.id = "tag-edit-error";
  problem.setAttribute("role", "alert");
  problem.hidden = true;
  $("detail-tags").after(form, problem);
}

async function refresh() {
  const id = pictureId();
  if (!$("detail").open || !id) return;
  ensureForm();
  showProblem("");
  shown = id;
  try {
    const body = await call("GET", id);
    if (shown === id) render(id, body.tags);
  } catch (err) {
    showProblem(err.message);
  }
}

const watch = new MutationObserver(refresh);
watch.observe($("detail"), { attributes: true, attributeFilter: ["open"] });
watch.observe($("detail-file"), { attributes: true, attributeFilter: ["href"] });
