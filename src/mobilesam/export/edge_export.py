"""The shared driver of the phone and edge-board exporters: ExecuTorch (``.pte``), LiteRT (``.tflite``)
and Core ML (``.mlpackage``).

Each format is an :class:`EdgeRuntime`: how to convert one graph of :mod:`.edge_graphs` to its file (in
fp32 and in its reduced precision), how to run that file in its desktop runtime (or, for Core ML on
Linux, how to validate it without running it) and which package versions it used. Everything else is
written once, here: the model's graphs, PyTorch's reference outputs, the check of every converted file
against them, the mask IoU of the reduced-precision files against fp32, the manifest and the atomic
publication of the folder. An fp32 file that differs from PyTorch, or a reduced-precision pair whose
masks fall below :data:`MIN_MASK_IOU` of fp32's, makes the export fail (with ``check``, the default)
and nothing is written.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..masks import mask_iou
from ..modeling import Sam
from .edge_graphs import DEFAULT_MAX_POINTS, LABEL_PAD, LABEL_UNUSED, EdgeGraphs, GraphPart, edge_graphs
from .manifest import MANIFEST_NAME, ExportError, sha256_file, write_json_atomic

FORMAT_VERSION = 1
PARTS = ("encoder", "decoder")
EMB_RTOL = 1e-4  # fp32 embedding: max abs difference relative to its max abs value (as the ONNX export)
LOGIT_ATOL = 1e-3  # fp32 decoder: low-res logits and IoU predictions
MIN_MASK_IOU = 0.95  # reduced precision: the least mean mask IoU against fp32 a variant may have
GATE_GRID = 4  # the gate's clicks per check image: a 4 x 4 grid (as the OpenVINO int8 gate)

Runner = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class EdgeRuntime:
    """One edge format.

    ``convert(part, path, precision)`` writes ``part`` (a :class:`GraphPart`) to ``path`` in ``precision``
    ("fp32" or one of ``precisions``). ``load(path, part)`` returns a runner (inputs in the graph's order
    -> outputs in order), or None where the format cannot run on this machine; then ``validate(path,
    part)`` checks the file as far as possible and returns what it checked. ``versions()`` names the
    packages that converted it.
    """

    name: str  # the export format name: "executorch", "tflite", "coreml"
    title: str
    suffix: str  # file suffix, with the dot
    precisions: tuple[str, ...]  # reduced precisions it offers, e.g. ("int8",)
    convert: Callable[[GraphPart, Path, str], None]
    load: Callable[[Path, GraphPart], Runner | None]
    versions: Callable[[], dict[str, str]]
    validate: Callable[[Path, GraphPart], dict[str, Any]] | None = None
    backend: str = ""  # the backend that runs the folder ("" for none on this platform)
    reduced_parts: tuple[str, ...] = ("encoder", "decoder")  # the graphs it writes in reduced precision
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def manifest_format(self) -> str:
        return f"mobilesam-{self.name}"


def file_key(part: str, precision: str) -> str:
    """Manifest key of a file: "encoder", "decoder_int8", ..."""
    return part if precision == "fp32" else f"{part}_{precision}"


def path_digest(path: Path) -> tuple[int, str]:
    """(bytes, SHA-256) of a file, or of a folder (Core ML's .mlpackage): its files' relative paths and
    contents in sorted order."""
    if path.is_file():
        return path.stat().st_size, sha256_file(path)
    import hashlib

    h = hashlib.sha256()
    size = 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        h.update(sha256_file(f).encode())
        size += f.stat().st_size
    return size, h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# Reading a folder back
# ----------------------------------------------------------------------------------------------------
def read_edge_manifest(folder: str | os.PathLike, runtime: str) -> tuple[Path, dict[str, Any]]:
    """Load and validate the manifest of a ``runtime`` export folder ("executorch", "tflite", ...)."""
    p = Path(folder).expanduser()
    path = p / MANIFEST_NAME if p.is_dir() else p
    if not path.is_file():
        raise FileNotFoundError(f"{runtime} model: '{folder}' is not an export folder (no {MANIFEST_NAME}); create "
                                f"one with 'mobilesam export --model mobile_sam.pt --format {runtime} --out DIR'")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{runtime} model: cannot read manifest '{path}' ({e})") from None
    expected = f"mobilesam-{runtime}"
    if not isinstance(data, dict) or data.get("format") != expected:
        got = data.get("format") if isinstance(data, dict) else None
        raise ExportError(f"{runtime} model: '{path}' is not a mobilesam {runtime} export (expected \"format\": "
                          f"\"{expected}\", got {got!r})")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise ExportError(f"{runtime} model: '{path}' has format_version {data.get('format_version')}, newer than "
                          f"this mobilesam reads ({FORMAT_VERSION}); upgrade mobilesam or re-export")
    if not isinstance(data.get("files"), dict) or not data["files"]:
        raise ExportError(f"{runtime} model: manifest '{path}' lists no files")
    return path.parent, data


def edge_file(manifest: dict[str, Any], folder: Path, key: str, verify: bool = True) -> Path:
    """Path of the file ``key`` ("encoder", "decoder_int8", ...), its checksum verified."""
    runtime = manifest["format"].removeprefix("mobilesam-")
    files = manifest["files"]
    if key not in files:
        raise ExportError(f"{runtime} model: the export in '{folder}' has no '{key}' file (it has "
                          f"{', '.join(sorted(files))}); re-export with --quantize for the reduced-precision files")
    entry = files[key]
    path = folder / entry["path"]
    if not path.exists():
        raise FileNotFoundError(f"{runtime} model: '{path}' listed in {MANIFEST_NAME} is missing; re-export the model")
    if verify and path_digest(path)[1] != entry["sha256"]:
        raise ExportError(f"{runtime} model: '{path}' does not match the SHA-256 in {MANIFEST_NAME} (changed or "
                          "truncated); re-export it")
    return path


# ----------------------------------------------------------------------------------------------------
# Checks against PyTorch
# ----------------------------------------------------------------------------------------------------
def _slots(part: GraphPart, rows: Sequence[tuple[Sequence[float], float]], rng: np.random.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` of (point, label) in the decoder's slots, every other slot unused (-2) with coordinates that
    would matter if it were read."""
    max_points = part.inputs["point_coords"]["shape"][1]
    s = float(max(part.inputs["mask_input"]["shape"][2:]) * 4)
    n = min(len(rows), max_points)
    coords = torch.from_numpy(rng.uniform(0, s, (1, max_points, 2)).astype(np.float32))
    labels = torch.full((1, max_points), float(LABEL_UNUSED))
    for i, (point, label) in enumerate(rows[:n]):
        coords[0, i] = torch.tensor([float(point[0]), float(point[1])])
        labels[0, i] = float(label)
    return coords, labels


def decoder_cases(part: GraphPart, features: Sequence[torch.Tensor], img_size: int) -> list[tuple[torch.Tensor, ...]]:
    """Decoder inputs to compare on (``features``: the encoder's outputs, the decoder's first inputs): one
    click (+ the padding point), a box, a box + click, five points with a mask input."""
    low = part.inputs["mask_input"]["shape"][2:]
    s = float(img_size)
    rng = np.random.default_rng(1)
    mask = torch.from_numpy(rng.normal(0, 4, (1, 1, *low)).astype(np.float32))
    prompts = [
        ([[0.5 * s, 0.4 * s], [0, 0]], [1, LABEL_PAD], None),
        ([[0.2 * s, 0.25 * s], [0.6 * s, 0.55 * s]], [2, 3], None),
        ([[0.1 * s, 0.1 * s], [0.5 * s, 0.5 * s], [0.3 * s, 0.3 * s]], [2, 3, 1], None),
        ([[s * f, s * (1 - f) * 0.66] for f in (0.1, 0.3, 0.5, 0.7, 0.9)], [1, 0, 1, 1, 0], mask),
    ]
    cases = []
    for points, labels, mask_input in prompts:
        coords, lab = _slots(part, list(zip(points, labels)), rng)
        has = torch.ones(1) if mask_input is not None else torch.zeros(1)
        mi = mask_input if mask_input is not None else torch.zeros(1, 1, *low)
        cases.append((*features, coords, lab, mi, has))
    return cases


def click_grid_cases(part: GraphPart, features: Sequence[torch.Tensor], width: float, height: float
                     ) -> list[tuple[torch.Tensor, ...]]:
    """A :data:`GATE_GRID` x :data:`GATE_GRID` grid of single clicks (each with the padding point) over the
    image's ``width`` x ``height`` in the input frame, for the reduced-precision gate."""
    low = part.inputs["mask_input"]["shape"][2:]
    rng = np.random.default_rng(2)
    frac = (np.arange(GATE_GRID) + 0.5) / GATE_GRID
    cases = []
    for y in frac:
        for x in frac:
            click = (x * width, y * height)
            coords, labels = _slots(part, [(click, 1.0), ((0.0, 0.0), LABEL_PAD)], rng)
            cases.append((*features, coords, labels, torch.zeros(1, 1, *low), torch.zeros(1)))
    return cases


def _numpy(inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    return [np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32) for t in inputs]


def _reported(run: Runner | None, label: str, name: str) -> Runner | None:
    """``run``, with a failure of the runtime itself (a file it cannot prepare or run) turned into an
    ExportError that names the file, instead of a traceback from inside the runtime."""
    if run is None:
        return None

    def checked(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        try:
            return run(inputs)
        except ExportError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the runtime raises, the file does not run
            raise ExportError(f"export: {label} ({name}) was written but does not run in its runtime: "
                              f"{type(e).__name__}: {str(e)[:300]}") from None

    return checked


def check_encoder(run: Runner, image: torch.Tensor, refs: Sequence[np.ndarray], names: Sequence[str], strict: bool,
                  name: str) -> dict[str, float]:
    """The encoder file's outputs against PyTorch's ``refs``: each output's max abs difference relative to its
    max abs value (``embedding_*`` for the first, the image embedding; ``{output}_*`` for any further one)."""
    got = run(_numpy([image]))
    checks: dict[str, float] = {}
    for i, (output, ref, out) in enumerate(zip(names, refs, got)):
        if out.shape != ref.shape:
            raise ExportError(f"export: {name} gives {output} of shape {out.shape}, PyTorch {ref.shape}")
        scale = float(np.abs(ref).max())
        diff = float(np.abs(ref - out).max())
        key = "embedding" if i == 0 else output
        checks[f"{key}_max_abs_diff"], checks[f"{key}_max_abs"] = diff, scale
        if strict and not diff <= EMB_RTOL * scale:  # "not <=": a NaN fails too
            raise ExportError(f"export: {name} differs from PyTorch: {output} max abs diff {diff:.3g} > "
                              f"{EMB_RTOL} x {scale:.3g}")
    return checks


def check_decoder(run: Runner, refs: list[tuple[list[np.ndarray], list[np.ndarray]]], strict: bool,
                  name: str) -> dict[str, float]:
    worst_logit = worst_iou = 0.0
    bad_pixels = 0
    min_iou = 1.0
    for feeds, ref in refs:
        got = run(feeds)
        if [g.shape for g in got] != [r.shape for r in ref]:
            raise ExportError(f"export: {name} gives outputs of shapes {[g.shape for g in got]}, PyTorch "
                              f"{[r.shape for r in ref]}")
        worst_iou = max(worst_iou, float(np.abs(ref[0] - got[0]).max()))
        worst_logit = max(worst_logit, float(np.abs(ref[1] - got[1]).max()))
        for r, g in zip(ref[2:], got[2:]):  # SAM 2's object-score logits: held to the logits' tolerance
            worst_logit = max(worst_logit, float(np.abs(r - g).max()))
        bad_pixels += int((((ref[1] > 0) != (got[1] > 0)) & (np.abs(ref[1]) > LOGIT_ATOL)).sum())
        min_iou = min(min_iou, float(mask_iou(ref[1][0] > 0, got[1][0] > 0).min()))
    if strict and not (worst_logit <= LOGIT_ATOL and worst_iou <= LOGIT_ATOL and bad_pixels == 0):
        raise ExportError(f"export: {name} differs from PyTorch: low-res logits by {worst_logit:.3g}, iou predictions "
                          f"by {worst_iou:.3g}, {bad_pixels} mask pixels away from the threshold")
    return {"low_res_max_abs_diff": worst_logit, "iou_max_abs_diff": worst_iou, "mask_iou_min": min_iou}


def reduced_mask_iou(encoder: Runner | None, decoder: Runner, checks: Sequence[tuple[torch.Tensor,
                     list[tuple[list[np.ndarray], list[np.ndarray]]]]]) -> dict[str, Any]:
    """Mask IoU of a reduced-precision pair against PyTorch fp32: for each (image, [(fp32 feeds, fp32
    outputs), ...]) the pair's encoder output (the fp32 features for a reduced decoder alone) with each case's
    prompt into its decoder, over all four outputs (1.0 where both masks are empty)."""
    ious: list[float] = []
    for image, refs in checks:
        features = encoder(_numpy([image])) if encoder is not None else None
        for feeds, ref in refs:
            feeds = list(feeds)
            if features is not None:
                feeds[: len(features)] = features
            got = decoder(feeds)
            ious += mask_iou(ref[1][0] > 0, got[1][0] > 0).tolist()
    return {"mask_iou_vs_fp32_mean": float(np.mean(ious)), "mask_iou_vs_fp32_min": float(np.min(ious)),
            "masks_compared": len(ious), "images": len(checks), "min_mean_needed": MIN_MASK_IOU}


def _outputs(out: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else list(out)


def _gate_checks(graphs: EdgeGraphs, image: torch.Tensor, features: list[torch.Tensor],
                 cases: list[tuple[torch.Tensor, ...]], refs: list[tuple[list[np.ndarray], list[np.ndarray]]],
                 with_encoder: bool) -> list[tuple[torch.Tensor, list[tuple[list[np.ndarray], list[np.ndarray]]]]]:
    """What the reduced-precision gate compares: on the example input, the decoder's check cases and a click
    grid; with the encoder, a click grid on each further check image too (PyTorch fp32 answers)."""
    enc_part, dec_part = graphs.parts["encoder"], graphs.parts["decoder"]
    mean = torch.tensor(graphs.preprocessing["pixel_mean"]).view(3, 1, 1)
    images = [image] + (list(graphs.check_images) if with_encoder else [])
    checks = []
    with torch.no_grad():
        for i, img in enumerate(images):
            feats = features if i == 0 else _outputs(enc_part.module(img))
            content = ((img[0] - mean).abs() > 0.5).any(dim=0)  # not SAM's padding: clicks land on the image
            rows, cols = content.any(dim=1).nonzero(), content.any(dim=0).nonzero()
            grid = click_grid_cases(dec_part, feats, float(cols.max() + 1) if len(cols) else img.shape[-1],
                                    float(rows.max() + 1) if len(rows) else img.shape[-2])
            extra = [(_numpy(c), _numpy(dec_part.module(*c))) for c in grid]
            checks.append((img, (refs if i == 0 else []) + extra))
    return checks


# ----------------------------------------------------------------------------------------------------
# The export
# ----------------------------------------------------------------------------------------------------
def export_edge(
    runtime: EdgeRuntime,
    model: Sam | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model_type: str | None = None,
    quantize: str | None = None,
    parts: Iterable[str] = PARTS,
    max_points: int = DEFAULT_MAX_POINTS,
    check: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Export ``model`` with ``runtime`` into ``out_dir`` and return the manifest (see the module doc)."""
    from .._version import __version__
    from .onnx_export import _resolve_model

    parts = tuple(parts)
    if not parts or any(p not in PARTS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"parts: expected some of {list(PARTS)}, got {list(parts)}")
    if quantize is not None and quantize not in runtime.precisions:
        raise ValueError(f"quantize: expected None or one of {list(runtime.precisions)} for the {runtime.name} "
                         f"format, got {quantize!r}")
    versions = runtime.versions()  # the import error that says what to install comes before any work
    sam, source = _resolve_model(model, model_type)
    graphs: EdgeGraphs = edge_graphs(sam, max_points)
    img_size = int(graphs.preprocessing["image_size"])
    name = source["model_type"] or graphs.family
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    precisions = ["fp32"] + ([quantize] if quantize else [])
    steps = [(part, precision) for precision in precisions for part in parts
             if precision == "fp32" or part in runtime.reduced_parts]
    bar = tqdm(steps, desc=f"export {runtime.name}", unit="graph", disable=not progress)
    files: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    try:
        enc_part, dec_part = graphs.parts["encoder"], graphs.parts["decoder"]
        image = enc_part.example_inputs[0]
        feature_names = graphs.feature_names
        with torch.no_grad():
            if "encoder" in parts:
                features = _outputs(enc_part.module(image))
            else:  # a decoder-only export is checked on random features (an encoder pass of ViT-H is slow)
                g = torch.Generator().manual_seed(0)
                features = [torch.randn(dec_part.inputs[n]["shape"], generator=g) for n in feature_names]
            cases = decoder_cases(dec_part, features, img_size)
            refs = [(_numpy(c), _numpy(dec_part.module(*c))) for c in cases]
        features_ref = _numpy(features)
        runners: dict[str, Runner | None] = {}
        for part, precision in steps:
            key = file_key(part, precision)
            path = tmp / f"{name}_{part}{'' if precision == 'fp32' else '.' + precision}{runtime.suffix}"
            bar.set_postfix_str(path.name)
            graph = graphs.parts[part]
            runtime.convert(graph, path, precision)
            label = f"the {runtime.title} {part}" + ("" if precision == "fp32" else f" ({precision})")
            run = _reported(runtime.load(path, graph), label, path.name)
            runners[key] = run
            if run is None:
                checks[key] = runtime.validate(path, graph) if runtime.validate else {}
            elif precision == "fp32":
                checks[key] = (check_encoder(run, image, features_ref, feature_names, check, label)
                               if part == "encoder" else check_decoder(run, refs, check, label))
            size, digest = path_digest(path)
            files[key] = {"path": path.name, "precision": precision, "bytes": size, "sha256": digest,
                          "inputs": graph.inputs, "outputs": graph.outputs}
            bar.update()
        # The reduced pair: its encoder (if any) into its decoder, or into the fp32 decoder when only the
        # encoder is reduced.
        pair_decoder = (runners.get(file_key("decoder", quantize)) or runners.get("decoder")) if quantize else None
        if quantize and pair_decoder is not None and any(file_key(p, quantize) in runners for p in parts):
            bar.set_postfix_str(f"{quantize} masks vs fp32")
            pair = reduced_mask_iou(runners.get(file_key("encoder", quantize)), pair_decoder,
                                    _gate_checks(graphs, image, features, cases, refs, "encoder" in parts))
            checks[f"pipeline_{quantize}"] = pair
            if check and not pair["mask_iou_vs_fp32_mean"] >= MIN_MASK_IOU:
                raise ExportError(
                    f"export: the {quantize} {runtime.title} files give masks at IoU "
                    f"{pair['mask_iou_vs_fp32_mean']:.3f} of fp32's on average (least "
                    f"{pair['mask_iou_vs_fp32_min']:.3f}, {pair['masks_compared']} masks on {pair['images']} check "
                    f"images; at least {MIN_MASK_IOU} needed); export fp32 (no --quantize), or --no-check to keep "
                    "them anyway")
        bar.close()
        manifest = {
            "format": runtime.manifest_format,
            "format_version": FORMAT_VERSION,
            "family": graphs.family,
            "model_type": source["model_type"],
            "source": {k: v for k, v in source.items() if k != "model_type"},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"mobilesam": __version__, "torch": torch.__version__, **versions},
            "image_size": img_size,
            "pixel_mean": graphs.preprocessing["pixel_mean"],
            "pixel_std": graphs.preprocessing["pixel_std"],
            "preprocessing": graphs.preprocessing,
            "prompt": graphs.prompt,
            "feature_layout": {n: dec_part.inputs[n]["shape"] for n in feature_names},
            **({"embedding_shape": dec_part.inputs["image_embeddings"]["shape"]} if graphs.family == "sam" else {}),
            "mask_threshold": float(sam.mask_threshold),
            "postprocessing": graphs.postprocessing,
            "backend": runtime.backend,
            "notes": runtime.notes,
            "files": files,
            "checks": checks,
        }
        staged = [tmp / e["path"] for e in files.values()]
        for path in staged:  # a re-export replaces the files it writes, never a folder half-way
            target = out / path.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(path, target)
        write_json_atomic(out / MANIFEST_NAME, manifest)
        return manifest
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)


def edge_exporter(runtime: EdgeRuntime, doc: str) -> Callable[..., dict[str, Any]]:
    """The public exporter function of ``runtime`` (``export_executorch``, ...): :func:`export_edge` bound to it."""

    def exporter(
        model: Sam | str | os.PathLike,
        out_dir: str | os.PathLike,
        *,
        model_type: str | None = None,
        quantize: str | None = None,
        parts: Iterable[str] = PARTS,
        max_points: int = DEFAULT_MAX_POINTS,
        check: bool = True,
        progress: bool = True,
    ) -> dict[str, Any]:
        return export_edge(runtime, model, out_dir, model_type=model_type, quantize=quantize, parts=parts,
                           max_points=max_points, check=check, progress=progress)

    exporter.__name__ = exporter.__qualname__ = f"export_{runtime.name}"
    exporter.__doc__ = doc
    return exporter
