// Masks decoded in the page: COCO RLE (what the server stores and exports), area, box, and the display
// bitmap. A mask is a Uint8Array of H*W bytes, row-major, 1 inside.
"use strict";

// COCO run-length encoding with pycocotools' compressed counts string (column-major runs, starting with
// a run of zeros): the very string pycocotools.mask.encode gives for the same mask.
export function encodeRLE(mask, H, W) {
  const runs = [];
  let prev = 0;
  let run = 0;
  for (let x = 0; x < W; x++) {
    for (let i = x; i < H * W; i += W) {
      const v = mask[i];
      if (v !== prev) { runs.push(run); run = 0; prev = v; }
      run++;
    }
  }
  runs.push(run);
  const codes = [];
  for (let i = 0; i < runs.length; i++) {
    let x = runs[i];
    if (i > 2) x -= runs[i - 2];
    let more = true;
    while (more) {
      let c = x & 0x1f;
      x >>= 5;
      more = c & 0x10 ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      codes.push(c + 48);
    }
  }
  let counts = "";
  for (let i = 0; i < codes.length; i += 8192) counts += String.fromCharCode(...codes.slice(i, i + 8192));
  return { size: [H, W], counts };
}

// Tight [x, y, width, height] of a mask; [0, 0, 0, 0] when empty (as the server's bbox_xywh).
export function bboxXYWH(mask, H, W) {
  let x1 = W, y1 = H, x2 = -1, y2 = -1;
  for (let y = 0; y < H; y++) {
    const row = y * W;
    for (let x = 0; x < W; x++) {
      if (mask[row + x]) {
        if (x < x1) x1 = x;
        if (x > x2) x2 = x;
        if (y < y1) y1 = y;
        y2 = y;
      }
    }
  }
  return x2 < 0 ? [0, 0, 0, 0] : [x1, y1, x2 - x1 + 1, y2 - y1 + 1];
}

// A w x h canvas whose opaque white pixels are the mask's, sampled at the nearest pixel (as drawImage
// without smoothing draws a full-size mask scaled to the display).
export function maskCanvas(mask, H, W, w, h) {
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(w, h);
  const px = new Uint32Array(img.data.buffer);
  const cols = new Int32Array(w);
  for (let x = 0; x < w; x++) cols[x] = Math.min(W - 1, Math.floor((x + 0.5) * W / w));
  for (let y = 0; y < h; y++) {
    const row = Math.min(H - 1, Math.floor((y + 0.5) * H / h)) * W;
    const out = y * w;
    for (let x = 0; x < w; x++) if (mask[row + cols[x]]) px[out + x] = 0xffffffff;
  }
  ctx.putImageData(img, 0, 0);
  return c;
}

// Float32Array <-> base64 of little-endian float32 (the server's mask_input / low_res).
export function floatsToBase64(f32) {
  const bytes = new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength);
  let s = "";
  for (let i = 0; i < bytes.length; i += 8192) s += String.fromCharCode(...bytes.subarray(i, i + 8192));
  return btoa(s);
}

export function base64ToFloats(b64) {
  const s = atob(b64);
  const bytes = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  return new Float32Array(bytes.buffer);
}
