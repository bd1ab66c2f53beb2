// The paint-and-edit page: paint a mask over a photograph, POST /api/edit, poll GET /api/jobs/ID.
// Plain JavaScript, no libraries. The mask canvas has the photograph's own pixel size; what is painted
// (alpha at least one half) is sent as a black-and-white PNG, white = edit, the server's convention.
// The method select shows the options of the chosen method only (a label's data-methods), and only
// those are sent: the server refuses an option that the method does not take, as the CLI does.
// "Mask from prompt" POSTs the photograph, the prompt and the reference text to /api/mask-from and fills
// the brush layer with the mask it answers (an undoable stroke), for the user to refine before running.
"use strict";

const $ = (id) => document.getElementById(id);
const photo = $("photo"), maskCanvas = $("mask"), ctx = maskCanvas.getContext("2d", { willReadFrequently: true });
const form = $("options");
const UNDO_DEPTH = 30, POLL_MS = 250;
let photoBlob = null, photoName = "photo.png", undoStack = [], drawing = null, polling = null;

// ----------------------------------------------------------------------------- the photograph
function loadPhoto(blob, name) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(blob);
    photo.onload = () => {
      maskCanvas.width = photo.naturalWidth;   // the mask is painted at the photograph's own size
      maskCanvas.height = photo.naturalHeight;
      photoBlob = blob;
      photoName = name;
      undoStack = [];
      document.body.dataset.photo = `${photo.naturalWidth}x${photo.naturalHeight}`;
      resolve();
    };
    photo.onerror = () => reject(new Error(`${name} is not an image this browser can show`));
    photo.src = url;
  });
}

async function fetchBlob(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.blob();
}

async function loadExample() {
  await loadPhoto(await fetchBlob("/example.jpg"), "example.jpg");
  await fillBrushLayer(await fetchBlob("/example_mask.png"));
}

async function fillBrushLayer(blob) {  // a black-and-white mask image (white = edit) → the painted layer
  const mask = new Image();
  mask.src = URL.createObjectURL(blob);
  await mask.decode();
  const scratch = document.createElement("canvas");
  scratch.width = maskCanvas.width;
  scratch.height = maskCanvas.height;
  const scratchContext = scratch.getContext("2d");
  scratchContext.drawImage(mask, 0, 0, scratch.width, scratch.height);
  const grey = scratchContext.getImageData(0, 0, scratch.width, scratch.height);
  const painted = ctx.createImageData(scratch.width, scratch.height);
  for (let i = 0; i < grey.data.length; i += 4) {
    if (grey.data[i] >= 128) { painted.data[i + 1] = 110; painted.data[i + 2] = 255; painted.data[i + 3] = 255; }  // white = edit → painted
  }
  ctx.putImageData(painted, 0, 0);
}

// ----------------------------------------------------------------------------- the brush
function canvasPoint(event) {
  const box = maskCanvas.getBoundingClientRect();
  return { x: (event.clientX - box.left) * maskCanvas.width / box.width,
           y: (event.clientY - box.top) * maskCanvas.height / box.height };
}

function brushWidth() {  // the slider is in screen pixels; the canvas has the photograph's
  const box = maskCanvas.getBoundingClientRect();
  return Number($("brush-size").value) * maskCanvas.width / Math.max(box.width, 1);
}

function strokeTo(point) {
  ctx.globalCompositeOperation = $("eraser").checked ? "destination-out" : "source-over";
  ctx.strokeStyle = "rgb(0, 110, 255)";
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.lineWidth = brushWidth();
  ctx.beginPath();
  ctx.moveTo(drawing.x, drawing.y);
  ctx.lineTo(point.x + 0.01, point.y);  // a click paints a dot
  ctx.stroke();
  drawing = point;
}

maskCanvas.addEventListener("pointerdown", (event) => {
  if (!photoBlob || event.button !== 0) return;
  undoStack.push(ctx.getImageData(0, 0, maskCanvas.width, maskCanvas.height));
  if (undoStack.length > UNDO_DEPTH) undoStack.shift();
  maskCanvas.setPointerCapture(event.pointerId);
  drawing = canvasPoint(event);
  strokeTo(drawing);
});
maskCanvas.addEventListener("pointermove", (event) => { if (drawing) strokeTo(canvasPoint(event)); });
for (const type of ["pointerup", "pointercancel"]) {
  maskCanvas.addEventListener(type, () => { drawing = null; });
}
$("undo").addEventListener("click", () => { if (undoStack.length) ctx.putImageData(undoStack.pop(), 0, 0); });
document.addEventListener("keydown", (event) => {  // Ctrl+Z / Cmd+Z undoes a stroke, outside the text fields
  const typing = event.target.matches("input[type=text], input[type=number], textarea, select");
  if ((event.ctrlKey || event.metaKey) && event.key === "z" && !typing) {
    event.preventDefault();
    $("undo").click();
  }
});
$("clear").addEventListener("click", () => {
  undoStack.push(ctx.getImageData(0, 0, maskCanvas.width, maskCanvas.height));
  ctx.clearRect(0, 0, maskCanvas.width, maskCanvas.height);
});

function painted() {  // whether any pixel is painted (alpha ≥ 128)
  const alpha = ctx.getImageData(0, 0, maskCanvas.width, maskCanvas.height).data;
  for (let i = 3; i < alpha.length; i += 4) if (alpha[i] >= 128) return true;
  return false;
}

function maskPng() {  // painted (alpha ≥ 128) → white, the rest black
  const painted = ctx.getImageData(0, 0, maskCanvas.width, maskCanvas.height);
  const out = new ImageData(maskCanvas.width, maskCanvas.height);
  for (let i = 0; i < painted.data.length; i += 4) {
    const level = painted.data[i + 3] >= 128 ? 255 : 0;
    out.data[i] = out.data[i + 1] = out.data[i + 2] = level;
    out.data[i + 3] = 255;
  }
  const scratch = document.createElement("canvas");
  scratch.width = out.width;
  scratch.height = out.height;
  scratch.getContext("2d").putImageData(out, 0, 0);
  return new Promise((resolve) => scratch.toBlob(resolve, "image/png"));
}

// ----------------------------------------------------------------------------- the mask from two texts
async function maskFromPrompt() {
  showError("");
  if (!photoBlob) return showError("Open a photograph first (or press Example).");
  const data = new FormData();
  data.append("image", photoBlob, photoName);
  data.append("prompt", form.elements.prompt.value);
  data.append("reference", $("reference").value);
  for (const name of ["seed", "steps", "guidance"]) {  // the latent model's: the estimate is the same as --mask-from's
    if (form.elements[name].value !== "") data.append(name, form.elements[name].value);
  }
  $("mask-from").disabled = true;
  document.body.dataset.maskFrom = "running";
  try {
    const response = await fetch("/api/mask-from", { method: "POST", body: data });
    if (!response.ok) {
      const answer = await response.json();
      throw new Error(answer.error || `the server answered ${response.status}`);
    }
    const blob = await response.blob();
    undoStack.push(ctx.getImageData(0, 0, maskCanvas.width, maskCanvas.height));  // Undo brings the old mask back
    if (undoStack.length > UNDO_DEPTH) undoStack.shift();
    await fillBrushLayer(blob);
    document.body.dataset.maskFrom = "done";
  } catch (error) {
    document.body.dataset.maskFrom = "failed";
    showError(error.message);
  } finally {
    $("mask-from").disabled = false;
  }
}

// ----------------------------------------------------------------------------- the method's options
function takenByMethod(element) {  // an element outside a data-methods label serves every method
  const label = element.closest("[data-methods]");
  return !label || label.dataset.methods.split(" ").includes(form.elements.method.value);
}

function showMethodOptions() {
  for (const label of form.querySelectorAll("[data-methods]")) {
    label.hidden = !label.dataset.methods.split(" ").includes(form.elements.method.value);
  }
}

// ----------------------------------------------------------------------------- running a job
function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function figure(url, caption, download) {
  const item = document.createElement("figure");
  const image = document.createElement("img");
  image.src = url;
  image.alt = caption;
  if (download) {
    const link = document.createElement("a");
    link.href = url;
    link.download = download;
    link.append(image);
    item.append(link);
  } else {
    item.append(image);
  }
  const text = document.createElement("figcaption");
  text.textContent = caption;
  item.append(text);
  return item;
}

function downloadLink(url, text) {
  const link = document.createElement("a");
  link.href = url;
  link.download = url.split("/").pop();
  link.textContent = text;
  return link;
}

function setRunning(running) {
  $("run").disabled = running;
}

async function run(event) {
  event.preventDefault();
  showError("");
  if (!photoBlob) return showError("Open a photograph first (or press Example).");
  const data = new FormData();
  data.append("image", photoBlob, photoName);
  if (form.elements.method.value !== "sdedit" || painted()) {  // SDEdit uses no mask: none painted, none sent
    data.append("mask", await maskPng(), "mask.png");
  }
  for (const element of form.elements) {
    if (!element.name || !takenByMethod(element)) continue;
    data.append(element.name, element.type === "checkbox" ? (element.checked ? "on" : "off") : element.value);
  }
  $("previews").replaceChildren();
  $("results").replaceChildren();
  $("downloads").replaceChildren();
  setRunning(true);
  document.body.dataset.state = "submitting";
  let answer;
  try {
    const response = await fetch("/api/edit", { method: "POST", body: data });
    answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `the server answered ${response.status}`);
  } catch (error) {
    document.body.dataset.state = "failed";
    setRunning(false);
    return showError(error.message);
  }
  document.body.dataset.job = answer.job;
  poll(answer.job, 0);
}

async function poll(jobId, shown) {
  let job;
  try {
    const response = await fetch(`/api/jobs/${jobId}`);
    job = await response.json();
    if (!response.ok) throw new Error(job.error || `the server answered ${response.status}`);
  } catch (error) {
    document.body.dataset.state = "failed";
    setRunning(false);
    return showError(error.message);
  }
  document.body.dataset.state = job.state;
  $("progress").max = Math.max(job.steps, 1);
  $("progress").value = job.step;
  $("status").textContent = job.state === "running" ? `step ${job.step} / ${job.steps}` : job.state;
  for (const url of job.previews.slice(shown)) {
    const step = Number(url.match(/preview_(\d+)/)[1]);
    $("previews").append(figure(url, `step ${step}`));
  }
  shown = job.previews.length;
  if (job.state === "done") return showResults(job);
  if (job.state === "failed") {
    setRunning(false);
    return showError(job.error);
  }
  polling = setTimeout(() => poll(jobId, shown), POLL_MS);
}

function showResults(job) {
  job.results.forEach((url, index) => {
    const caption = job.ranking ? `#${index + 1}` : `result ${index}`;
    $("results").append(figure(url, caption, url.split("/").pop()));
  });
  const links = $("downloads");
  job.results.forEach((url, index) => { links.append(downloadLink(url, `result_${index}.png`), " "); });
  if (job.grid) links.append(downloadLink(job.grid, "grid.png (input | mask | results)"), " ");
  if (job.ranking) links.append(downloadLink(job.ranking, "ranking.txt"));
  if (job.warnings.length) showError(job.warnings.map((w) => `warning: ${w}`).join("\n"));
  setRunning(false);
}

// ----------------------------------------------------------------------------- start
async function start() {
  const info = await (await fetch("/api/info")).json();
  $("model").textContent = `model: ${info.model}`;
  const fill = (select, values) => { for (const v of values) select.append(new Option(v, v)); };
  fill(form.elements.method, info.methods);
  fill(form.elements.variant, info.variants);
  fill(form.elements.sampler, info.samplers);
  fill(form.elements.reconstruction, info.reconstructions);
  fill(form.elements.rank, info.clip_names);
  for (const [name, value] of Object.entries(info.defaults)) {
    const element = form.elements[name];
    if (!element) continue;
    if (element.type === "checkbox") element.checked = Boolean(value); else element.value = value;
  }
  const perSampler = Object.entries(info.default_steps).map(([name, steps]) => `${name} ${steps}`).join(", ");
  form.elements.steps.closest("label").title = `empty: the sampler's default steps (${perSampler}; `
    + `repaint ${info.repaint_steps}); DPM-Solver++(2M) matches DDIM-${info.default_steps.ddim}'s error there `
    + "on the exact toy model";
  form.elements.method.title = `bld, sdedit, repaint, diffedit and inpaint run ${info.model}; `
    + `blended-diffusion and local-clip run ${info.pixel_model}`;
  for (const option of form.elements.method.options) {  // a latent method the loaded model cannot run
    const latent = ["bld", "sdedit", "repaint", "diffedit", "inpaint"].includes(option.value);
    option.disabled = latent && !info.model_methods.includes(option.value);
  }
  $("mask-from").addEventListener("click", maskFromPrompt);
  form.elements.method.addEventListener("change", showMethodOptions);
  showMethodOptions();
  $("photo-file").addEventListener("change", async () => {
    const file = $("photo-file").files[0];
    if (!file) return;
    showError("");
    try { await loadPhoto(file, file.name); } catch (error) { showError(error.message); }
  });
  $("example").addEventListener("click", () => loadExample().catch((error) => showError(error.message)));
  form.addEventListener("submit", run);
  await loadExample();
  document.body.dataset.ready = "1";
}

start().catch((error) => showError(`could not start: ${error.message}`));
