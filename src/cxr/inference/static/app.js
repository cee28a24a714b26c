// The cxr page: upload a radiograph, show the probabilities as bars with threshold ticks, toggle Grad-CAM maps.
// Plain browser JavaScript against the REST API of cxr.inference.serve; no build step, no dependencies.
"use strict";

const state = { file: null, result: null, heatmaps: {}, shown: null, model: null };
const $ = (id) => document.getElementById(id);

function setStatus(text) { $("status").textContent = text; }

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function percent(p) { return (100 * p).toFixed(1) + "%"; }

// API keys: when the API answers 401 the page asks for a key once, keeps it for this tab (sessionStorage: gone when
// the tab closes) and sends it as "Authorization: Bearer KEY"; a refused key is forgotten and asked for again.
const KEY_STORAGE = "cxr-api-key";
let keyPrompt = null; // one dialog for all the requests that met a 401

function storedKey() {
  try { return sessionStorage.getItem(KEY_STORAGE) || ""; } catch { return ""; }
}

function askForKey(refused) {
  if (keyPrompt) return keyPrompt;
  keyPrompt = new Promise((resolve, reject) => {
    const dialog = $("key-dialog");
    const input = $("key-input");
    $("key-message").textContent = refused
      ? "That key was not accepted. Enter a valid API key for this server."
      : "This server needs an API key. Ask whoever runs it.";
    input.value = "";
    const finish = (key) => {
      $("key-form").onsubmit = $("key-cancel").onclick = dialog.oncancel = null;
      if (dialog.open) dialog.close();
      keyPrompt = null;
      if (key) resolve(key); else reject(new Error("an API key is required"));
    };
    $("key-form").onsubmit = (event) => {
      event.preventDefault();
      if (input.value.trim()) finish(input.value.trim());
    };
    $("key-cancel").onclick = () => finish("");
    dialog.oncancel = () => finish(""); // Escape
    dialog.showModal();
    input.focus();
  });
  return keyPrompt;
}

async function apiFetch(url, options = {}) {
  let refused = false;
  for (;;) {
    const key = storedKey();
    const headers = new Headers(options.headers || {});
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(url, { ...options, headers });
    if (response.status !== 401) return response;
    if (key) {
      sessionStorage.removeItem(KEY_STORAGE);
      refused = true;
    }
    sessionStorage.setItem(KEY_STORAGE, await askForKey(refused));
  }
}

async function apiPredict(file, query) {
  const form = new FormData();
  form.append("file", file, file.name);
  const response = await apiFetch("/api/predict?" + new URLSearchParams(query), { method: "POST", body: form });
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(`${response.status}: ${body.detail || response.statusText}`);
  return body;
}

async function analyse(file) {
  state.file = file;
  state.result = null;
  state.heatmaps = {};
  showHeatmap(null);
  showError("");
  $("findings").replaceChildren();
  $("summary").textContent = "";
  $("image-name").textContent = file.name;
  setStatus(`Analysing ${file.name} …`);
  try {
    // Heatmaps of the positive findings come with the first answer; others are fetched when toggled.
    const result = await apiPredict(file, { preview: 1, cam: "positive" });
    if (state.file !== file) return; // another file was dropped meanwhile
    state.result = result;
    Object.assign(state.heatmaps, result.heatmaps || {});
    $("preview-image").src = result.preview;
    $("figure").hidden = false;
    $("drop-hint").hidden = true;
    renderFindings(result);
    const positives = result.positive.length;
    setStatus("");
    $("summary").textContent = positives
      ? `${positives} finding(s) at or above threshold: ${result.positive.map((f) => f.replaceAll("_", " ")).join(", ")}.`
      : "No finding at or above its threshold.";
  } catch (error) {
    setStatus("");
    showError(`Could not analyse ${file.name}: ${error.message}`);
  }
}

function renderFindings(result) {
  const list = $("findings");
  const labels = Object.keys(result.probabilities)
    .sort((a, b) => result.probabilities[b] - result.probabilities[a]);
  for (const label of labels) {
    const p = result.probabilities[label];
    const threshold = result.thresholds[label];
    const positive = result.positive.includes(label);
    const item = document.createElement("li");
    item.className = "finding" + (positive ? " is-positive" : "");
    item.dataset.finding = label;
    item.dataset.probability = p;
    item.innerHTML = `
      <span class="name"></span>
      <span class="bar" role="meter" aria-valuemin="0" aria-valuemax="1">
        <span class="fill"></span><span class="threshold-mark"></span>
      </span>
      <span class="value"></span>
      <button type="button" class="cam-toggle" aria-pressed="false">heatmap</button>`;
    item.querySelector(".name").textContent = label.replaceAll("_", " ");
    const bar = item.querySelector(".bar");
    bar.setAttribute("aria-valuenow", p.toFixed(4));
    bar.setAttribute("aria-label", `${label}: ${percent(p)}, threshold ${percent(threshold)}`);
    item.querySelector(".fill").style.width = percent(p);
    const mark = item.querySelector(".threshold-mark");
    mark.style.left = percent(threshold);
    mark.title = `threshold ${percent(threshold)}`;
    item.querySelector(".value").innerHTML =
      `${percent(p)}` + (positive ? ' <span class="badge positive">positive</span>' : "");
    item.querySelector(".cam-toggle").addEventListener("click", () => toggleHeatmap(label));
    list.append(item);
  }
}

async function toggleHeatmap(label) {
  if (state.shown === label) { showHeatmap(null); return; }
  if (!state.heatmaps[label]) {
    setStatus(`Computing the ${label} heatmap …`);
    try {
      const result = await apiPredict(state.file, { cam: label });
      if (!result.heatmaps || !result.heatmaps[label]) throw new Error(result.heatmaps_error || "not available");
      state.heatmaps[label] = result.heatmaps[label];
      setStatus("");
    } catch (error) {
      setStatus("");
      showError(`No heatmap for ${label}: ${error.message}`);
      return;
    }
  }
  showHeatmap(label);
}

function showHeatmap(label) {
  state.shown = label;
  const overlay = $("heatmap-overlay");
  overlay.hidden = !label;
  if (label) overlay.src = state.heatmaps[label];
  for (const button of document.querySelectorAll(".cam-toggle")) {
    const on = button.closest("li").dataset.finding === label;
    button.setAttribute("aria-pressed", String(on));
  }
  $("heatmap-caption").hidden = !label;
  $("heatmap-text").textContent = label ? `Grad-CAM: where the model looked for ${label.replaceAll("_", " ")}.` : "";
}

function renderCard(model) {
  const card = model.card || {};
  const rows = [
    ["Model", `${card.architecture || model.architecture.name || "?"} (${model.backend}), ${card.input_size || "?"} px`],
    ["Trained on", card.trained_on || "not recorded"],
    ["Experiment", card.experiment || "not recorded"],
    ["Test AUROC", typeof card.test_auroc === "number" ? `${card.test_auroc.toFixed(3)} (macro)` : "not measured"],
    ["Findings", `${model.labels.length} (NIH ChestX-ray14 names)`],
    ["Version", `cxr ${model.package_version}`],
  ];
  const list = $("model-card");
  list.replaceChildren();
  for (const [key, value] of rows) {
    const term = document.createElement("dt");
    term.textContent = key;
    const detail = document.createElement("dd");
    detail.textContent = value;
    list.append(term, detail);
  }
  if (card.disclaimer) $("disclaimer").textContent = card.disclaimer;
}

function setUp() {
  const zone = $("drop-zone");
  $("file-input").addEventListener("change", (event) => {
    if (event.target.files.length) analyse(event.target.files[0]);
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) analyse(event.dataTransfer.files[0]);
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("file-input").click(); }
  });
  apiFetch("/api/model")
    .then((r) => { if (!r.ok) throw new Error(r.statusText); return r.json(); })
    .then((model) => { state.model = model; renderCard(model); })
    .catch((error) => showError(`The model description could not be loaded: ${error.message}`));
}

document.addEventListener("DOMContentLoaded", setUp);
