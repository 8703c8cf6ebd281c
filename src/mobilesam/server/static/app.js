// mobilesam serve: the labelling page. Plain JS modules, no build step.
// Served by `mobilesam serve`, it talks to the JSON API of the same origin; clicks are decoded in the page
// (onnxruntime-web) where the server offers a decoder and WebAssembly runs, else by the server. Written
// by `mobilesam export --format web` (meta mobilesam-mode "static"), it needs no server: the image
// encoder runs in the page too and the label files are written by the page.
"use strict";

import { BrowserDecoder, BrowserEncoder, embeddingFromResponse, loadOrt } from "./decoder.js";
import { base64ToFloats, encodeRLE, floatsToBase64, maskCanvas } from "./masks.js";
import { classList, safeStem, toCoco, toPngZip, toYolo } from "./labels.js";

const COLORS = ["#ff6b6b", "#4dabf7", "#51cf66", "#fcc419", "#cc5de8", "#ff922b", "#22b8cf", "#94d82d",
  "#f06595", "#5c7cfa", "#20c997", "#fab005"];
const DRAG_PX = 5; // a press that moves further than this (screen pixels) draws a box

const $ = (id) => document.getElementById(id);
const STATIC = document.querySelector('meta[name="mobilesam-mode"]')?.content === "static";
const PARAMS = new URLSearchParams(location.search);
const S = {
  info: null,
  decodeMode: "server", // "browser": clicks decoded here; "server": one request per click
  decodeNote: "",
  decoder: null, // BrowserDecoder
  encoder: null, // BrowserEncoder (static page)
  embedding: null, // {id, promise} of the image whose embedding is (being) loaded into the decoder
  refine: false, // pass an object's previous mask (low-res logits) to the decoder with its next prompt
  timings: [], // one per decoded prompt: {click, decoded, drawn, decoder_ms, upscale_ms, mode} (ms)
  embeddings: [], // one per embedding loaded into the decoder: {encoder_ms, cached, bytes, ms} (ms: until ready)
  local: new Map(), // static page: image id -> {file, bitmap}
  opened: 0, // static page: images opened so far (their ids)
  image: null, // {id, name, width, height, folder}
  objects: [], // {class_name, points, labels, box, rle, png, mask, lowRes, score, area, color, tint, seq}
  active: -1,
  undo: [],
  redo: [],
  classes: [],
  folderImages: [],
  pending: 0,
  dirty: false,
  colorCounter: 0,
  drag: null,
};

// -- server ------------------------------------------------------------------------------------------------

async function api(method, url, body, raw = false) {
  const opts = { method, headers: {} };
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) {
    opts.body = JSON.stringify(body);
    opts.headers["content-type"] = "application/json";
  }
  setPending(+1);
  try {
    const res = await fetch(url, opts);
    if (!res.ok) {
      let detail = res.statusText;
      try { detail = (await res.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new Error(`${res.status}: ${detail}`);
    }
    return raw ? res : await res.json();
  } finally {
    setPending(-1);
  }
}

function setPending(d) {
  S.pending += d;
  document.body.dataset.pending = String(S.pending);
}

function status(msg, isError = false) {
  const el = $("status");
  el.textContent = msg;
  el.classList.toggle("error", isError);
}

function fail(e) { status(String(e.message || e), true); }

// -- objects and history -----------------------------------------------------------------------------------

function snapshot() {
  return {
    objects: S.objects.map((o) => ({ ...o, points: o.points.map((p) => p.slice()), labels: o.labels.slice(),
      box: o.box ? o.box.slice() : null })),
    active: S.active,
  };
}

function pushHistory() {
  S.undo.push(snapshot());
  if (S.undo.length > 200) S.undo.shift();
  S.redo = [];
  S.dirty = true;
}

function restore(from, to) {
  if (!from.length) return;
  to.push(snapshot());
  const snap = from.pop();
  S.objects = snap.objects;
  S.active = Math.min(snap.active, S.objects.length - 1);
  S.dirty = true;
  refresh();
}

const undo = () => restore(S.undo, S.redo);
const redo = () => restore(S.redo, S.undo);

function newObject(fields = {}) {
  const o = { class_name: currentClass(), points: [], labels: [], box: null, rle: null, png: null, score: null,
    area: 0, color: COLORS[S.colorCounter++ % COLORS.length], tint: null, seq: 0, ...fields };
  S.objects.push(o);
  return o;
}

function currentClass() {
  const name = $("class-input").value.trim() || "object";
  rememberClass(name);
  return name;
}

function rememberClass(name) {
  if (!S.classes.includes(name)) {
    S.classes.push(name);
    renderClassList();
  }
}

function activeObject() { return S.active >= 0 ? S.objects[S.active] : null; }

function finishObject() {
  S.active = -1;
  refresh();
}

function addPoint(x, y, label, clicked) {
  if (!S.image) return;
  pushHistory();
  let o = activeObject();
  if (!o) { o = newObject(); S.active = S.objects.length - 1; }
  o.points.push([x, y]);
  o.labels.push(label);
  refresh();
  predict(o, clicked);
}

function setBox(box, clicked) {
  if (!S.image) return;
  pushHistory();
  let o = activeObject();
  if (!o) { o = newObject(); S.active = S.objects.length - 1; }
  o.box = box;
  refresh();
  predict(o, clicked);
}

function deleteObject(i) {
  if (i < 0 || i >= S.objects.length) return;
  pushHistory();
  S.objects.splice(i, 1);
  S.active = -1;
  refresh();
}

function clearAll() {
  if (!S.objects.length) return;
  pushHistory();
  S.objects = [];
  S.active = -1;
  refresh();
}

// The mask of object `o` for its prompts, decoded here or by the server; `clicked`: the event's time.
async function predict(o, clicked = performance.now()) {
  const seq = ++o.seq;
  const prompts = { points: o.points, labels: o.labels, box: o.box };
  const maskInput = S.refine && o.lowRes ? o.lowRes : null;
  setPending(+1); // held until the new mask is drawn (tests and scripts wait for data-pending="0")
  try {
    let decoderMs, upscaleMs = 0;
    if (S.decodeMode === "browser") {
      const image = S.image;
      await S.embedding.promise;
      if (seq !== o.seq || image !== S.image) return;
      const d = await S.decoder.decode({ ...prompts, maskInput }, image.id);
      if (seq !== o.seq || image !== S.image) return; // a newer prompt of this object was decoded meanwhile
      Object.assign(o, { mask: d.mask, rle: null, png: null, score: d.score, area: d.area, lowRes: d.lowRes });
      o.tint = makeTintFromFill(maskCanvas(d.mask, image.height, image.width, ...displaySize()), o.color);
      [decoderMs, upscaleMs] = [d.decoderMs, d.upscaleMs];
    } else {
      // The low-res logits come back with every mask, so that refinement can start from any of them.
      const body = { ...prompts, return_low_res: true };
      if (maskInput) body.mask_input = floatsToBase64(maskInput);
      const r = await api("POST", `api/images/${S.image.id}/predict`, body);
      if (seq !== o.seq) return; // a newer prompt of this object was sent meanwhile
      Object.assign(o, { rle: r.rle, png: r.png, mask: null, score: r.score, area: r.area,
        lowRes: r.low_res ? base64ToFloats(r.low_res) : null });
      o.tint = await makeTint(r.png, o.color);
      if (seq !== o.seq) return;
      decoderMs = r.decode_ms;
    }
    const decoded = performance.now();
    $("score").textContent = `Score: ${o.score.toFixed(3)} · decoder ${decoderMs.toFixed(0)} ms` +
      (S.decodeMode === "browser" ? " (in the browser)" : "");
    status(`Mask updated: ${o.area} pixels, score ${o.score.toFixed(3)}`);
    refresh();
    await nextPaint();
    S.timings.push({ click: clicked, decoded, drawn: performance.now(), decoder_ms: decoderMs, upscale_ms: upscaleMs,
      mode: S.decodeMode });
    if (o.mask && !o.rle && seq === o.seq) {
      o.rle = encodeRLE(o.mask, S.image.height, S.image.width);
      if (!STATIC) o.mask = null; // the server keeps labels as RLE; the static page writes files from masks
    }
  } catch (e) { fail(e); } finally { setPending(-1); }
}

// Resolves once the frame holding what was just drawn has been produced.
function nextPaint() {
  return new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
}

async function everything() {
  if (!S.image || !S.info.everything) return;
  status("Segmenting everything…");
  setPending(+1);
  try {
    const r = await api("POST", `api/images/${S.image.id}/everything`);
    pushHistory();
    const cls = currentClass();
    for (const m of r.masks) {
      const o = newObject({ class_name: cls, rle: m.rle, png: m.png, score: m.score, area: m.area });
      o.tint = await makeTint(m.png, o.color);
    }
    S.active = -1;
    status(`Everything: ${r.masks.length} masks in ${(r.ms / 1000).toFixed(1)} s${r.truncated ? " (truncated)" : ""}`);
    refresh();
  } catch (e) { fail(e); } finally { setPending(-1); }
}

// -- images ------------------------------------------------------------------------------------------------

async function uploadFile(file) {
  if (!file) return;
  if (!confirmLeave()) return;
  status(`${STATIC ? "Opening" : "Uploading"} ${file.name}…`);
  setPending(+1);
  try {
    if (STATIC) {
      await showImage(await openLocal(file), []);
      return;
    }
    const form = new FormData();
    form.append("file", file, file.name);
    const r = await api("POST", "api/images/upload", form);
    await showImage(r, []);
  } catch (e) { fail(e); } finally { setPending(-1); }
}

// Static page: the image stays in the page.
async function openLocal(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (e) {
    throw new Error(`image: '${file.name}' is not a readable image (${e.message || e})`);
  }
  const id = `local-${++S.opened}`;
  S.local.set(id, { file, bitmap });
  return { id, name: file.name, width: bitmap.width, height: bitmap.height, folder: false };
}

async function openFolderImage(name) {
  if (!name || !confirmLeave()) return;
  status(`Opening ${name}…`);
  setPending(+1);
  try {
    const r = await api("POST", "api/images/open", { name });
    await showImage(r, r.objects || []);
    if (r.labels_error) status(r.labels_error, true);
  } catch (e) { fail(e); } finally { setPending(-1); }
}

function confirmLeave() {
  return !(S.dirty && S.image && S.image.folder && S.objects.length) ||
    window.confirm("This image has unsaved labels. Open another image anyway?");
}

async function showImage(r, saved) {
  setPending(+1);
  try { await showImageNow(r, saved); } finally { setPending(-1); }
}

async function showImageNow(r, saved) {
  delete document.body.dataset.ready;
  await S.decoderReady; // which way clicks are decoded is known once the decoder has loaded (or not)
  const img = new Image();
  img.src = STATIC ? URL.createObjectURL(S.local.get(r.id).file) : `api/images/${r.id}/image`;
  await img.decode();
  S.image = { ...r, element: img };
  // The embedding is asked for at once, and clicks on this image wait for it (never for another's).
  const t0 = performance.now();
  const loading = S.decodeMode === "browser" ? loadEmbedding(r) : api("POST", `api/images/${r.id}/embed`);
  S.embedding = { id: r.id, promise: loading };
  if (STATIC) for (const [id, local] of S.local) if (id !== r.id) { local.bitmap.close(); S.local.delete(id); }
  S.objects = [];
  S.active = -1;
  S.undo = [];
  S.redo = [];
  S.dirty = false;
  for (const s of saved) {
    rememberClass(s.class_name);
    newObject({ class_name: s.class_name, points: s.points || [], labels: s.labels || [], box: s.box || null,
      rle: s.rle, png: s.png, score: s.score, area: s.area });
  }
  $("canvas-wrap").hidden = false;
  $("drop-hint").hidden = true;
  $("btn-save").hidden = !r.folder;
  if (r.folder) $("image-select").value = r.name;
  layout();
  await Promise.all(S.objects.map(async (o) => { o.tint = await makeTint(o.png, o.color); }));
  refresh();
  document.title = `${r.name} · mobilesam ${STATIC ? "web" : "serve"}`;
  status(`${r.name} (${r.width}×${r.height}): computing the image embedding…`);
  try {
    const e = await loading;
    if (S.image && S.image.id === r.id) {
      const how = e.encoder_ms == null ? "" : e.cached ? " (embedding cached" : ` (encoder ${(e.encoder_ms / 1000).toFixed(2)} s`;
      status(`${r.name} (${r.width}×${r.height}): ready in ${((performance.now() - t0) / 1000).toFixed(2)} s${how}` +
        (e.bytes ? `, ${(e.bytes / 1e6).toFixed(1)} MB embedding` : "") + (how ? ")" : "") +
        (saved.length ? `, ${saved.length} saved objects loaded` : "") +
        ` · decoding ${S.decodeMode === "browser" ? "in the browser" : "on the server"}${S.decodeNote}`);
      document.body.dataset.ready = r.id;
    }
  } catch (err) { fail(err); }
}

// Browser decoding: the image's embedding (downloaded, or computed here on the static page) goes into
// the decoder. Resolves to {encoder_ms, cached, bytes}.
async function loadEmbedding(r) {
  const t0 = performance.now();
  const decoder = S.decoder; // loaded: showImageNow waits for S.decoderReady
  let emb, meta;
  if (STATIC) {
    const local = S.local.get(r.id);
    if (!local) return { cached: false }; // another image was opened meanwhile
    emb = await S.encoder.encode(local.bitmap, r.height, r.width);
    meta = { encoder_ms: emb.encoderMs, cached: false, bytes: 0 };
  } else {
    const res = await api("GET", `api/images/${r.id}/embedding?dtype=${S.info.embedding_dtype}`, undefined, true);
    emb = await embeddingFromResponse(res);
    meta = { encoder_ms: Number(res.headers.get("x-encoder-ms")), cached: res.headers.get("x-embedding-cached") === "1",
      bytes: emb.bytes };
  }
  if (S.image && S.image.id === r.id) decoder.setImage(emb, r.id);
  S.embeddings.push({ ...meta, ms: performance.now() - t0 });
  return meta;
}

async function save() {
  if (!S.image || !S.image.folder) return;
  try {
    const r = await api("POST", `api/images/${S.image.id}/save`, exportBody());
    S.dirty = false;
    S.classes = r.classes.concat(S.classes.filter((c) => !r.classes.includes(c)));
    renderClassList();
    status(`Saved ${r.saved.join(", ")}`);
  } catch (e) { fail(e); }
}

function exportBody() {
  for (const o of S.objects) if (o.mask && !o.rle) o.rle = encodeRLE(o.mask, S.image.height, S.image.width);
  const objects = S.objects.filter((o) => o.rle).map((o) => ({
    class_name: o.class_name, rle: o.rle, score: o.score, points: o.points, labels: o.labels, box: o.box }));
  return { objects, classes: S.classes.filter((c) => objects.some((o) => o.class_name === c) || S.info.classes.includes(c)) };
}

async function exportAs(format) {
  if (!S.image) return;
  try {
    let blob, name, classes;
    if (STATIC) {
      [blob, name, classes] = await exportHere(format);
    } else {
      const res = await api("POST", `api/images/${S.image.id}/export?format=${format}`, exportBody(), true);
      blob = await res.blob();
      const m = /filename="([^"]+)"/.exec(res.headers.get("content-disposition") || "");
      name = m ? m[1] : `labels.${format}`;
      classes = res.headers.get("x-classes");
    }
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    status(`Exported ${a.download} (classes: ${classes})`);
  } catch (e) { fail(e); }
}

// Static page: the label files written here, as the server writes them.
async function exportHere(format) {
  const body = exportBody();
  const objects = S.objects.filter((o) => o.mask).map((o) => ({ ...o, rle: o.rle }));
  const classes = classList(objects, body.classes);
  const { name, width: W, height: H } = S.image;
  const stem = safeStem(name.replace(/\.[^.]*$/, ""));
  if (format === "coco") {
    const doc = toCoco(objects, name, H, W, classes, S.info.version);
    return [new Blob([JSON.stringify(doc)], { type: "application/json" }), `${stem}.json`, JSON.stringify(classes)];
  }
  if (format === "yolo") {
    return [new Blob([toYolo(objects, H, W, classes, S.info.simplify ?? 0)], { type: "text/plain" }), `${stem}.txt`, JSON.stringify(classes)];
  }
  return [await toPngZip(objects, H, W, stem), `${stem}_masks.zip`, JSON.stringify(classes)];
}

// -- drawing -----------------------------------------------------------------------------------------------

function layout() {
  if (!S.image) return;
  const stage = $("stage");
  const maxW = Math.max(100, stage.clientWidth - 16);
  const maxH = Math.max(100, stage.clientHeight - 16);
  const scale = Math.min(maxW / S.image.width, maxH / S.image.height);
  const w = Math.max(1, Math.round(S.image.width * scale));
  const h = Math.max(1, Math.round(S.image.height * scale));
  for (const c of [$("image-canvas"), $("overlay-canvas")]) {
    if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
  }
  const ctx = $("image-canvas").getContext("2d");
  ctx.drawImage(S.image.element, 0, 0, w, h);
}

function displaySize() {
  const { width: w, height: h } = $("overlay-canvas");
  return [w, h];
}

async function makeTint(png, color) {
  if (!png) return null;
  const img = new Image();
  img.src = png;
  await img.decode();
  // At display size: full-resolution tints of many objects would take gigabytes for a large photo.
  const [w, h] = displaySize();
  const fill = document.createElement("canvas");
  fill.width = w;
  fill.height = h;
  const ctx = fill.getContext("2d");
  ctx.imageSmoothingEnabled = false; // a pixel is in the mask or not: no blurred, half-shown edges
  ctx.drawImage(img, 0, 0, w, h);
  return makeTintFromFill(fill, color);
}

// The object's overlay from `fill` (display size, opaque where the mask is): half-transparent colour
// inside, a light outline on the border.
function makeTintFromFill(fill, color) {
  const { width: w, height: h } = fill;
  const canvas = () => {
    const c = document.createElement("canvas");
    c.width = w;
    c.height = h;
    const ctx = c.getContext("2d");
    ctx.imageSmoothingEnabled = false; // a pixel is in the mask or not: no blurred, half-shown edges
    return [c, ctx];
  };
  const fctx = fill.getContext("2d");
  const [edge, ectx] = canvas();
  ectx.drawImage(fill, 0, 0);
  const [inner, ictx] = canvas(); // erosion: mask pixels whose four neighbours are in the mask too
  ictx.drawImage(fill, 0, 0);
  ictx.globalCompositeOperation = "destination-in";
  for (const [dx, dy] of [[1, 0], [-1, 0], [0, 1], [0, -1]]) ictx.drawImage(fill, dx, dy);
  ectx.globalCompositeOperation = "destination-out";
  ectx.drawImage(inner, 0, 0);
  ectx.globalCompositeOperation = "source-in";
  ectx.fillStyle = "#ffffff";
  ectx.fillRect(0, 0, w, h);
  fctx.globalCompositeOperation = "source-in"; // keep the mask's alpha, take the object's colour
  fctx.fillStyle = color;
  fctx.fillRect(0, 0, w, h);
  const [tint, tctx] = canvas();
  tctx.globalAlpha = 0.5;
  tctx.drawImage(fill, 0, 0);
  tctx.globalAlpha = 0.9;
  tctx.drawImage(edge, 0, 0);
  return tint;
}

function render() {
  const c = $("overlay-canvas");
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  if (!S.image) return;
  const k = c.width / S.image.width;
  ctx.imageSmoothingEnabled = false;
  S.objects.forEach((o, i) => {
    if (!o.tint) return;
    ctx.globalAlpha = i === S.active || S.active < 0 ? 1 : 0.75;
    ctx.drawImage(o.tint, 0, 0, c.width, c.height);
  });
  ctx.globalAlpha = 1;
  const o = activeObject();
  if (o) {
    if (o.box) {
      ctx.strokeStyle = "#ffffff";
      ctx.lineWidth = 2;
      ctx.strokeRect(o.box[0] * k, o.box[1] * k, (o.box[2] - o.box[0]) * k, (o.box[3] - o.box[1]) * k);
    }
    o.points.forEach(([x, y], j) => {
      ctx.beginPath();
      ctx.arc(x * k, y * k, 5, 0, 2 * Math.PI);
      ctx.fillStyle = o.labels[j] ? "#2b8a3e" : "#c92a2a";
      ctx.fill();
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "#ffffff";
      ctx.stroke();
    });
  }
  if (S.drag && S.drag.moved) {
    const [x1, y1, x2, y2] = dragBox(S.drag);
    ctx.setLineDash([6, 4]);
    ctx.strokeStyle = "#ffffff";
    ctx.lineWidth = 2;
    ctx.strokeRect(x1 * k, y1 * k, (x2 - x1) * k, (y2 - y1) * k);
    ctx.setLineDash([]);
  }
}

function renderList() {
  const list = $("object-list");
  list.replaceChildren();
  S.objects.forEach((o, i) => {
    const li = document.createElement("li");
    li.className = i === S.active ? "active" : "";
    li.dataset.index = String(i);
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = o.color;
    const name = document.createElement("input");
    name.value = o.class_name;
    name.setAttribute("list", "class-list");
    name.title = "Class name";
    name.addEventListener("change", () => {
      const v = name.value.trim();
      if (!v || v === o.class_name) { name.value = o.class_name; return; }
      pushHistory();
      o.class_name = v;
      rememberClass(v);
      refresh();
    });
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = o.score == null ? "…" : o.score.toFixed(2);
    const del = document.createElement("button");
    del.textContent = "×";
    del.title = "Delete this object";
    del.addEventListener("click", (ev) => { ev.stopPropagation(); deleteObject(i); });
    li.append(sw, name, meta, del);
    li.addEventListener("click", (ev) => {
      if (ev.target === name) return;
      S.active = i === S.active ? -1 : i;
      refresh();
    });
    list.appendChild(li);
  });
  $("btn-undo").disabled = !S.undo.length;
  $("btn-redo").disabled = !S.redo.length;
}

function renderClassList() {
  const dl = $("class-list");
  dl.replaceChildren(...S.classes.map((c, i) => {
    const opt = document.createElement("option");
    opt.value = c;
    opt.label = `${i}: ${c}`;
    return opt;
  }));
}

function refresh() {
  render();
  renderList();
}

// -- mouse -------------------------------------------------------------------------------------------------

function toImage(ev) {
  const c = $("overlay-canvas");
  const r = c.getBoundingClientRect();
  const x = Math.min(Math.max((ev.clientX - r.left) * (S.image.width / r.width), 0), S.image.width);
  const y = Math.min(Math.max((ev.clientY - r.top) * (S.image.height / r.height), 0), S.image.height);
  return [Math.round(x * 10) / 10, Math.round(y * 10) / 10];
}

function dragBox(d) {
  return [Math.min(d.x0, d.x1), Math.min(d.y0, d.y1), Math.max(d.x0, d.x1), Math.max(d.y0, d.y1)];
}

function setupMouse() {
  const c = $("overlay-canvas");
  c.addEventListener("contextmenu", (ev) => ev.preventDefault());
  c.addEventListener("mousedown", (ev) => {
    if (!S.image || ev.button === 1) return;
    const [x, y] = toImage(ev);
    S.drag = { x0: x, y0: y, x1: x, y1: y, sx: ev.clientX, sy: ev.clientY, moved: false,
      negative: ev.button === 2 || ev.shiftKey, boxable: ev.button === 0 };
    ev.preventDefault();
  });
  window.addEventListener("mousemove", (ev) => {
    const d = S.drag;
    if (!d) return;
    [d.x1, d.y1] = toImage(ev);
    if (d.boxable && Math.hypot(ev.clientX - d.sx, ev.clientY - d.sy) > DRAG_PX) d.moved = true;
    if (d.moved) render();
  });
  window.addEventListener("mouseup", (ev) => {
    const d = S.drag;
    if (!d) return;
    S.drag = null;
    if (d.moved) setBox(dragBox(d), ev.timeStamp);
    else addPoint(d.x0, d.y0, d.negative ? 0 : 1, ev.timeStamp);
  });
}

function setupDrop() {
  const stage = $("stage");
  stage.addEventListener("dragover", (ev) => { ev.preventDefault(); stage.classList.add("dragover"); });
  stage.addEventListener("dragleave", () => stage.classList.remove("dragover"));
  stage.addEventListener("drop", (ev) => {
    ev.preventDefault();
    stage.classList.remove("dragover");
    const f = ev.dataTransfer.files[0];
    if (f) uploadFile(f);
  });
}

// -- keys --------------------------------------------------------------------------------------------------

function stepImage(d) {
  if (!S.folderImages.length) return;
  const i = S.image ? S.folderImages.indexOf(S.image.name) : -1;
  const j = Math.min(Math.max(i + d, 0), S.folderImages.length - 1);
  if (j !== i) openFolderImage(S.folderImages[j]);
}

function setupKeys() {
  window.addEventListener("keydown", (ev) => {
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
    const ctrl = ev.ctrlKey || ev.metaKey;
    const key = ev.key.toLowerCase();
    if (ctrl && key === "s") { ev.preventDefault(); save(); return; }
    if (typing) {
      if (ev.key === "Enter" || ev.key === "Escape") document.activeElement.blur();
      return;
    }
    if (ctrl && key === "z" && !ev.shiftKey) { ev.preventDefault(); undo(); }
    else if (ctrl && (key === "y" || (key === "z" && ev.shiftKey))) { ev.preventDefault(); redo(); }
    else if (ctrl) return;
    else if (key === "n" || ev.key === "Enter" || ev.key === "Escape") finishObject();
    else if (ev.key === "Delete" || ev.key === "Backspace") deleteObject(S.active);
    else if (key === "c") clearAll();
    else if (key === "e") everything();
    else if (key === "m") setRefine(!S.refine);
    else if (key === "o") $("file-input").click();
    else if (ev.key === "ArrowRight") stepImage(+1);
    else if (ev.key === "ArrowLeft") stepImage(-1);
    else return;
    ev.preventDefault();
  });
}

// -- start -------------------------------------------------------------------------------------------------

async function start() {
  setupMouse();
  setupDrop();
  setupKeys();
  $("file-input").addEventListener("change", (ev) => { uploadFile(ev.target.files[0]); ev.target.value = ""; });
  $("image-select").addEventListener("change", (ev) => openFolderImage(ev.target.value));
  $("btn-new").addEventListener("click", finishObject);
  $("btn-undo").addEventListener("click", undo);
  $("btn-redo").addEventListener("click", redo);
  $("btn-clear").addEventListener("click", clearAll);
  $("btn-everything").addEventListener("click", everything);
  $("btn-export-coco").addEventListener("click", () => exportAs("coco"));
  $("btn-export-yolo").addEventListener("click", () => exportAs("yolo"));
  $("btn-export-png").addEventListener("click", () => exportAs("png"));
  $("btn-save").addEventListener("click", save);
  $("refine").addEventListener("change", (ev) => setRefine(ev.target.checked));
  window.addEventListener("resize", () => { layout(); render(); });
  window.addEventListener("beforeunload", (ev) => {
    if (S.dirty && S.objects.length) { ev.preventDefault(); ev.returnValue = ""; }
  });
  try {
    S.info = STATIC ? await staticInfo() : await api("GET", "api/info");
    S.classes = S.info.classes.slice();
    renderClassList();
    $("btn-everything").disabled = !S.info.everything;
    if (STATIC) $("btn-everything").title = "Segment everything needs mobilesam serve";
    startDecoder();
    if (S.info.folder) {
      const r = await api("GET", "api/images");
      S.folderImages = r.images;
      const sel = $("image-select");
      for (const name of r.images) {
        const opt = document.createElement("option");
        opt.value = opt.textContent = name;
        sel.appendChild(opt);
      }
      sel.hidden = false;
      status(`${r.images.length} images in the folder: pick one, or drop an image here.`);
    } else {
      status("Drop an image here or use Open image.");
    }
    refresh();
    document.body.dataset.started = "1";
  } catch (e) { fail(e); }
}

// The static page's settings: the manifest written beside it by the web export.
async function staticInfo() {
  const res = await fetch("manifest.json");
  if (!res.ok) throw new Error(`manifest.json: ${res.status} (serve the folder written by mobilesam export --format web)`);
  const cfg = await res.json();
  return { ...cfg, folder: false, classes: [], everything: false, decode: "browser", embedding_dtype: "float32" };
}

// Clicks are decoded here when the server offers a decoder (or on the static page), unless the address
// says ?decode=server; without WebAssembly, or when the decoder fails to load, the server decodes.
function startDecoder() {
  const info = S.info;
  if (!STATIC && (PARAMS.get("decode") === "server" || info.decode !== "browser")) {
    S.decodeMode = "server";
    S.decodeNote = PARAMS.get("decode") === "server" ? " (asked for in the address)" :
      info.decode_reason ? ` (${info.decode_reason})` : "";
    S.decoderReady = Promise.resolve();
    document.body.dataset.decoder = "server";
    return;
  }
  S.decodeMode = "browser";
  const threads = Number(PARAMS.get("threads")) || 0;
  S.decoderReady = (async () => {
    try {
      S.decoder = await BrowserDecoder.create(info.decoder.url, info.decoder, threads);
      if (STATIC) S.encoder = await BrowserEncoder.create(info.encoder.url, info.encoder, threads);
      S.decodeNote = ` (onnxruntime-web ${info.onnxruntime_web}, ${S.decoder.threads} thread${S.decoder.threads > 1 ? "s" : ""})`;
      document.body.dataset.decoder = "browser";
    } catch (e) {
      if (STATIC) { fail(new Error(`the model did not load: ${e.message || e}`)); throw e; }
      S.decodeMode = "server";
      S.decodeNote = ` (the browser decoder did not load: ${e.message || e})`;
      document.body.dataset.decoder = "server";
    }
  })();
}

function setRefine(on) {
  S.refine = on;
  $("refine").checked = on;
  status(on ? "Refine on: each new prompt of an object starts from its previous mask" : "Refine off");
}

window.mobilesam = S; // for debugging in the console
start();
