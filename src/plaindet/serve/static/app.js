// The plaindet serve page: send an image to POST /v1/detect, draw the boxes it returns, list them.
// Plain JavaScript, no framework and nothing fetched from elsewhere: it works with no internet.
"use strict";

const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#800000", "#008080"];
const $ = (id) => document.getElementById(id);
const view = $("view");
let current = null;    // {blob, name, bitmap}: the image on screen
let lastAnswer = null; // the last /v1/detect answer, for "Download JSON"
let pending = 0;       // the answer to a newer request replaces an older one's
let debounce = null;

function setStatus(text, state) {
  $("status").textContent = text;
  document.body.dataset.state = state;
}

function headers() {
  const key = $("key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

async function errorText(response) {
  try { return (await response.json()).error || response.statusText; } catch (e) { return response.statusText; }
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) { setStatus(`models: ${await errorText(response)}`, "error"); return; }
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren();
  for (const m of (await response.json()).models) {
    const option = new Option(`${m.name} (${m.model || "?"}, ${m.backend}, ${(m.classes || []).length} classes)`, m.name);
    select.add(option);
  }
  if (chosen) select.value = chosen;
}

async function show(blob, name) {
  let bitmap;
  try { bitmap = await createImageBitmap(blob); } catch (e) { bitmap = null; } // the server says why
  current = { blob, name, bitmap };
  if (bitmap) { view.width = bitmap.width; view.height = bitmap.height; view.getContext("2d").drawImage(bitmap, 0, 0); }
  await detect();
}

async function detect() {
  if (!current) return;
  const id = ++pending;
  const form = new FormData();
  form.append("image", current.blob, current.name);
  const query = new URLSearchParams({ threshold: $("threshold").value });
  if ($("model").value) query.set("model", $("model").value);
  setStatus("detecting ...", "busy");
  const start = performance.now();
  let response;
  try {
    response = await fetch(`/v1/detect?${query}`, { method: "POST", body: form, headers: headers() });
  } catch (e) {
    if (id === pending) setStatus(`request failed: ${e}`, "error");
    return;
  }
  const roundTrip = performance.now() - start;
  if (id !== pending) return;
  if (!response.ok) { setStatus(`${response.status}: ${await errorText(response)}`, "error"); return; }
  lastAnswer = await response.json();
  const image = lastAnswer.images[0];
  render(image);
  $("download").disabled = false;
  setStatus(`${image.detections.length} detections by ${lastAnswer.model} (${lastAnswer.backend}): model ${image.model_ms.toFixed(0)} ms ` +
            `(batch of ${image.batch_size}), round trip ${roundTrip.toFixed(0)} ms`, "done");
}

function render(image) {
  const ctx = view.getContext("2d");
  if (current.bitmap) ctx.drawImage(current.bitmap, 0, 0);
  const line = Math.max(3, Math.round(Math.max(view.width, view.height) / 250));
  const drawn = [];
  ctx.lineWidth = line;
  for (const d of image.detections) {  // all boxes first, then their labels on top
    const [x1, y1, x2, y2] = d.box;
    ctx.strokeStyle = PALETTE[d.label % PALETTE.length];
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    drawn.push({ box: d.box, label: d.label, color: ctx.strokeStyle });
  }
  const size = Math.max(12, Math.round(line * 4));
  ctx.font = `${size}px system-ui, sans-serif`;
  ctx.textBaseline = "bottom";
  for (const d of image.detections) {
    const text = `${d.class_name} ${d.score.toFixed(2)}`;
    const width = ctx.measureText(text).width + 6;
    const x = Math.max(0, Math.min(d.box[0] - line / 2, view.width - width));  // the label stays on the image
    const y = Math.max(size + 4, d.box[1] - line / 2);
    ctx.fillStyle = PALETTE[d.label % PALETTE.length];
    ctx.fillRect(x, y - size - 4, width, size + 4);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x + 3, y - 1);
  }
  view.dataset.boxes = JSON.stringify(drawn);
  view.dataset.lineWidth = String(line);
  const body = $("detections").tBodies[0];
  body.replaceChildren();
  image.detections.forEach((d, i) => {
    const row = body.insertRow();
    const swatch = `<span class="swatch" style="background:${PALETTE[d.label % PALETTE.length]}"></span>`;
    const cells = [String(i + 1), d.class_name, d.score.toFixed(3), ...d.box.map((v) => v.toFixed(1))];
    cells.forEach((text, j) => { const cell = row.insertCell(); cell.textContent = text; if (j === 1) cell.insertAdjacentHTML("afterbegin", swatch); });
  });
}

$("file").addEventListener("change", (e) => { const f = e.target.files[0]; if (f) show(f, f.name); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const f = e.dataTransfer.files[0];
  if (f) show(f, f.name);
});
$("threshold").addEventListener("input", (e) => {
  $("threshold-value").textContent = Number(e.target.value).toFixed(2);
  clearTimeout(debounce);
  debounce = setTimeout(detect, 150);
});
$("model").addEventListener("change", detect);
$("key").addEventListener("change", () => { loadModels(); detect(); });
$("download").addEventListener("click", () => {
  const url = URL.createObjectURL(new Blob([JSON.stringify(lastAnswer, null, 2)], { type: "application/json" }));
  const a = Object.assign(document.createElement("a"), { href: url, download: `${(current && current.name) || "image"}.detections.json` });
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
});

// The camera, where the browser allows it (a secure context: localhost or https).
if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
  const video = $("video");
  $("camera").hidden = false;
  $("camera").addEventListener("click", async () => {
    try {
      video.srcObject = await navigator.mediaDevices.getUserMedia({ video: true });
      video.hidden = false;
      $("snap").hidden = false;
    } catch (e) { setStatus(`camera: ${e.message}`, "error"); }
  });
  $("snap").addEventListener("click", () => {
    const frame = document.createElement("canvas");
    frame.width = video.videoWidth; frame.height = video.videoHeight;
    frame.getContext("2d").drawImage(video, 0, 0);
    frame.toBlob((blob) => show(blob, "camera.jpg"), "image/jpeg", 0.92);
  });
}

loadModels();
