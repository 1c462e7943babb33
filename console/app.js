// The console: gallery (#/), detail (#/invocations/<id>), upload (#/upload).
import * as api from "./api.js";

const THUMBNAIL_PX = 256; // max_dimension of a thumbnail's render (about 2x its CSS size)
const $ = (id) => document.getElementById(id);

// ---- errors: the API's own message, and a token prompt on 401 ----

function showError(error) {
  if (error && error.name === "AbortError") return;
  const text = error instanceof api.ApiError ? error.describe() : String(error && error.message || error);
  $("error-text").textContent = text;
  $("error").hidden = false;
  if (error instanceof api.ApiError && error.status === 401) openTokenDialog();
}

function clearError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
}

$("error-close").addEventListener("click", clearError);

// ---- token ----

function openTokenDialog() {
  const dialog = $("token-dialog");
  if (dialog.open) return;
  $("token-input").value = api.token();
  dialog.showModal();
}

$("token-button").addEventListener("click", openTokenDialog);
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const action = event.submitter ? event.submitter.value : "save";
  if (action === "save") api.setToken($("token-input").value.trim());
  if (action === "clear") api.setToken("");
  $("token-dialog").close();
  if (action !== "cancel") {
    clearError();
    route();
  }
});

// ---- helpers ----

const STATES = { STATE_SUCCEEDED: "succeeded", STATE_FAILED: "failed", STATE_PENDING: "pending" };

function stateName(invocation) {
  return STATES[invocation.state] || "unknown";
}

function faces(invocation) {
  return invocation.output && invocation.output.detections ? invocation.output.detections.length : 0;
}

function when(timestamp) {
  return timestamp ? new Date(timestamp).toLocaleString() : "";
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function localToRfc3339(value) {
  return value ? new Date(value).toISOString() : "";
}

// ---- gallery ----

const thumbnails = new Map(); // id -> object URL of its small render, for this page's life
const gallery = { filter: "", pageSize: 50, token: "", loading: null, generation: 0 };

function readFilters() {
  const form = new FormData($("filters"));
  const filter = api.buildFilter({
    from: localToRfc3339(form.get("from")),
    to: localToRfc3339(form.get("to")),
    model: form.get("model").trim(),
    state: form.get("state"),
    key: form.get("key").trim(),
    value: form.get("value"),
  });
  const pageSize = Math.max(1, Math.min(1000, parseInt(form.get("page_size"), 10) || 50));
  return { filter, pageSize };
}

async function thumbnail(invocation, img, signal) {
  let url = thumbnails.get(invocation.id);
  if (!url) {
    const blob = await api.render(invocation.id, THUMBNAIL_PX, signal, "jpeg");
    url = URL.createObjectURL(blob);
    thumbnails.set(invocation.id, url);
  }
  img.src = url;
  await img.decode().catch(() => {});
}

function card(invocation, signal) {
  const count = faces(invocation);
  const state = stateName(invocation);
  const img = element("img", {
    alt: state === "succeeded"
      ? `Image ${invocation.id} with ${count} face${count === 1 ? "" : "s"} boxed`
      : `Image ${invocation.id}: ${state}, nothing drawn`,
    width: "200",
    height: "150",
  });
  const link = element(
    "a",
    { href: `#/invocations/${encodeURIComponent(invocation.id)}`, class: `card ${state}` },
    img,
    element("span", { class: "id", text: invocation.id }),
    element("span", { class: "meta" },
      element("span", { class: `state ${state}`, text: state }),
      element("span", { class: "faces", text: `${count} face${count === 1 ? "" : "s"}` })),
    element("span", { class: "meta" },
      element("span", { class: "model", text: invocation.model }),
      element("time", { datetime: invocation.create_time || "", text: when(invocation.create_time) })),
  );
  const item = element("li", { "data-id": invocation.id }, link);
  const loaded = state === "succeeded"
    ? thumbnail(invocation, img, signal).catch((error) => {
        img.alt = `No thumbnail of ${invocation.id}`;
        if (error.name !== "AbortError" && !(error instanceof api.ApiError && error.status === 404)) {
          showError(error);
        }
      })
    : Promise.resolve();
  return { item, loaded };
}

async function loadPage(first) {
  const generation = first ? ++gallery.generation : gallery.generation;
  if (first) {
    if (gallery.loading) gallery.loading.abort();
    $("gallery").replaceChildren();
    gallery.token = "";
    document.body.dataset.galleryPages = "0";
  }
  const controller = new AbortController();
  gallery.loading = controller;
  $("more").hidden = true;
  $("gallery-status").textContent = "Loading…";
  document.body.dataset.galleryLoading = "true";
  try {
    const page = await api.listInvocations({
      filter: gallery.filter,
      pageSize: gallery.pageSize,
      pageToken: gallery.token,
      signal: controller.signal,
    });
    if (generation !== gallery.generation) return;
    const invocations = page.invocations || [];
    const cards = invocations.map((invocation) => card(invocation, controller.signal));
    $("gallery").append(...cards.map((c) => c.item));
    gallery.token = page.next_page_token || "";
    $("more").hidden = !gallery.token;
    const shown = $("gallery").children.length;
    $("gallery-status").textContent =
      shown === 0 && !gallery.token ? "No invocations." : `${shown} shown${gallery.token ? "; more below" : ""}.`;
    await Promise.all(cards.map((c) => c.loaded));
    if (generation !== gallery.generation) return;
    // For the tests and the bench (console_gallery_ms): every thumbnail of the page is in.
    performance.mark("gallery-page-loaded");
    document.body.dataset.galleryPages = String(Number(document.body.dataset.galleryPages || 0) + 1);
  } catch (error) {
    $("gallery-status").textContent = "";
    showError(error);
  } finally {
    if (generation === gallery.generation) document.body.dataset.galleryLoading = "false";
  }
}

$("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  clearError();
  const { filter, pageSize } = readFilters();
  gallery.filter = filter;
  gallery.pageSize = pageSize;
  $("filter-text").textContent = filter || "(none)";
  loadPage(true);
});

$("filters").addEventListener("reset", () => {
  setTimeout(() => $("filters").requestSubmit(), 0);
});

$("more").addEventListener("click", () => loadPage(false));

// ---- detail ----

let current = null;
let pictureUrl = null; // object URL of the detail's image

function fact(list, name, value) {
  list.append(element("dt", { text: name }), element("dd", { text: value }));
}

function drawBoxes(invocation) {
  const svg = $("boxes");
  svg.replaceChildren();
  const output = invocation.output;
  if (!output) return;
  const ns = "http://www.w3.org/2000/svg";
  svg.setAttribute("viewBox", `0 0 ${output.image_width} ${output.image_height}`);
  const stroke = Math.max(2, Math.round(Math.max(output.image_width, output.image_height) / 300));
  (output.detections || []).forEach((detection, index) => {
    const box = detection.box;
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", box.x_min);
    rect.setAttribute("y", box.y_min);
    rect.setAttribute("width", Math.max(0, box.x_max - box.x_min));
    rect.setAttribute("height", Math.max(0, box.y_max - box.y_min));
    rect.setAttribute("stroke-width", stroke);
    rect.setAttribute("tabindex", "0");
    rect.setAttribute("role", "img");
    const label = `${detection.label || "detection"} ${index + 1}: score ${detection.score.toFixed(3)}`;
    rect.setAttribute("aria-label", label);
    rect.classList.add("box");
    const show = () => showTip(rect, label);
    rect.addEventListener("mouseenter", show);
    rect.addEventListener("focus", show);
    rect.addEventListener("mouseleave", hideTip);
    rect.addEventListener("blur", hideTip);
    svg.append(rect);
  });
}

function showTip(rect, label) {
  const tip = $("tip");
  const stage = $("stage").getBoundingClientRect();
  const box = rect.getBoundingClientRect();
  tip.textContent = label;
  tip.style.left = `${box.left - stage.left}px`;
  tip.style.top = `${Math.max(0, box.top - stage.top - 28)}px`;
  tip.hidden = false;
}

function hideTip() {
  $("tip").hidden = true;
}

async function showDetail(id) {
  current = null;
  $("detail-title").textContent = `Invocation ${id}`;
  for (const list of ["facts", "metadata"]) $(list).replaceChildren();
  $("json").textContent = "";
  $("boxes").replaceChildren();
  $("caption").textContent = "Loading…";
  const picture = $("picture");
  picture.removeAttribute("src");
  picture.alt = "";
  document.body.dataset.detailReady = "false";
  let invocation;
  try {
    invocation = await api.getInvocation(id, { full: true });
  } catch (error) {
    $("caption").textContent = "";
    showError(error);
    return;
  }
  current = invocation;
  const count = faces(invocation);
  const shown = { ...invocation, input: { ...invocation.input } };
  const content = invocation.input ? invocation.input.content || "" : "";
  shown.input.content = `<${Math.floor((content.length * 3) / 4)} bytes, base64, not shown>`;
  $("json").textContent = JSON.stringify(shown, null, 2);
  const facts = $("facts");
  fact(facts, "State", stateName(invocation));
  fact(facts, "Faces", String(count));
  fact(facts, "Model", `${invocation.model} (${(invocation.model_version || "").slice(0, 12)})`);
  fact(facts, "Created", when(invocation.create_time));
  if (invocation.complete_time) fact(facts, "Completed", when(invocation.complete_time));
  if (invocation.output) fact(facts, "Size", `${invocation.output.image_width} × ${invocation.output.image_height} px`);
  if (invocation.error) fact(facts, "Error", invocation.error);
  fact(facts, "SHA-256", invocation.content_sha256);
  const metadata = Object.entries((invocation.input && invocation.input.metadata) || {});
  if (metadata.length === 0) $("metadata").append(element("dd", { text: "none" }));
  for (const [key, value] of metadata.sort()) fact($("metadata"), key, value);
  $("render-link").href = api.renderUrl(id);
  $("render-link").hidden = stateName(invocation) !== "succeeded";
  // The stored image as it is (the browser applies its EXIF orientation, as the model's decoder
  // did), with the boxes drawn over it at the API's coordinates.
  picture.alt = `Image ${id}` + (invocation.output ? `, ${count} face${count === 1 ? "" : "s"} boxed` : "");
  try {
    const bytes = Uint8Array.from(atob(content), (c) => c.charCodeAt(0));
    if (pictureUrl) URL.revokeObjectURL(pictureUrl);
    pictureUrl = URL.createObjectURL(new Blob([bytes]));
    picture.src = pictureUrl;
    await picture.decode();
  } catch {
    // A format the browser cannot show (e.g. TIFF): the render (already oriented and boxed).
    if (stateName(invocation) === "succeeded") {
      const blob = await api.render(id).catch((error) => showError(error));
      if (blob) {
        picture.src = URL.createObjectURL(blob);
        await picture.decode().catch(() => {});
      }
    }
  }
  if (current !== invocation) return;
  drawBoxes(invocation);
  $("caption").textContent = invocation.output
    ? `${count} face${count === 1 ? "" : "s"}; focus or point at a box for its score.`
    : `No result (${stateName(invocation)}).`;
  document.body.dataset.detailReady = "true";
}

$("render-link").addEventListener("click", async (event) => {
  if (!api.token() || !current) return; // without a token, the plain link works as it is
  event.preventDefault();
  try {
    const blob = await api.render(current.id);
    window.open(URL.createObjectURL(blob), "_blank", "noopener");
  } catch (error) {
    showError(error);
  }
});

$("delete").addEventListener("click", async () => {
  if (!current) return;
  const id = current.id;
  if (!window.confirm(`Delete invocation ${id}? Its image, metadata and result are erased.`)) return;
  try {
    await api.deleteInvocation(id);
  } catch (error) {
    showError(error);
    return;
  }
  const url = thumbnails.get(id);
  if (url) URL.revokeObjectURL(url);
  thumbnails.delete(id);
  const item = [...$("gallery").children].find((li) => li.dataset.id === id);
  if (item) item.remove();
  location.hash = "#/";
});

// ---- upload ----

function parseMetadata(text) {
  const metadata = {};
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    const at = line.indexOf("=");
    if (at < 1) throw new Error(`metadata line ${JSON.stringify(line)} is not key=value`);
    metadata[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return metadata;
}

function base64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function upload(files) {
  clearError();
  const form = new FormData($("upload-form"));
  let metadata;
  try {
    metadata = parseMetadata(form.get("metadata"));
  } catch (error) {
    showError(error);
    return;
  }
  const id = form.get("id").trim();
  const model = form.get("model").trim();
  const keepName = form.get("filename") === "on";
  const list = $("uploads");
  // One after the other: the gallery then lists them newest first in the reverse order.
  for (const [index, file] of files.entries()) {
    const progress = element("progress", { max: "1", value: "0", "aria-label": `Upload of ${file.name}` });
    const status = element("span", { class: "status", text: "reading…" });
    const item = element("li", {}, element("span", { class: "name", text: file.name }), progress, status);
    list.prepend(item);
    try {
      const content = await base64(file);
      status.textContent = "sending…";
      const request = {
        input: {
          id: id ? (files.length > 1 ? `${id}-${index + 1}` : id) : "",
          content,
          metadata: keepName ? { ...metadata, filename: file.name } : metadata,
        },
      };
      if (model) request.model = model;
      const invocation = await api.invoke(request, (sent, total) => {
        progress.value = sent / total;
        if (sent === total) status.textContent = "running the model…";
      });
      progress.value = 1;
      const count = faces(invocation);
      status.replaceChildren(
        `${stateName(invocation)}, ${count} face${count === 1 ? "" : "s"}: `,
        element("a", { href: `#/invocations/${encodeURIComponent(invocation.id)}`, text: invocation.id }),
      );
      item.classList.add("done");
    } catch (error) {
      item.classList.add("failed");
      status.textContent = error instanceof api.ApiError ? error.describe() : String(error.message || error);
      showError(error);
    }
  }
  document.body.dataset.uploads = String(Number(document.body.dataset.uploads || 0) + files.length);
}

$("upload-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const files = [...$("files").files];
  if (files.length === 0) {
    showError(new Error("Choose or drop one or more image files first."));
    return;
  }
  upload(files).then(() => {
    $("files").value = "";
  });
});

const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const files = [...event.dataTransfer.files];
  if (files.length) upload(files);
});

// ---- models (the filter's and upload's suggestions) ----

async function loadModels() {
  try {
    const models = await api.listModels();
    $("models").replaceChildren(
      ...models.flatMap((m) => [m.name, ...(m.aliases || [])]).map((name) => element("option", { value: name })),
    );
  } catch {
    // the gallery's own call shows the error
  }
}

// ---- routing ----

function route() {
  const hash = location.hash || "#/";
  const detail = hash.match(/^#\/invocations\/(.+)$/);
  $("gallery-view").hidden = !!detail || hash === "#/upload";
  $("detail-view").hidden = !detail;
  $("upload-view").hidden = hash !== "#/upload";
  for (const [link, on] of [["nav-gallery", !detail && hash !== "#/upload"], ["nav-upload", hash === "#/upload"]]) {
    if (on) $(link).setAttribute("aria-current", "page");
    else $(link).removeAttribute("aria-current");
  }
  if (detail) {
    showDetail(decodeURIComponent(detail[1]));
  } else if (hash !== "#/upload") {
    const { filter, pageSize } = readFilters();
    gallery.filter = filter;
    gallery.pageSize = pageSize;
    $("filter-text").textContent = filter || "(none)";
    loadPage(true);
  }
}

window.addEventListener("hashchange", () => {
  clearError();
  route();
  $("main").focus({ preventScroll: true });
});
loadModels();
route();
