// Label files written by the page itself, for the static page (mobilesam export --format web) where no
// server is behind it: COCO JSON, YOLO segmentation text and a zip of PNG masks, in the layout of the
// server's exports (mobilesam/server/labels.py). Objects: {class_name, mask (H*W bytes), rle, score}.
"use strict";

import { bboxXYWH } from "./masks.js";

export function safeStem(name) {
  return name.replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^[._]+|[._]+$/g, "") || "image";
}

function area(mask) {
  let n = 0;
  for (let i = 0; i < mask.length; i++) n += mask[i];
  return n;
}

// Classes: `known` first (their order gives the ids), then new ones in order of appearance.
export function classList(objects, known = []) {
  const out = known.slice();
  for (const o of objects) if (!out.includes(o.class_name)) out.push(o.class_name);
  return out;
}

export function toCoco(objects, fileName, H, W, classes, version) {
  const ids = new Map(classes.map((c, i) => [c, i + 1]));
  return {
    info: { description: "mobilesam web export", version },
    licenses: [],
    images: [{ id: 1, file_name: fileName, width: W, height: H }],
    annotations: objects.map((o, k) => ({
      id: k + 1, image_id: 1, category_id: ids.get(o.class_name), segmentation: o.rle, area: area(o.mask),
      bbox: bboxXYWH(o.mask, H, W), iscrowd: 0,
      ...(o.score == null ? {} : { score: Math.round(o.score * 1e5) / 1e5 }),
    })),
    categories: classes.map((c, i) => ({ id: i + 1, name: c, supercategory: "" })),
  };
}

// -- polygons ----------------------------------------------------------------------------------------------

// The 8 neighbours clockwise (y down), starting east.
const DX = [1, 1, 0, -1, -1, -1, 0, 1];
const DY = [0, 1, 1, 1, 0, -1, -1, -1];

// Outer border of the 8-connected component whose first pixel in raster order is (sx, sy), traced
// clockwise (Moore neighbours) through pixel centres, as [x, y] points.
function traceBorder(mask, H, W, sx, sy) {
  const inside = (x, y) => x >= 0 && y >= 0 && x < W && y < H && mask[y * W + x] === 1;
  const pts = [[sx, sy]];
  let cx = sx, cy = sy;
  let from = 4; // we "came" from the west neighbour, which is outside
  let second = null;
  for (let steps = 0; steps < 4 * H * W + 8; steps++) {
    let found = -1;
    for (let k = 1; k <= 8; k++) {
      const d = (from + k) % 8;
      if (inside(cx + DX[d], cy + DY[d])) { found = d; break; }
    }
    if (found < 0) return pts; // a lone pixel
    const nx = cx + DX[found], ny = cy + DY[found];
    if (cx === sx && cy === sy && second && nx === second[0] && ny === second[1]) { pts.pop(); return pts; }
    if (!second) second = [nx, ny];
    pts.push([nx, ny]);
    cx = nx; cy = ny;
    // The last outside pixel tried from the previous one, seen from the new one: the search goes on
    // clockwise from there.
    from = (found + 6 - (found & 1)) % 8;
  }
  return pts;
}

// Only the corners: points in the middle of a straight (horizontal, vertical, diagonal) run are dropped
// (OpenCV's CHAIN_APPROX_SIMPLE).
function corners(pts) {
  if (pts.length < 3) return pts;
  const out = [];
  const n = pts.length;
  for (let i = 0; i < n; i++) {
    const p = pts[(i - 1 + n) % n], c = pts[i], q = pts[(i + 1) % n];
    if (c[0] - p[0] !== q[0] - c[0] || c[1] - p[1] !== q[1] - c[1]) out.push(c);
  }
  return out.length ? out : [pts[0]];
}

function polygonArea(p) {
  let a = 0;
  for (let i = 0; i < p.length; i++) {
    const [x1, y1] = p[i], [x2, y2] = p[(i + 1) % p.length];
    a += x1 * y2 - x2 * y1;
  }
  return Math.abs(a) / 2;
}

function insidePolygon(x, y, poly) {
  let inside = false;
  for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
    const [xi, yi] = poly[i], [xj, yj] = poly[j];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

// Outer contours of every component (not those lying in a hole of another), with 3 or more corners,
// largest first: the server's mask_to_polygons(mask, "all").
export function maskPolygons(mask, H, W) {
  const seen = new Uint8Array(H * W);
  const found = [];
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const i = y * W + x;
      if (!mask[i] || seen[i]) continue;
      const stack = [i]; // label the component, so each is traced once
      seen[i] = 1;
      while (stack.length) {
        const j = stack.pop();
        const px = j % W, py = (j - px) / W;
        for (let d = 0; d < 8; d++) {
          const qx = px + DX[d], qy = py + DY[d];
          if (qx < 0 || qy < 0 || qx >= W || qy >= H) continue;
          const q = qy * W + qx;
          if (mask[q] && !seen[q]) { seen[q] = 1; stack.push(q); }
        }
      }
      const traced = corners(traceBorder(mask, H, W, x, y));
      // OpenCV's direction from the same first corner: simplification depends on the point order.
      found.push({ start: [x, y], poly: [traced[0], ...traced.slice(1).reverse()] });
    }
  }
  // OpenCV lists contours last found first; equal areas keep that order (the server sorts stably).
  const polys = found.reverse().filter((f) => f.poly.length >= 3).map((f) => ({ ...f, area: polygonArea(f.poly) }));
  polys.sort((a, b) => b.area - a.area);
  return polys
    .filter((f) => !polys.some((g) => g !== f && g.area > f.area && insidePolygon(f.start[0], f.start[1], g.poly)))
    .map((f) => f.poly);
}

// Several polygons as one ring (a YOLO line holds one): a minimum spanning tree of their shortest gaps,
// each link walked there and back, so the filled ring covers every part (the server's join_polygons;
// its tree is found through a Voronoi labelling, this one by comparing every pair of corners).
export function joinPolygons(polys) {
  if (polys.length <= 1) return polys[0] || [];
  const inTree = new Array(polys.length).fill(false);
  const best = polys.map(() => ({ d: Infinity, parent: -1, a: 0, b: 0 }));
  const children = new Map(); // parent -> Map(point index -> [[child, child point index]...])
  const relax = (q) => {
    polys.forEach((r, k) => {
      if (inTree[k]) return;
      for (let i = 0; i < polys[q].length; i++) {
        const [x1, y1] = polys[q][i];
        for (let j = 0; j < r.length; j++) {
          const d = (r[j][0] - x1) ** 2 + (r[j][1] - y1) ** 2;
          if (d < best[k].d) best[k] = { d, parent: q, a: i, b: j };
        }
      }
    });
  };
  inTree[0] = true;
  relax(0);
  for (let added = 1; added < polys.length; added++) {
    let k = -1;
    for (let r = 0; r < polys.length; r++) if (!inTree[r] && (k < 0 || best[r].d < best[k].d)) k = r;
    inTree[k] = true;
    const { parent, a, b } = best[k];
    if (!children.has(parent)) children.set(parent, new Map());
    const links = children.get(parent);
    if (!links.has(a)) links.set(a, []);
    links.get(a).push([k, b]);
    relax(k);
  }
  const out = [];
  const walk = (k, order) => {
    const links = children.get(k);
    const n = k === 0 ? order.length : order.length - 1; // a child's last point repeats its first
    order.forEach((p, q) => {
      out.push(polys[k][p]);
      if (q < n && links && links.has(p)) {
        for (const [c, j] of links.get(p)) {
          const m = polys[c].length;
          const around = [];
          for (let t = 0; t <= m; t++) around.push((j + t) % m);
          walk(c, around);
          out.push(polys[k][p]);
        }
      }
    });
  };
  walk(0, polys[0].map((_, i) => i));
  return out;
}

// A closed polygon with fewer points, none of the dropped ones further than `tolerance` pixels from the
// kept outline: OpenCV's approxPolyDP for a closed curve (the server's simplify_polygon), step by step so
// that both write the same points: Douglas-Peucker from two far-apart points, then points on almost
// straight runs dropped.
export function simplifyPolygon(poly, tolerance) {
  const n = poly.length;
  if (!(tolerance > 0) || n < 4) return poly;
  const eps = tolerance * tolerance;
  // 1. two far-apart points: the farthest from the farthest from the farthest from the first.
  let pos = 0, far = 0, maxDist = 0;
  for (let it = 0; it < 3; it++) {
    pos = (pos + far) % n;
    const [x0, y0] = poly[pos];
    far = 0;
    maxDist = 0;
    for (let j = 1; j < n; j++) {
      const [x, y] = poly[(pos + j) % n];
      const d = (x - x0) ** 2 + (y - y0) ** 2;
      if (d > maxDist) { maxDist = d; far = j; }
    }
  }
  if (maxDist <= eps) return [poly[pos]];
  const farIdx = (far + pos) % n;
  // 2. Douglas-Peucker on the two arcs between them (a stack, so the kept points come out in order).
  const out = [];
  const stack = [[farIdx, pos], [pos, farIdx]];
  while (stack.length) {
    const [s, e] = stack.pop();
    const [x0, y0] = poly[s], [x1, y1] = poly[e];
    const dx = x1 - x0, dy = y1 - y0;
    let split = -1, worst = 0;
    for (let i = (s + 1) % n; i !== e; i = (i + 1) % n) {
      const d = Math.abs((poly[i][1] - y0) * dx - (poly[i][0] - x0) * dy);
      if (d > worst) { worst = d; split = i; }
    }
    if (split < 0 || worst * worst <= eps * (dx * dx + dy * dy)) out.push(poly[s]);
    else stack.push([split, e], [s, split]);
  }
  // 3. drop points lying on an almost straight run between their neighbours, in place as OpenCV does it
  // (it reads ahead of where it writes, and wraps around to read what it has already written).
  const dst = out.slice(), count = dst.length;
  let newCount = count, rpos = count - 1, wpos = 0;
  const read = () => { const p = dst[rpos]; if (++rpos >= count) rpos = 0; return p; };
  let start = read(), pt = read();
  for (let i = 0; i < count && newCount > 2; i++) {
    const end = read();
    const dx = end[0] - start[0], dy = end[1] - start[1];
    const dist = Math.abs((pt[0] - start[0]) * dy - (pt[1] - start[1]) * dx);
    const inner = (pt[0] - start[0]) * (end[0] - pt[0]) + (pt[1] - start[1]) * (end[1] - pt[1]);
    if (dist * dist <= 0.5 * eps * (dx * dx + dy * dy) && dx !== 0 && dy !== 0 && inner >= 0) {
      newCount--;
      dst[wpos] = end;
      start = end;
      if (++wpos >= count) wpos = 0;
      pt = read();
      i++;
      continue;
    }
    dst[wpos] = pt;
    start = pt;
    if (++wpos >= count) wpos = 0;
    pt = end;
  }
  return dst.slice(0, newCount);
}

// `simplify`: tolerance in pixels of each part's outline before joining (0: exact), as the server's
// YOLO writer (mobilesam.masks.DEFAULT_SIMPLIFY; the web export's manifest says which).
export function toYolo(objects, H, W, classes, simplify = 0) {
  const ids = new Map(classes.map((c, i) => [c, i]));
  const lines = [];
  for (const o of objects) {
    const polys = maskPolygons(o.mask, H, W).map((p) => simplifyPolygon(p, simplify)).filter((p) => p.length >= 3);
    if (!polys.length) continue; // an empty mask has no line (COCO keeps it)
    const ring = joinPolygons(polys);
    const xy = ring.flatMap(([x, y]) => [Math.min(1, Math.max(0, x / W)), Math.min(1, Math.max(0, y / H))]);
    lines.push(`${ids.get(o.class_name)} ` + xy.map((v) => v.toFixed(6)).join(" "));
  }
  return lines.map((l) => l + "\n").join("");
}

// -- PNG masks in a zip ------------------------------------------------------------------------------------

const CRC = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes, crc = 0) {
  let c = ~crc >>> 0;
  for (let i = 0; i < bytes.length; i++) c = CRC[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

async function zlib(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// An 8-bit greyscale PNG of the mask, 0 outside and 255 inside.
export async function maskPNG(mask, H, W) {
  const raw = new Uint8Array(H * (W + 1));
  for (let y = 0; y < H; y++) {
    raw[y * (W + 1)] = 0; // filter: none
    for (let x = 0; x < W; x++) raw[y * (W + 1) + 1 + x] = mask[y * W + x] ? 255 : 0;
  }
  const chunk = (type, data) => {
    const out = new Uint8Array(12 + data.length);
    const v = new DataView(out.buffer);
    v.setUint32(0, data.length);
    for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
    out.set(data, 8);
    v.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
    return out;
  };
  const ihdr = new Uint8Array(13);
  const v = new DataView(ihdr.buffer);
  v.setUint32(0, W);
  v.setUint32(4, H);
  ihdr.set([8, 0, 0, 0, 0], 8); // 8 bits, greyscale, deflate, no filter, no interlace
  const parts = [Uint8Array.of(137, 80, 78, 71, 13, 10, 26, 10), chunk("IHDR", ihdr), chunk("IDAT", await zlib(raw)),
    chunk("IEND", new Uint8Array(0))];
  return new Uint8Array(await new Blob(parts).arrayBuffer());
}

// A zip (stored: PNGs are compressed already) of {name, bytes} files.
export function zip(files) {
  const enc = new TextEncoder();
  const locals = [];
  const central = [];
  let offset = 0;
  for (const f of files) {
    const name = enc.encode(f.name);
    const crc = crc32(f.bytes);
    const head = new Uint8Array(30 + name.length);
    const h = new DataView(head.buffer);
    h.setUint32(0, 0x04034b50, true);
    h.setUint16(4, 20, true);
    h.setUint16(10, 0, true); // time
    h.setUint16(12, 0x21, true); // date: 1980-01-01
    h.setUint32(14, crc, true);
    h.setUint32(18, f.bytes.length, true);
    h.setUint32(22, f.bytes.length, true);
    h.setUint16(26, name.length, true);
    head.set(name, 30);
    const dir = new Uint8Array(46 + name.length);
    const d = new DataView(dir.buffer);
    d.setUint32(0, 0x02014b50, true);
    d.setUint16(4, 20, true);
    d.setUint16(6, 20, true);
    d.setUint16(14, 0x21, true);
    d.setUint32(16, crc, true);
    d.setUint32(20, f.bytes.length, true);
    d.setUint32(24, f.bytes.length, true);
    d.setUint16(28, name.length, true);
    d.setUint32(42, offset, true);
    dir.set(name, 46);
    locals.push(head, f.bytes);
    central.push(dir);
    offset += head.length + f.bytes.length;
  }
  const size = central.reduce((n, c) => n + c.length, 0);
  const end = new Uint8Array(22);
  const e = new DataView(end.buffer);
  e.setUint32(0, 0x06054b50, true);
  e.setUint16(8, files.length, true);
  e.setUint16(10, files.length, true);
  e.setUint32(12, size, true);
  e.setUint32(16, offset, true);
  return new Blob([...locals, ...central, end], { type: "application/zip" });
}

export async function toPngZip(objects, H, W, stem) {
  const files = [];
  for (let i = 0; i < objects.length; i++) {
    const o = objects[i];
    const n = String(i + 1).padStart(3, "0");
    files.push({ name: `${safeStem(stem)}_${n}_${safeStem(o.class_name)}.png`, bytes: await maskPNG(o.mask, H, W) });
  }
  return zip(files);
}
