// mobilesam serve: the labelling page. Plain JS, no build step; talks to the JSON API of the same origin.
"use strict";

const COLORS = ["#ff6b6b", "#4dabf7", "#51cf66", "#fcc419", "#cc5de8", "#ff922b", "#22b8cf", "#94d82d",
  "#f06595", "#5c7cfa", "#20c997", "#fab005"];
const DRAG_PX = 5; // a press that moves further than this (screen pixels) draws a box

const $ = (id) => document.getElementById(id);
const S = {
  info: null,
  image: null, // {id, name, width, height, folder}
  objects: [], // {class_name, points, labels, box, rle, png, score, area, color, tint, seq}
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

function addPoint(x, y, label) {
  if (!S.image) return;
  pushHistory();
  let o = activeObject();
  if (!o) { o = newObject(); S.active = S.objects.length - 1; }
  o.points.push([x, y]);
  o.labels.push(label);
  refresh();
  predict(o);
}

function setBox(box) {
  if (!S.image) return;
  pushHistory();
  let o = activeObject();
  if (!o) { o = newObject(); S.active = S.objects.length - 1; }
  o.box = box;
  refresh();
  predict(o);
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

async function predict(o) {
  const seq = ++o.seq;
  const body = { points: o.points, labels: o.labels, box: o.box };
  setPending(+1); // held until the new mask is drawn (tests and scripts wait for data-pending="0")
  try {
    const r = await api("POST", `/api/images/${S.image.id}/predict`, body);
    if (seq !== o.seq) return; // a newer prompt of this object was sent meanwhile
    Object.assign(o, { rle: r.rle, png: r.png, score: r.score, area: r.area });
    o.tint = await makeTint(r.png, o.color);
    if (seq !== o.seq) return;
    $("score").textContent = `Score: ${r.score.toFixed(3)} · decoder ${r.decode_ms.toFixed(0)} ms`;
    status(`Mask updated: ${r.area} pixels, score ${r.score.toFixed(3)}`);
    refresh();
  } catch (e) { fail(e); } finally { setPending(-1); }
}

async function everything() {
  if (!S.image) return;
  status("Segmenting everything…");
  setPending(+1);
  try {
    const r = await api("POST", `/api/images/${S.image.id}/everything`);
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
  const form = new FormData();
  form.append("file", file, file.name);
  status(`Uploading ${file.name}…`);
  setPending(+1);
  try {
    const r = await api("POST", "/api/images/upload", form);
    await showImage(r, []);
  } catch (e) { fail(e); } finally { setPending(-1); }
}

async function openFolderImage(name) {
  if (!name || !confirmLeave()) return;
  status(`Opening ${name}…`);
  setPending(+1);
  try {
    const r = await api("POST", "/api/images/open", { name });
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
  const img = new Image();
  img.src = `/api/images/${r.id}/image`;
  await img.decode();
  S.image = { ...r, element: img };
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
  document.title = `${r.name} · mobilesam serve`;
  status(`${r.name} (${r.width}×${r.height}): computing the image embedding…`);
  try {
    const t0 = performance.now();
    const e = await api("POST", `/api/images/${r.id}/embed`);
    if (S.image && S.image.id === r.id) {
      status(`${r.name} (${r.width}×${r.height}): ready in ${((performance.now() - t0) / 1000).toFixed(2)} s` +
        (e.cached ? " (embedding cached)" : ` (encoder ${(e.encoder_ms / 1000).toFixed(2)} s)`) +
        (saved.length ? `, ${saved.length} saved objects loaded` : ""));
      document.body.dataset.ready = r.id;
    }
  } catch (err) { fail(err); }
}

async function save() {
  if (!S.image || !S.image.folder) return;
  try {
    const r = await api("POST", `/api/images/${S.image.id}/save`, exportBody());
    S.dirty = false;
    S.classes = r.classes.concat(S.classes.filter((c) => !r.classes.includes(c)));
    renderClassList();
    status(`Saved ${r.saved.join(", ")}`);
  } catch (e) { fail(e); }
}

function exportBody() {
  const objects = S.objects.filter((o) => o.rle).map((o) => ({
    class_name: o.class_name, rle: o.rle, score: o.score, points: o.points, labels: o.labels, box: o.box }));
  return { objects, classes: S.classes.filter((c) => objects.some((o) => o.class_name === c) || S.info.classes.includes(c)) };
}

async function exportAs(format) {
  if (!S.image) return;
  try {
    const res = await api("POST", `/api/images/${S.image.id}/export?format=${format}`, exportBody(), true);
    const blob = await res.blob();
    const m = /filename="([^"]+)"/.exec(res.headers.get("content-disposition") || "");
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = m ? m[1] : `labels.${format}`;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    status(`Exported ${a.download} (classes: ${res.headers.get("x-classes")})`);
  } catch (e) { fail(e); }
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

async function makeTint(png, color) {
  if (!png) return null;
  const img = new Image();
  img.src = png;
  await img.decode();
  // At display size: full-resolution tints of many objects would take gigabytes for a large photo.
  const { width: w, height: h } = $("overlay-canvas");
  const canvas = () => {
    const c = document.createElement("canvas");
    c.width = w;
    c.height = h;
    const ctx = c.getContext("2d");
    ctx.imageSmoothingEnabled = false; // a pixel is in the mask or not: no blurred, half-shown edges
    return [c, ctx];
  };
  const [fill, fctx] = canvas();
  fctx.drawImage(img, 0, 0, w, h);
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
    if (d.moved) setBox(dragBox(d));
    else addPoint(d.x0, d.y0, d.negative ? 0 : 1);
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
  window.addEventListener("resize", () => { layout(); render(); });
  window.addEventListener("beforeunload", (ev) => {
    if (S.dirty && S.objects.length) { ev.preventDefault(); ev.returnValue = ""; }
  });
  try {
    S.info = await api("GET", "/api/info");
    S.classes = S.info.classes.slice();
    renderClassList();
    $("btn-everything").disabled = !S.info.everything;
    if (S.info.folder) {
      const r = await api("GET", "/api/images");
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

window.mobilesam = S; // for debugging in the console
start();
