// The page of serve.py: photos in, cut-outs out, through POST /api/matte of the same server.
// No libraries and nothing fetched from elsewhere. Each photo is a card; its results are kept
// per (view, refinement, colour), so switching back costs nothing. At most MAX_ACTIVE requests
// run at once; a 503 (the server's queue is full) is retried after its Retry-After.
"use strict";

const MAX_ACTIVE = 2;
const state = { view: "cutout", refine: "guided", colour: "#2e8b57", key: "" };
const cards = [];
const queue = [];
let active = 0;

const $ = (selector, root = document) => root.querySelector(selector);

function viewKey() {
  return state.view === "composite" ? `${state.view}|${state.refine}|${state.colour}` : `${state.view}|${state.refine}`;
}

async function describeModel() {
  try {
    const info = await (await fetch("/api/info")).json();
    $("#model").textContent = `${info.arch} at ${info.size} px on ${info.device} (${info.runtime}, ${info.precision}); ` +
      `photos up to ${(info.limits.max_pixels / 1e6).toFixed(0)} MP and ${(info.limits.max_upload_bytes / 1048576).toFixed(0)} MB`;
    state.refine = info.refine;
    $("#refine").value = info.refine;
    $("#key-box").hidden = !info.api_key_required;
  } catch (err) {
    $("#model").textContent = "the server did not answer /api/info";
  }
}

function addPhotos(files) {
  const photos = [...files].filter((file) => !file.type || file.type.startsWith("image/"));
  if (photos.length < files.length) say(`${files.length - photos.length} file(s) skipped: not images`);
  for (const file of photos) {
    const node = $("#card").content.firstElementChild.cloneNode(true);
    const card = { file, node, results: new Map(), original: URL.createObjectURL(file) };
    $(".name", node).textContent = file.name;
    const before = $(".before", node);
    before.src = card.original;
    before.addEventListener("load", () => node.style.setProperty("--aspect", `${before.naturalWidth} / ${before.naturalHeight}`));
    $(".split", node).addEventListener("input", (event) => node.style.setProperty("--split", `${event.target.value}%`));
    $("#results").prepend(node);
    cards.push(card);
    show(card);
  }
}

function show(card) {
  const key = viewKey();
  const done = card.results.get(key);
  if (done) return display(card, done);
  setState(card, "working", "working…");
  enqueue(card, key);
}

function display(card, result) {
  const { node } = card;
  $(".after", node).src = result.url;
  const link = $(".download", node);
  link.href = result.url;
  link.download = `${card.file.name.replace(/\.[^.]*$/, "")}_${state.view}.png`;
  link.hidden = false;
  setState(card, "done", result.note);
}

function setState(card, name, text) {
  card.node.dataset.state = name;
  $(".status", card.node).textContent = text;
}

function enqueue(card, key) {
  queue.push({ card, key, view: state.view, refine: state.refine, colour: state.colour });
  pump();
}

function pump() {
  while (active < MAX_ACTIVE && queue.length) {
    const job = queue.shift();
    active += 1;
    request(job).finally(() => { active -= 1; pump(); });
  }
}

async function request(job) {
  const form = new FormData();
  form.append("file", job.card.file);
  form.append("outputs", job.view);
  form.append("refine", job.refine);
  if (job.view === "composite") form.append("background", job.colour);
  const headers = state.key ? { "X-API-Key": state.key } : {};
  const started = performance.now();
  let response;
  try {
    response = await fetch("/api/matte", { method: "POST", body: form, headers });
  } catch (err) {
    return fail(job.card, "the server did not answer");
  }
  if (response.status === 503) {
    const wait = Number(response.headers.get("Retry-After") || 1) * 1000;
    setTimeout(() => { queue.unshift(job); pump(); }, wait);
    return;
  }
  if (!response.ok) {
    let reason = `HTTP ${response.status}`;
    try { reason = (await response.json()).error || reason; } catch (err) { /* not JSON */ }
    return fail(job.card, reason);
  }
  const url = URL.createObjectURL(await response.blob());
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  const result = { url, note: `${job.view}, ${job.refine}: ${response.headers.get("X-Image-Size") || ""} in ${seconds} s` };
  job.card.results.set(job.key, result);
  if (job.key === viewKey()) display(job.card, result);
}

function fail(card, reason) {
  setState(card, "error", reason);
}

function say(text) {
  $("#message").textContent = text;
}

function refreshAll() {
  say("");
  for (const card of cards) show(card);
}

function wire() {
  $("#files").addEventListener("change", (event) => { addPhotos(event.target.files); event.target.value = ""; });
  const drop = $("#drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => { event.preventDefault(); addPhotos(event.dataTransfer.files); });
  document.addEventListener("dragover", (event) => event.preventDefault());  // a miss opens no photo in the tab
  document.addEventListener("drop", (event) => event.preventDefault());
  for (const radio of document.querySelectorAll("input[name=view]")) {
    radio.addEventListener("change", () => { state.view = radio.value; refreshAll(); });
  }
  $("#refine").addEventListener("change", (event) => { state.refine = event.target.value; refreshAll(); });
  $("#colour").addEventListener("change", (event) => {
    state.colour = event.target.value;
    if (state.view === "composite") refreshAll();
  });
  $("#key").addEventListener("change", (event) => { state.key = event.target.value.trim(); });
}

wire();
describeModel();
