// The prompt decoder in the browser (onnxruntime-web, WebAssembly): SAM's ONNX decoder cut before its
// upscaling runs on an image embedding loaded once per image; the one mask the server would pick is
// upscaled here with the same two bilinear resizes as the server's graph, then thresholded.
// Also the image encoder of the static page (mobilesam export --format web).
"use strict";

let ortPromise = null;

// onnxruntime-web, loaded once from the files served beside this module (no CDN).
// threads: 0 = one per core (at most 4) where the page is cross-origin isolated (SharedArrayBuffer), else 1.
export function loadOrt(threads = 0) {
  if (!ortPromise) {
    ortPromise = (async () => {
      if (typeof WebAssembly !== "object" || typeof WebAssembly.instantiate !== "function") {
        throw new Error("this browser has no WebAssembly");
      }
      const ort = await import(new URL("ort/ort.wasm.bundle.min.mjs", import.meta.url).href);
      const isolated = self.crossOriginIsolated === true;
      ort.env.wasm.numThreads = isolated ? (threads || Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
      ort.env.logLevel = "error";
      return ort;
    })();
    ortPromise.catch(() => { ortPromise = null; }); // a later call may try again
  }
  return ortPromise;
}

async function session(ort, url) {
  return ort.InferenceSession.create(url, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
}

// -- embeddings on the wire --------------------------------------------------------------------------------

let HALF = null; // float16 bits -> float32, all 65536 of them

function halfTable() {
  if (HALF) return HALF;
  HALF = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const m = h & 0x3ff;
    if (e === 0) HALF[h] = sign * m * 2 ** -24;
    else if (e === 31) HALF[h] = m ? NaN : sign * Infinity;
    else HALF[h] = sign * (1 + m / 1024) * 2 ** (e - 15);
  }
  return HALF;
}

// An embedding from the server's /embedding answer: {data: Float32Array, shape, originalSize, inputSize}.
export async function embeddingFromResponse(res) {
  const buf = await res.arrayBuffer();
  const dtype = res.headers.get("x-embedding-dtype");
  const ints = (name) => res.headers.get(name).split(",").map(Number);
  let data;
  if (dtype === "float16") {
    const table = halfTable();
    const half = new Uint16Array(buf);
    data = new Float32Array(half.length);
    for (let i = 0; i < half.length; i++) data[i] = table[half[i]];
  } else if (dtype === "float32") {
    data = new Float32Array(buf);
  } else {
    throw new Error(`embedding: unknown dtype ${dtype}`);
  }
  return { data, shape: ints("x-embedding-shape"), originalSize: ints("x-original-size"),
    inputSize: ints("x-input-size"), bytes: buf.byteLength };
}

// (h, w) of an image of (H, W) resized so its longest side is `size` (ResizeLongestSide's rounding).
export function inputSize(H, W, size) {
  const scale = size / Math.max(H, W);
  return [Math.floor(H * scale + 0.5), Math.floor(W * scale + 0.5)];
}

// -- upscaling ---------------------------------------------------------------------------------------------

// Source position of output pixel `dst` in a bilinear resize from `inLen` to `outLen` (PyTorch's
// align_corners=False rule, in float32 as the server's kernels compute it).
function source(dst, inLen, outLen) {
  const f = Math.fround;
  const s = f(f(f(inLen / outLen) * f(dst + 0.5)) - 0.5);
  return s < 0 ? 0 : s;
}

function linear(dst, inLen, outLen) {
  const s = source(dst, inLen, outLen);
  const i0 = Math.min(Math.floor(s), inLen - 1);
  const i1 = Math.min(i0 + 1, inLen - 1);
  const l = Math.fround(s - i0);
  return [i0, i1, 1 - l, l];
}

// Taps of one axis of the server's postprocessing, low-res logits (lowLen) -> resize to frame (the model's
// input size) -> keep the first `crop` -> resize to `out`: for output i, taps 4i..4i+3 (index, weight).
function axisTaps(lowLen, frame, crop, out) {
  const idx = new Int32Array(4 * out);
  const w = new Float64Array(4 * out);
  for (let o = 0; o < out; o++) {
    const [j0, j1, a0, a1] = linear(o, crop, out);
    const [k00, k01, b00, b01] = linear(j0, lowLen, frame);
    const [k10, k11, b10, b11] = linear(j1, lowLen, frame);
    idx.set([k00, k01, k10, k11], 4 * o);
    w.set([a0 * b00, a0 * b01, a1 * b10, a1 * b11], 4 * o);
  }
  return { idx, w };
}

// Mask (H*W bytes, 1 inside) of the logits `low` (lowLen x lowLen) upscaled with `taps`, and its area.
// `rows`: a Float32Array of lowLen * W to work in (kept per image: no allocation per click).
function upscale(low, lowLen, taps, H, W, threshold, rows) {
  const xi = taps.x.idx, xw = taps.x.w, yi = taps.y.idx, yw = taps.y.w;
  const last = yi[4 * H - 1]; // pass 1 (along x) for the low-res rows that pass 2 (along y) reads
  for (let r = 0; r <= last; r++) {
    const src = r * lowLen;
    const dst = r * W;
    for (let o = 0, t = 0; o < W; o++, t += 4) {
      rows[dst + o] = xw[t] * low[src + xi[t]] + xw[t + 1] * low[src + xi[t + 1]] +
        xw[t + 2] * low[src + xi[t + 2]] + xw[t + 3] * low[src + xi[t + 3]];
    }
  }
  const mask = new Uint8Array(H * W);
  let area = 0;
  for (let o = 0, t = 0; o < H; o++, t += 4) {
    const r0 = yi[t] * W, r1 = yi[t + 1] * W, r2 = yi[t + 2] * W, r3 = yi[t + 3] * W;
    const w0 = yw[t], w1 = yw[t + 1], w2 = yw[t + 2], w3 = yw[t + 3];
    const out = o * W;
    for (let c = 0; c < W; c++) {
      if (w0 * rows[r0 + c] + w1 * rows[r1 + c] + w2 * rows[r2 + c] + w3 * rows[r3 + c] > threshold) {
        mask[out + c] = 1;
        area++;
      }
    }
  }
  return { mask, area };
}

// -- the decoder -------------------------------------------------------------------------------------------

const PAD = -1, BOX_TOP_LEFT = 2, BOX_BOTTOM_RIGHT = 3;

export class BrowserDecoder {
  // meta: the server's /api/info "decoder" (or the web export's): image_size, embedding_shape,
  // mask_threshold, single_mask.
  static async create(url, meta, threads = 0) {
    const ort = await loadOrt(threads);
    return new BrowserDecoder(ort, await session(ort, url), meta);
  }

  constructor(ort, sess, meta) {
    this.ort = ort;
    this.session = sess;
    this.meta = meta;
    this.lowLen = 4 * meta.embedding_shape[2];
    this.image = null;
    this.queue = Promise.resolve(); // one run at a time: a session does not take concurrent runs
  }

  get threads() { return this.ort.env.wasm.numThreads; }

  // emb: {data: Float32Array, shape, originalSize: [H, W], inputSize: [h, w]}
  setImage(emb, key) {
    const [H, W] = emb.originalSize;
    const [h, w] = emb.inputSize;
    const S = this.meta.image_size;
    this.image = {
      key,
      H, W, h, w,
      embedding: new this.ort.Tensor("float32", emb.data, emb.shape),
      taps: { x: axisTaps(this.lowLen, S, w, W), y: axisTaps(this.lowLen, S, h, H) },
      rows: new Float32Array(this.lowLen * W),
    };
  }

  // The server's choice for one object: {points: [[x, y]...], labels, box: [x1, y1, x2, y2] | null,
  // maskInput: Float32Array (lowLen^2 logits of an earlier mask) | null, multimask: bool | null}, in
  // image pixels -> {mask, area, score, lowRes, decoderMs, upscaleMs}.
  // `key`: the image the prompts are for (as given to setImage).
  decode(prompts, key) {
    const run = this.queue.then(() => this.decodeNow(prompts, key));
    this.queue = run.catch(() => {});
    return run;
  }

  async decodeNow({ points = [], labels = [], box = null, maskInput = null, multimask = null }, key) {
    const im = this.image;
    if (!im || im.key !== key) throw new Error("decoder: this image's embedding is not loaded");
    const sx = im.w / im.W, sy = im.h / im.H;
    const coords = [];
    const labs = [];
    points.forEach(([x, y], i) => { coords.push(x * sx, y * sy); labs.push(labels[i]); });
    if (points.length && !box) { coords.push(0, 0); labs.push(PAD); } // SAM's "not a point" token
    if (box) { coords.push(box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy); labs.push(BOX_TOP_LEFT, BOX_BOTTOM_RIGHT); }
    const n = labs.length;
    const T = this.ort.Tensor;
    const L = this.lowLen;
    const feeds = {
      image_embeddings: im.embedding,
      point_coords: new T("float32", Float32Array.from(coords), [1, n, 2]),
      point_labels: new T("float32", Float32Array.from(labs), [1, n]),
      mask_input: new T("float32", maskInput || new Float32Array(L * L), [1, 1, L, L]),
      has_mask_input: new T("float32", Float32Array.of(maskInput ? 1 : 0), [1]),
    };
    const t0 = performance.now();
    const out = await this.session.run(feeds);
    const t1 = performance.now();
    const iou = out.iou_predictions.data;
    const low = out.low_res_masks.data;
    const many = multimask === null ? box === null && points.length === 1 : multimask;
    let best = 0;
    if (!this.meta.single_mask && many) {
      best = 1;
      for (let k = 2; k < iou.length; k++) if (iou[k] > iou[best]) best = k;
    }
    const lowRes = low.slice(best * L * L, (best + 1) * L * L);
    const { mask, area } = upscale(lowRes, L, im.taps, im.H, im.W, this.meta.mask_threshold, im.rows);
    for (const t of Object.values(out)) t.dispose?.();
    return { mask, area, score: iou[best], lowRes, decoderMs: t1 - t0, upscaleMs: performance.now() - t1 };
  }
}

// The image encoder of the static page: RGB (1, 3, h, w) 0-255 resized to longest side image_size ->
// embedding, with normalisation and padding inside the graph (what mobilesam export writes).
export class BrowserEncoder {
  static async create(url, meta, threads = 0) {
    const ort = await loadOrt(threads);
    return new BrowserEncoder(ort, await session(ort, url), meta);
  }

  constructor(ort, sess, meta) {
    this.ort = ort;
    this.session = sess;
    this.meta = meta;
  }

  // source: an ImageBitmap / <img> of (H, W) -> {data, shape, originalSize, inputSize, encoderMs}
  async encode(source, H, W) {
    const [h, w] = inputSize(H, W, this.meta.image_size);
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(source, 0, 0, w, h);
    const rgba = ctx.getImageData(0, 0, w, h).data;
    const planes = new Float32Array(3 * h * w);
    for (let i = 0, n = h * w; i < n; i++) {
      planes[i] = rgba[4 * i];
      planes[n + i] = rgba[4 * i + 1];
      planes[2 * n + i] = rgba[4 * i + 2];
    }
    const t0 = performance.now();
    const out = await this.session.run({ image: new this.ort.Tensor("float32", planes, [1, 3, h, w]) });
    const emb = out.image_embeddings;
    return { data: emb.data, shape: emb.dims, originalSize: [H, W], inputSize: [h, w],
      encoderMs: performance.now() - t0 };
  }
}
