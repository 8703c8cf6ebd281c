"""A stand-in for a trained MobileSAM, for benchmarks only (never shipped, never evidence of real accuracy).

Random weights give speckle, so segment-everything cannot be benchmarked on them. This script builds a
``vit_t`` checkpoint (official parameter names, flat state_dict, loads with ``build_sam``) that behaves
like a trained model on synthetic scenes of coloured shapes:

- the TinyViT image encoder is *set*, not trained: every residual branch is zeroed and the patch-merging
  convolutions do space-to-depth, so the 256x64x64 embedding holds the colour of each 4x4-pixel cell
  (16 cells per embedding position, the resolution of SAM's 256x256 low-res masks) -- see
  ``set_colour_encoder``. It needs no saving: it is rebuilt from this file.
- the prompt encoder and mask decoder are trained SAM-style on synthetic scenes (varied backgrounds,
  overlapping shapes, holes, small and large objects): focal + dice on the best of the 3 multimask
  outputs for point prompts, on the single output for box prompts, MSE on the predicted IoU.
- two things make that training fit in minutes on a CPU (from the official random start, decoders trained
  for 25 CPU minutes, or 970 H100 steps, stayed at "predict nothing"):
  * ``warm_start_attention``: the token<->image cross-attentions start with aligned query/key
    projections, so a prompt token attends to its own position from step 0;
  * a grid curriculum: the decoder is resolution-agnostic (positional encodings are sampled on the
    embedding grid), so most steps use a 16x16 or 32x32 embedding of a 256- or 512-pixel scene (prompt
    coordinates scaled to the 1024 frame), which is 4-16x cheaper than the real 64x64; evaluation is
    always on the real 64x64 pipeline.

Usage::

    python benchmarks/proxy.py                   # 30 + 10 CPU minutes: the proxy benchmarked in RESULTS.md
    python benchmarks/proxy.py --device cuda --out DIR --minutes 4       # a few GPU minutes

``--out`` receives the trained decoder as shards of < 15 MiB (``proxy_decoder.N.pt``) and
``proxy.json`` (settings and held-out metrics). ``proxy_checkpoint(DIR)`` assembles the full
checkpoint (``mobilesam_proxy_vit_t.pt``, under ``$MOBILESAM_HOME/proxy/``) from them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from mobilesam.modeling import Sam, build_model  # noqa: E402
from mobilesam.transforms import ResizeLongestSide, preprocess_shape  # noqa: E402

CHECKPOINT_NAME = "mobilesam_proxy_vit_t.pt"
SHARD_BYTES = 14 * 2**20
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
OFFSET = 8.0  # keeps set-encoder activations where GELU is the identity (GELU(x) = x for x > 5.5)
NECK_A = 100.0  # a large constant channel pair, so the neck's LayerNorms act as a near-constant scale
N_CELL = 48  # 16 cells x 3 colours per embedding position


def default_dir() -> Path:
    home = os.environ.get("MOBILESAM_HOME", "").strip()
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "mobilesam"
    return base / "proxy"


# ----------------------------------------------------------------------------- the set encoder


def _bn_identity(bn: torch.nn.BatchNorm2d, bias: torch.Tensor | None = None) -> None:
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)
    bn.weight.fill_(math.sqrt(1.0 + bn.eps))
    bn.bias.zero_()
    if bias is not None:
        bn.bias.copy_(bias)


def _cell_channel(big: int, small: int, colour: int) -> int:
    """Channel of the colour of cell (sy, sx) = (2*DY + dy, 2*DX + dx), big = 2*DY + DX, small = 2*dy + dx."""
    return 12 * big + 3 * small + colour


@torch.no_grad()
def set_colour_encoder(sam: Sam) -> Sam:
    """Set the TinyViT weights so the embedding holds the colour of every 4x4-pixel cell (see module doc)."""
    enc = sam.image_encoder
    for p in enc.parameters():
        p.zero_()
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            _bn_identity(m)
        if isinstance(m, torch.nn.LayerNorm):
            m.weight.fill_(1.0)
    const = 3  # channel holding OFFSET everywhere, used to remove the offset at the neck

    # Patch embedding: two stride-2 convolutions, each averaging 2x2 pixels -> 4x4-pixel cell colours.
    c0, c1 = enc.patch_embed.seq[0], enc.patch_embed.seq[2]
    for c in range(3):
        c0.c.weight[c, c, 1:3, 1:3] = 0.25
        c1.c.weight[c, c, 1:3, 1:3] = 0.25
    c1.c.weight[const, const, 1, 1] = 1.0
    b0 = torch.zeros(c0.c.out_channels)
    b0[:4] = OFFSET
    _bn_identity(c0.bn, b0)

    # Residual branches contribute nothing; TinyViT's local convolution becomes the identity.
    for layer in enc.layers:
        for blk in layer.blocks:
            if hasattr(blk, "local_conv"):
                blk.local_conv.c.weight[:, 0, 1, 1] = 1.0

    def merge(pm: torch.nn.Module, n_in: int, stride: int) -> int:
        """Space-to-depth in a PatchMerging: 1x1 copies, depthwise picks one of the 2x2 positions."""
        w1, w2, w3 = pm.conv1.c.weight, pm.conv2.c.weight, pm.conv3.c.weight
        n_col = n_in - 1  # the last input channel is the constant one
        copies = 4 if stride == 2 else 1
        for k in range(copies):
            dy, dx = divmod(k, 2)
            for j in range(n_col):
                o = k * n_col + j
                w1[o, j, 0, 0] = 1.0
                if stride == 2:
                    w2[o, 0, 1 + dy, 1 + dx] = 1.0
                else:
                    w2[o, 0, 1, 1] = 1.0
                w3[o, o, 0, 0] = 1.0
        oc = copies * n_col
        w1[oc, n_in - 1, 0, 0] = 1.0
        w2[oc, 0, 1, 1] = 1.0
        w3[oc, oc, 0, 0] = 1.0
        return oc + 1

    # Channels: 3 colours + const at 256x256 -> 12 + const at 128x128 -> 48 + const at 64x64 (x2 stride 1).
    pe_out = 4
    assert const == pe_out - 1
    n = merge(enc.layers[0].downsample, pe_out, 2)
    n = merge(enc.layers[1].downsample, n, 2)
    n = merge(enc.layers[2].downsample, n, 1)
    assert n == N_CELL + 1
    # Neck: [f, -f, A, -A] with the offset removed; the ± pairs keep the LayerNorm mean at 0.
    w = enc.neck[0].weight
    for j in range(N_CELL):
        w[j, j, 0, 0] = 1.0
        w[j, N_CELL, 0, 0] = -1.0
        w[N_CELL + j, j, 0, 0] = -1.0
        w[N_CELL + j, N_CELL, 0, 0] = 1.0
    w[2 * N_CELL, N_CELL, 0, 0] = NECK_A / OFFSET
    w[2 * N_CELL + 1, N_CELL, 0, 0] = -NECK_A / OFFSET
    enc.neck[1].weight.fill_(1.0)
    for j in range(2 * N_CELL + 2):
        enc.neck[2].weight[j, j, 1, 1] = 1.0
    scale = NECK_A * math.sqrt(2.0 / enc.neck[3].weight.numel())
    enc.neck[3].weight.fill_(0.0)
    enc.neck[3].weight[: 2 * N_CELL] = scale
    enc.neck[3].weight[2 * N_CELL : 2 * N_CELL + 2] = 0.1
    return sam


def colour_cells(image: np.ndarray, target: int = 1024) -> np.ndarray:
    """Normalised colour of every 4x4-pixel cell of the resized, padded image, as the set encoder sees
    it: HxWx3 uint8 RGB -> (48, 64, 64) float32, channel = 12 * big + 3 * small + colour."""
    resized = ResizeLongestSide(target).apply_image(image).astype(np.float32)
    x = (resized - PIXEL_MEAN) / PIXEL_STD
    pad = np.zeros((target, target, 3), np.float32)
    pad[: x.shape[0], : x.shape[1]] = x
    cells = pad.reshape(target // 4, 4, target // 4, 4, 3).mean(axis=(1, 3))  # (256, 256, 3)
    g = target // 16
    # (Y, DY, dy, X, DX, dx, c) -> (DY, DX, dy, dx, c, Y, X)
    c6 = cells.reshape(g, 2, 2, g, 2, 2, 3).transpose(1, 4, 2, 5, 6, 0, 3)
    return np.ascontiguousarray(c6.reshape(N_CELL, g, g))


def cells_to_embedding(cells: torch.Tensor, sam: torch.nn.Module) -> torch.Tensor:
    """The set encoder's neck applied to colour cells: (B, 48, 64, 64) -> (B, 256, 64, 64)."""
    b, _, h, w = cells.shape
    c = sam.image_encoder.neck[3].weight.numel()
    const = cells.new_full((b, 1, h, w), NECK_A)
    x = torch.cat([cells, -cells, const, -const, cells.new_zeros(b, c - 2 * N_CELL - 2, h, w)], dim=1)
    for ln in (sam.image_encoder.neck[1], sam.image_encoder.neck[3]):
        x = ln(x)
    return x


# ----------------------------------------------------------------------------- synthetic scenes

SCENE_SIZES = ((480, 640), (640, 480), (512, 512))


def _distinct_colour(rng: np.random.Generator, used: list[np.ndarray], min_dist: float) -> np.ndarray:
    best, best_d = None, -1.0
    for _ in range(60):
        c = rng.integers(0, 256, 3).astype(np.float32)
        d = min((float(np.linalg.norm(c - u)) for u in used), default=1e9)
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = rng.integers(0, 3)
    c1 = rng.integers(0, 256, 3).astype(np.float32)
    if kind == 0:  # flat
        bg = np.broadcast_to(c1, (h, w, 3)).copy()
    elif kind == 1:  # gradient between two colours
        c2 = np.clip(c1 + rng.normal(0, 60, 3), 0, 255)
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (np.cos(ang) * xx / w + np.sin(ang) * yy / h)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        bg = c1 * (1 - t[..., None]) + c2 * t[..., None]
    else:  # low-frequency texture
        small = rng.normal(0, 35, (4, 5, 3)).astype(np.float32)
        bg = c1 + cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return bg


def _shape_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    short = min(h, w)
    r = float(np.exp(rng.uniform(np.log(12), np.log(0.3 * short))))
    cx, cy = int(rng.uniform(0, w)), int(rng.uniform(0, h))
    kind = rng.integers(0, 5)
    if kind == 0:
        cv2.circle(m, (cx, cy), int(r), 1, -1)
    elif kind == 1:
        axes = (int(r), int(r * rng.uniform(0.4, 1.0)))
        cv2.ellipse(m, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == 2:
        box = ((cx, cy), (2 * r, 2 * r * rng.uniform(0.3, 1.0)), float(rng.uniform(0, 180)))
        cv2.fillPoly(m, [cv2.boxPoints(box).astype(np.int32)], 1)
    elif kind == 3:
        n = rng.integers(3, 8)
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = r * rng.uniform(0.5, 1.0, n)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
        cv2.fillPoly(m, [pts], 1)
    else:  # ring: a shape with a hole
        r = max(r, 18.0)
        cv2.circle(m, (cx, cy), int(r), 1, -1)
        cv2.circle(m, (cx, cy), int(r * rng.uniform(0.35, 0.65)), 0, -1)
    return m.astype(bool)


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    labels: np.ndarray  # (H, W) int16: 0 background, i >= 1 instance i (visible part)
    n_instances: int

    def instance_masks(self) -> list[np.ndarray]:
        return [self.labels == i for i in range(1, self.n_instances + 1)]


def make_scene(seed: int, size: tuple[int, int] | None = None, min_area: int = 150) -> Scene:
    """A synthetic scene: a background and 4-14 overlapping shapes of distinct colours."""
    rng = np.random.default_rng(seed)
    h, w = size or SCENE_SIZES[rng.integers(0, len(SCENE_SIZES))]
    bg = _background(rng, h, w)
    img = bg.copy()
    labels = np.zeros((h, w), np.int16)
    used = [bg.reshape(-1, 3).mean(0)]
    n = int(rng.integers(4, 15))
    for i in range(1, n + 1):
        m = _shape_mask(rng, h, w)
        colour = _distinct_colour(rng, used, 90.0)
        used.append(colour)
        shade = rng.normal(0, 12, 3).astype(np.float32)
        yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None, None]
        img[m] = np.broadcast_to(colour + shade * yy, (h, w, 3))[m]
        labels[m] = i
    img = img + rng.normal(0, 4, img.shape).astype(np.float32)
    image = np.clip(img, 0, 255).astype(np.uint8)
    return Scene(image, *visible_instances(labels, n, min_area))


def visible_instances(labels: np.ndarray, n: int, min_area: int) -> tuple[np.ndarray, int]:
    """The label map with instances 1..n whose visible part has at least ``min_area`` pixels, renumbered
    1..K (the rest set to 0), and K."""
    out = np.zeros_like(labels)
    k = 0
    for i in range(1, n + 1):
        m = labels == i
        if m.sum() >= min_area:
            k += 1
            out[m] = k
    return out, k


@dataclass
class TrainScene:
    cells: np.ndarray  # (48, G, G) float16
    low: np.ndarray  # (4G, 4G) uint8 label at low-res cell centres; 255 = padding
    order: np.ndarray  # flat low-res cell indices sorted by label
    starts: np.ndarray  # (L + 1,) where each label's cells start in ``order``
    boxes: np.ndarray  # (L, 4) XYXY box of each label in the 16G frame


def prepare_train_scene(seed: int, grid: int = 64) -> TrainScene:
    """A scene as the decoder sees it with a ``grid`` x ``grid`` embedding: the image resized to a
    ``16 * grid`` frame (1024 for the real 64x64 embedding), labels at the ``4 * grid`` low-res mask size."""
    scene = make_scene(seed)
    h, w = scene.labels.shape
    frame, side = 16 * grid, 4 * grid
    rh, rw = preprocess_shape(h, w, frame)
    lh, lw = int(math.ceil(rh / 4)), int(math.ceil(rw / 4))
    low = np.full((side, side), 255, np.uint8)
    low[:lh, :lw] = cv2.resize(scene.labels.astype(np.uint8), (lw, lh), interpolation=cv2.INTER_NEAREST)
    flat = low.ravel()
    n_labels = scene.n_instances + 1
    order = np.argsort(flat, kind="stable").astype(np.int32)
    starts = np.searchsorted(flat[order], np.arange(n_labels + 1)).astype(np.int32)
    boxes = np.zeros((n_labels, 4), np.float32)
    for lab in range(n_labels):
        ys, xs = np.divmod(order[starts[lab] : starts[lab + 1]], side)
        if len(ys):
            boxes[lab] = [xs.min() * 4, ys.min() * 4, (xs.max() + 1) * 4, (ys.max() + 1) * 4]
    return TrainScene(colour_cells(scene.image, frame).astype(np.float16), low, order, starts, boxes)


def build_pool(seeds: list[int], grid: int, workers: int) -> list[TrainScene]:
    if workers <= 1:
        return [prepare_train_scene(s, grid) for s in seeds]
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    with ProcessPoolExecutor(workers) as ex:
        return list(ex.map(partial(prepare_train_scene, grid=grid), seeds, chunksize=8))


# ----------------------------------------------------------------------------- training


def sample_prompts(pool: list[TrainScene], idx: np.ndarray, n_prompts: int, box_frac: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n_prompts`` targets in each scene of ``idx``: scene index, point (x, y) in the scene's frame, box
    XYXY (jittered), whether the box is the prompt, and the target label (0 = background, 12%)."""
    out = {k: [] for k in ("scene", "point", "box", "is_box", "label")}
    for si in idx:
        sc = pool[si]
        counts = np.diff(sc.starts)
        inst = np.nonzero(counts[1:])[0] + 1
        labels = rng.choice(inst, n_prompts) if len(inst) else np.zeros(n_prompts, np.int64)
        if counts[0]:
            labels = np.where(rng.random(n_prompts) < 0.12, 0, labels)
        cell = sc.order[sc.starts[labels] + (rng.random(n_prompts) * counts[labels]).astype(np.int64)]
        ys, xs = np.divmod(cell, sc.low.shape[1])
        pts = np.stack([xs + rng.random(n_prompts), ys + rng.random(n_prompts)], 1) * 4.0
        box = sc.boxes[labels]
        wh = np.concatenate([box[:, 2:] - box[:, :2]] * 2, 1)
        box = np.clip(box + 0.05 * wh * rng.normal(0, 1, box.shape), 0, 4 * sc.low.shape[1] - 1)
        box[:, 2:] = np.maximum(box[:, 2:], box[:, :2] + 1)
        out["scene"].append(np.full(n_prompts, si))
        out["point"].append(pts)
        out["box"].append(box)
        out["is_box"].append((labels > 0) & (rng.random(n_prompts) < box_frac))
        out["label"].append(labels)
    s, p, b, ib, lab = (np.concatenate(out[k]) for k in ("scene", "point", "box", "is_box", "label"))
    return s, p.astype(np.float32), b.astype(np.float32), ib, lab


def predict_masks(dec: torch.nn.Module, emb: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                  dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``MaskDecoder.predict_masks`` with one image embedding per prompt (B, C, H, W)."""
    b, c, h, w = emb.shape
    output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
    hs, src = dec.transformer(emb + dense, image_pe.expand(b, -1, -1, -1), tokens)
    upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1)
    _, c2, h2, w2 = upscaled.shape
    masks = (hyper_in @ upscaled.reshape(b, c2, h2 * w2)).reshape(b, -1, h2, w2)
    return masks, dec.iou_prediction_head(hs[:, 0])


def decode(sam: torch.nn.Module, emb: torch.Tensor, points: torch.Tensor, boxes: torch.Tensor,
           is_box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All 4 mask outputs (B, 4, 4G, 4G) and IoU predictions (B, 4) for per-prompt embeddings (B, C, G, G):
    a point prompt, or a box prompt where ``is_box``; coordinates in the ``16 * G`` frame.

    A G x G embedding stands for a 1024 frame seen more coarsely: prompts are scaled to 1024 and the dense
    positional encoding is sampled on the G x G grid, so a decoder trained at G = 32 (4x cheaper) runs
    unchanged on the real 64 x 64 embedding."""
    pe = sam.prompt_encoder
    b, _, gh, gw = emb.shape
    scale = 1024.0 / (16 * gw)
    labels = torch.ones(b, 1, dtype=torch.int, device=emb.device)
    sp_pt, _ = pe(points=(points[:, None] * scale, labels), boxes=None, masks=None)
    sp_box, _ = pe(points=None, boxes=boxes * scale, masks=None)
    sparse = torch.where(is_box[:, None, None], sp_box, sp_pt)
    dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, gh, gw)
    image_pe = pe.pe_layer((gh, gw)).unsqueeze(0)
    return predict_masks(sam.mask_decoder, emb, image_pe, sparse, dense)


def mask_losses(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mask 20*focal + dice (B, K) and the actual IoU of the thresholded masks (B, K).

    logits (B, K, 256, 256), target and valid (B, 1, 256, 256)."""
    logits = logits.float()
    t = target.float()
    v = valid.float()
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, t.expand_as(logits), reduction="none")
    pt = p * t + (1 - p) * (1 - t)
    alpha = 0.25 * t + 0.75 * (1 - t)
    focal = (alpha * ce * (1 - pt) ** 2 * v).sum((2, 3)) / v.sum((2, 3))
    inter = (p * t * v).sum((2, 3))
    dice = 1 - (2 * inter + 1) / ((p * v).sum((2, 3)) + (t * v).sum((2, 3)) + 1)
    hard = (logits > 0).float() * v
    iou = (hard * t).sum((2, 3)) / ((hard + t * v) > 0).float().sum((2, 3)).clamp(min=1)
    return 20 * focal + dice, iou.detach()


@torch.no_grad()
def warm_start_attention(sam: torch.nn.Module, alpha: float, seed: int) -> None:
    """Start every token<->image cross-attention with one shared orthonormal query/key projection
    (scaled by ``alpha``), so from step 0 a prompt token's query matches the image keys at its own
    position (their positional encodings agree) and gathers the colour there. From a random start the
    decoder needs thousands of steps to discover this; everything is trained from here on."""
    gen = torch.Generator().manual_seed(seed)
    tr = sam.mask_decoder.transformer
    attns = [blk.cross_attn_token_to_image for blk in tr.layers]
    attns += [blk.cross_attn_image_to_token for blk in tr.layers] + [tr.final_attn_token_to_image]
    for att in attns:
        w = torch.linalg.qr(torch.randn(att.q_proj.in_features, att.q_proj.out_features, generator=gen))[0].T
        for proj in (att.q_proj, att.k_proj):
            proj.weight.copy_(alpha * w)
            proj.bias.zero_()


def train(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False  # keeps the set encoder's colour arithmetic exact
    t0 = time.time()
    # Scenes first: worker processes are forked before CUDA is initialised.
    seeds = list(range(args.seed * 1_000_000, args.seed * 1_000_000 + args.scenes))
    pools = {g: build_pool(seeds, g, args.workers) for g in args.grid}
    # Trained through the official modules (plain PyTorch, autograd-safe); the weights are the same.
    sam = to_official(set_colour_encoder(build_model("vit_t")), device)
    print(f"set encoder vs colour-cell shortcut: max difference {check_encoder(sam, device):.2e}", flush=True)
    if args.resume:
        sam.load_state_dict(load_proxy(args.resume).state_dict(), strict=True)
    elif args.warm_start:
        warm_start_attention(sam, args.warm_start, args.seed)
    stacked = {
        g: (torch.from_numpy(np.stack([s.cells for s in pool])).to(device),
            torch.from_numpy(np.stack([s.low for s in pool]).astype(np.int16)).to(device))
        for g, pool in pools.items()
    }
    print(f"pools: {len(seeds)} scenes at grid {args.grid} in {time.time() - t0:.1f}s", flush=True)

    params = []
    for name, p in sam.named_parameters():
        if name.startswith("image_encoder"):
            p.requires_grad_(False)
        else:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    base = [g["lr"] for g in opt.param_groups]
    sam.prompt_encoder.train()
    sam.mask_decoder.train()
    amp = args.amp == "on" or (args.amp == "auto" and device.type == "cuda")
    budget = args.minutes * 60.0
    t_start, step, log = time.time(), 0, []
    last_save = t_start
    while True:
        progress = (time.time() - t_start) / budget
        if progress >= 1.0 or (args.steps and step >= args.steps):
            break
        warm = min(1.0, (step + 1) / args.warmup)
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
        # Grid curriculum: the stages share the time budget equally, coarse (cheap) embeddings first.
        grid = args.grid[min(int(progress * len(args.grid)), len(args.grid) - 1)]
        pool, (cells, lows) = pools[grid], stacked[grid]
        idx = rng.integers(0, len(pool), args.scenes_per_step)
        box_frac = args.box_frac * min(1.0, 2 * progress)  # curriculum: points first, then boxes too
        scene_of, pts, boxes, is_box, targets = sample_prompts(pool, idx, args.prompts_per_scene, box_frac, rng)
        scene_t = torch.as_tensor(scene_of, device=device)
        emb = cells_to_embedding(cells[scene_t].float(), sam)
        low = lows[scene_t][:, None]
        target = low == torch.as_tensor(targets, device=device)[:, None, None, None]
        valid = low != 255
        is_box_t = torch.as_tensor(is_box, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            masks, iou_pred = decode(sam, emb, torch.as_tensor(pts, device=device),
                                     torch.as_tensor(boxes, device=device), is_box_t)
        loss_all, iou_all = mask_losses(masks, target, valid)  # (B, 4)
        multi = loss_all[:, 1:]
        best = multi.argmin(1)
        point_loss = multi.gather(1, best[:, None])[:, 0]
        mask_loss = torch.where(is_box_t, loss_all[:, 0], point_loss).mean()
        iou_pred = iou_pred.float()
        iou_err = torch.where(is_box_t[:, None], (iou_pred[:, :1] - iou_all[:, :1]) ** 2,
                              (iou_pred[:, 1:] - iou_all[:, 1:]) ** 2).mean()
        loss = mask_loss + iou_err
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % args.log_every == 0 or step == 1:
            best_iou = iou_all[:, 1:].gather(1, best[:, None]).mean().item()
            rec = dict(step=step, t=round(time.time() - t_start, 1), grid=grid, loss=round(loss.item(), 4),
                       iou=round(best_iou, 3), iou_mse=round(iou_err.item(), 4))
            log.append(rec)
            print(json.dumps(rec), flush=True)
        if args.save_every and time.time() - last_save > args.save_every:
            # A snapshot, so a run stopped by a time limit still leaves usable weights.
            save_shards(sam, Path(args.out), {"partial": True, "steps": step, "log": log[-3:]})
            last_save = time.time()
    sam.eval()
    return {"sam": sam, "steps": step, "train_seconds": round(time.time() - t_start, 1), "log": log[-5:]}


@torch.no_grad()
def check_encoder(sam: torch.nn.Module, device: torch.device) -> float:
    """The set TinyViT and the shortcut used in training must give the same embedding."""
    scene = make_scene(123, (240, 320))
    resized = ResizeLongestSide(1024).apply_image(scene.image)
    x = torch.as_tensor(resized, device=device).permute(2, 0, 1)[None].float()
    full = sam.image_encoder(sam.preprocess(x))
    short = cells_to_embedding(torch.as_tensor(colour_cells(scene.image), device=device)[None], sam)
    err = (full - short).abs().max().item()
    if err > 0.1:
        raise RuntimeError(f"set encoder and colour-cell shortcut differ by {err}")
    return err


# ----------------------------------------------------------------------------- evaluation


def interior_point(mask: np.ndarray) -> tuple[float, float]:
    """The point farthest from the mask's boundary, (x, y) in pixels."""
    dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    return float(x), float(y)


def eval_scene_seeds(n: int) -> list[int]:
    return [987_000_000 + i for i in range(n)]


@torch.no_grad()
def point_miou(sam: torch.nn.Module, seeds: list[int], device: torch.device) -> dict:
    """Single-point mIoU on held-out scenes: the interior-most point of each instance, the multimask
    output with the highest predicted IoU, at full resolution."""
    ious, box_ious = [], []
    for seed in seeds:
        sc = make_scene(seed)
        h, w = sc.labels.shape
        emb = cells_to_embedding(torch.as_tensor(colour_cells(sc.image), device=device)[None], sam)
        masks = sc.instance_masks()
        if not masks:
            continue
        tr = ResizeLongestSide(1024)
        pts = np.array([interior_point(m) for m in masks])
        pts_t = torch.as_tensor(tr.apply_coords(pts, (h, w)), dtype=torch.float, device=device)
        ys = [np.nonzero(m) for m in masks]
        boxes = np.array([[x.min(), y.min(), x.max(), y.max()] for y, x in ys], np.float32)
        box_t = torch.as_tensor(tr.apply_boxes(boxes, (h, w)), dtype=torch.float, device=device)
        b = len(masks)
        for use_box in (False, True):
            lows, iou = decode(sam, emb.expand(b, -1, -1, -1), pts_t, box_t,
                               torch.full((b,), use_box, device=device))
            if use_box:
                sel = lows[:, 0]
            else:
                sel = lows[torch.arange(b), 1 + iou[:, 1:].argmax(1)]
            rh, rw = preprocess_shape(h, w, 1024)
            full = sam.postprocess_masks(sel[:, None].float(), (rh, rw), (h, w))[:, 0] > 0
            gt = torch.as_tensor(np.stack(masks), device=device)
            inter = (full & gt).sum((1, 2)).float()
            union = (full | gt).sum((1, 2)).float().clamp(min=1)
            (box_ious if use_box else ious).extend((inter / union).tolist())
    return {"point_miou": round(float(np.mean(ious)), 4), "box_miou": round(float(np.mean(box_ious)), 4),
            "instances": len(ious)}


def recall(pred: list[np.ndarray], gt: list[np.ndarray], thresh: float = 0.5) -> float:
    """Fraction of ground-truth masks matched by some predicted mask with IoU >= thresh."""
    if not gt:
        return 1.0
    if not pred:
        return 0.0
    g = np.stack(gt).reshape(len(gt), -1).astype(np.float32)
    p = np.stack(pred).reshape(len(pred), -1).astype(np.float32)
    inter = g @ p.T
    union = g.sum(1)[:, None] + p.sum(1)[None, :] - inter
    return float(((inter / np.maximum(union, 1)).max(1) >= thresh).mean())


@torch.no_grad()
def generator_recall(sam: torch.nn.Module, seeds: list[int]) -> dict:
    """Ground-truth recall (IoU >= 0.5) of the official generator at default settings."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam import SamAutomaticMaskGenerator
    gen = SamAutomaticMaskGenerator(sam)
    recalls, counts = [], []
    for seed in seeds:
        sc = make_scene(seed)
        recs = gen.generate(sc.image)
        recalls.append(recall([r["segmentation"] for r in recs], sc.instance_masks()))
        counts.append(len(recs))
    return {"generator_recall": round(float(np.mean(recalls)), 4), "generator_masks": float(np.mean(counts))}


def to_official(sam: torch.nn.Module, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The official ``mobile_sam`` model with the same weights, on ``device``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam import sam_model_registry
    ref = sam_model_registry["vit_t"]()
    ref.load_state_dict(sam.state_dict(), strict=True)
    ref.to(device)
    # The official TinyViT caches its attention biases (a plain attribute, which .to() does not move)
    # when switched to eval: switch after moving.
    ref.train()
    return ref.eval()


# ----------------------------------------------------------------------------- saving and loading


def save_shards(sam: torch.nn.Module, out: Path, meta: dict) -> list[Path]:
    """The trained prompt encoder and mask decoder as torch shards of < 15 MiB, plus proxy.json."""
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().float().contiguous() for k, v in sam.state_dict().items()
          if not k.startswith("image_encoder.")}
    ours = set_colour_encoder(build_model("vit_t"))
    ours.load_state_dict(dict(ours.state_dict(), **sd), strict=True)  # the official format, checked
    shards: list[dict] = [{}]
    size = 0
    for k, v in sd.items():
        nbytes = v.numel() * v.element_size()
        if size + nbytes > SHARD_BYTES and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    paths = []
    for i, shard in enumerate(shards):
        path = out / f"proxy_decoder.{i}.pt"
        _atomic_save(shard, path)
        paths.append(path)
    meta = dict(meta, shards=[p.name for p in paths])
    tmp = out / "proxy.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out / "proxy.json")
    return paths


def _atomic_save(obj: object, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_proxy(directory: str | os.PathLike | None = None, device: str = "cpu") -> Sam:
    """The proxy model from its shards (the encoder is rebuilt, not loaded)."""
    d = Path(directory) if directory else default_dir()
    meta = json.loads((d / "proxy.json").read_text())
    sam = set_colour_encoder(build_model("vit_t"))
    sd = sam.state_dict()
    for name in meta["shards"]:
        sd.update(torch.load(d / name, map_location="cpu", weights_only=True))
    sam.load_state_dict(sd, strict=True)
    return sam.eval().to(device)


def proxy_checkpoint(directory: str | os.PathLike | None = None, rebuild_minutes: float = 0.0,
                     device: str = "cpu") -> Path:
    """Path of the assembled proxy checkpoint (flat official state_dict, ``$MOBILESAM_HOME/proxy/``),
    assembled from the shards in ``directory`` when needed; with ``rebuild_minutes`` > 0 a missing
    proxy is trained first."""
    d = Path(directory) if directory else default_dir()
    meta = d / "proxy.json"
    if not meta.exists():
        if rebuild_minutes <= 0:
            raise FileNotFoundError(
                f"proxy: no trained proxy in '{d}'; run python benchmarks/proxy.py --out {d} first")
        fine = 0.0 if device.startswith("cuda") else rebuild_minutes / 4
        main(["--out", str(d), "--minutes", str(rebuild_minutes - fine), "--finetune-minutes", str(fine),
              "--device", device])
    ckpt = default_dir() / CHECKPOINT_NAME
    source = ckpt.with_suffix(".source")
    key = f"{meta.resolve()} {meta.stat().st_mtime_ns}"
    if not ckpt.exists() or not source.exists() or source.read_text() != key:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save(load_proxy(d).state_dict(), ckpt)
        source.write_text(key)
    return ckpt


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cpu; default: %(default)s")
    ap.add_argument("--out", default=None, help="folder for the shards and proxy.json (default $MOBILESAM_HOME/proxy)")
    ap.add_argument("--minutes", type=float, default=30.0, help="training time budget; default: %(default)s")
    ap.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: time budget only)")
    ap.add_argument("--scenes", type=int, default=None, help="training scenes (default 3000 on cuda, 48 on cpu)")
    ap.add_argument("--scenes-per-step", type=int, default=None, help="scenes per step (default 16 cuda, 2 cpu)")
    ap.add_argument("--prompts-per-scene", type=int, default=None, help="prompts per scene (default 12 cuda, 4 cpu)")
    ap.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate; default: %(default)s")
    ap.add_argument("--grid", default=None,
                    help="embedding sizes G used in training, coarse to fine, comma-separated (scenes in a 16G "
                         "frame; the stages share the time): default 64 on cuda, 16,32 on cpu")
    ap.add_argument("--finetune-minutes", type=float, default=None,
                    help="then train this long at the real 64x64 grid (lr / 3; default 10 on cpu, 0 on cuda)")
    ap.add_argument("--resume", default=None,
                    help="continue from the proxy in this folder (e.g. a short fine-tune at --grid 64)")
    ap.add_argument("--warm-start", type=float, default=1.5,
                    help="scale of the aligned cross-attention start (0: official random init); default: %(default)s")
    ap.add_argument("--warmup", type=int, default=50, help="linear warm-up steps; default: %(default)s")
    ap.add_argument("--box-frac", type=float, default=0.25, help="final fraction of box prompts; default: %(default)s")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="scene-building processes")
    ap.add_argument("--eval-scenes", type=int, default=None,
                    help="held-out scenes for point mIoU (default 100 cuda, 8 cpu)")
    ap.add_argument("--generator-scenes", type=int, default=None,
                    help="held-out scenes for the official generator's recall (default 6 cuda, 0 cpu)")
    ap.add_argument("--log-every", type=int, default=50, help="steps between log lines; default: %(default)s")
    ap.add_argument("--amp", choices=("auto", "on", "off"), default="auto", help="bfloat16 autocast (auto: on cuda)")
    ap.add_argument("--save-every", type=float, default=60.0,
                    help="seconds between snapshots of the weights (0: off); default: %(default)s")
    ap.add_argument("--seed", type=int, default=1, help="seed of the training scenes and initialisation")
    args = ap.parse_args(argv)
    args.out = str(Path(args.out) if args.out else default_dir())
    cuda = args.device.startswith("cuda")
    if args.finetune_minutes is None:
        args.finetune_minutes = 0.0 if cuda else 10.0
    args.grid = [int(g) for g in (args.grid or ("64" if cuda else "16,32")).split(",")]
    args.scenes = args.scenes or (3000 if cuda else 1000)
    args.scenes_per_step = args.scenes_per_step or (16 if cuda else 8)
    args.prompts_per_scene = args.prompts_per_scene or (12 if cuda else 4)
    args.eval_scenes = args.eval_scenes if args.eval_scenes is not None else (100 if cuda else 8)
    args.generator_scenes = args.generator_scenes if args.generator_scenes is not None else (6 if cuda else 0)
    if not cuda:
        args.log_every = min(args.log_every, 5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    t0 = time.time()
    result = train(args)
    if args.finetune_minutes > 0:
        # Stage 2: the real 64x64 grid, briefly, mainly to calibrate the predicted IoU at the resolution
        # the generator filters on (trained on coarse grids it is about 0.02 too low).
        first = out / "stage1"
        save_shards(result.pop("sam"), first, {"stage": 1, "steps": result["steps"]})
        fine = argparse.Namespace(**vars(args))
        fine.resume, fine.grid, fine.minutes, fine.lr, fine.warmup = str(first), [64], args.finetune_minutes, args.lr / 3, 10
        fine.scenes, fine.scenes_per_step, fine.prompts_per_scene = min(args.scenes, 400), 4, 4
        second = train(fine)
        result = dict(second, stage1_steps=result["steps"], stage1_seconds=result["train_seconds"])
    sam = result.pop("sam")
    device = torch.device(args.device)
    meta = {k: v for k, v in vars(args).items() if k != "out"}
    meta.update(result)
    meta.update(point_miou(sam, eval_scene_seeds(args.eval_scenes), device))
    print(json.dumps({k: meta[k] for k in ("point_miou", "box_miou", "instances")}), flush=True)
    save_shards(sam, out, meta)  # saved before the slower generator check, so a timeout keeps the weights
    if args.generator_scenes:
        meta.update(generator_recall(sam, eval_scene_seeds(args.generator_scenes)))
        save_shards(sam, out, meta)
    meta["total_seconds"] = round(time.time() - t0, 1)
    save_shards(sam, out, meta)
    print(json.dumps({k: v for k, v in meta.items() if k != "log"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
