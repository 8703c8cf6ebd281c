"""Ultralytics' ``predict`` arguments for ``SAM.predict``: which ones mean something here, their checks,
the run folder they name and the files they write.

``SAM.predict(..., save=True, save_txt=True, project=..., name=..., imgsz=..., show_boxes=False)`` works as in
Ultralytics 8.4: the run folder is ``runs/segment/predict`` (``predict-2``, ``predict-3``, ... when it
exists, unless ``exist_ok``; a relative ``project`` goes under ``runs/segment/``, an absolute one is
used as it is); per image ``NAME.jpg`` (the plot), ``labels/NAME.txt`` (YOLO segmentation) and
``crops/<class>/NAME.jpg``; a video gives ``NAME.avi`` (or ``.mp4`` on macOS) and ``labels/NAME_<frame>.txt``.
The folder is kept for the next call of the same ``SAM`` with the same ``project`` / ``name`` /
``exist_ok``, as Ultralytics keeps its predictor's.

Ultralytics' arguments that mean nothing for SAM here (``augment``, ``iou``, ``classes``, ...) are
refused by name, with the reason; see :data:`NOT_FOR_SAM`.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .masks import DEFAULT_SIMPLIFY, check_simplify

logger = logging.getLogger("mobilesam")

# Every key of Ultralytics 8.4's configuration (cfg/default.yaml), so a misplaced one is named as such.
ULTRALYTICS_KEYS = frozenset("""
task mode model data epochs time patience batch imgsz save save_period cache device workers project name exist_ok
pretrained cls_remap optimizer verbose seed deterministic single_cls rect cos_lr close_mosaic resume amp fraction
profile freeze multi_scale compile channels_last overlap_mask mask_ratio dropout val split save_json conf iou max_det
quantize half int8 dnn plots nms source vid_stride stream_buffer visualize augment agnostic_nms classes retina_masks
embed show save_frames save_txt save_conf save_crop show_labels show_conf show_boxes line_width format optimize
dynamic simplify opset workspace lr0 lrf momentum weight_decay warmup_epochs warmup_momentum warmup_bias_lr
distill_model dis box cls cls_pw dfl pose kobj rle angle dlog dgrad dlam nbs hsv_h hsv_s hsv_v degrees translate
scale shear perspective flipud fliplr bgr mosaic mixup cutmix copy_paste copy_paste_mode auto_augment erasing cfg
tracker
""".split())

# Predict-time arguments of Ultralytics that have no meaning for SAM here, and why.
NOT_FOR_SAM = {
    "augment": "SAM has no test-time augmentation",
    "agnostic_nms": "SAM runs no NMS: mask i answers prompt i",
    "iou": "SAM runs no NMS: mask i answers prompt i",
    "max_det": "SAM gives one mask per prompt (three with multimask_output=True), nothing to cap",
    "classes": "SAM masks have no classes (boxes.cls is the prompt index); select them with r[r.boxes.cls == k]",
    "visualize": "there are no class-activation maps for SAM",
    "embed": "use SamPredictor(...).get_image_embedding() for embeddings",
    "stream_buffer": "live streams (webcams, RTSP) are not sources here; a video file or a folder of frames is",
    "dnn": "OpenCV DNN is not a backend here; pass backend='onnxruntime'",
    "rect": "SAM's input is always the official resize-longest-side + pad",
    "nms": "SAM runs no NMS",
    "compile": "not supported here; the torch backend has its own CPU fast paths",
    "channels_last": "not supported here",
    "int8": "pass backend='onnxruntime-int8' or 'openvino-int8' to SAM(...)",
    "data": "SAM needs no dataset file to predict",
    "tracker": "tracking objects across frames is the SAM 2 video predictor's job",
    "cfg": "pass the arguments themselves",
    "save_json": "use r.to_json(), or mobilesam convert for a COCO file",
}

# Ultralytics' predict arguments handled here, beyond those SAM.predict names itself.
HANDLED = (
    "save", "save_txt", "save_conf", "save_crop", "save_frames", "project", "name", "exist_ok", "imgsz",
    "retina_masks", "show", "show_boxes", "show_labels", "show_conf", "line_width", "vid_stride", "simplify",
    "task", "mode", "quantize", "source", "model",
)


@dataclass
class PredictOptions:
    """Ultralytics' output and display arguments (defaults as Ultralytics' for SAM)."""

    save: bool = False
    save_txt: bool = False
    save_conf: bool = False
    save_crop: bool = False
    save_frames: bool = False
    project: str | None = None
    name: str | None = None
    exist_ok: bool = False
    imgsz: int | None = None
    retina_masks: bool = True
    show: bool = False
    show_boxes: bool = True
    show_labels: bool = True
    show_conf: bool = True
    line_width: float | None = None
    vid_stride: int = 1
    simplify: float = DEFAULT_SIMPLIFY
    half: bool | None = None  # from quantize=16 / 32

    @property
    def writes(self) -> bool:
        return self.save or self.save_txt or self.save_crop or self.show


_BOOLS = ("save", "save_txt", "save_conf", "save_crop", "save_frames", "exist_ok", "retina_masks", "show",
          "show_boxes", "show_labels", "show_conf")


def split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Ultralytics arguments, the rest): the rest go to the segment-everything generator."""
    ours = {k: v for k, v in kwargs.items() if k in ULTRALYTICS_KEYS}
    return ours, {k: v for k, v in kwargs.items() if k not in ours}


def parse_options(kwargs: dict[str, Any]) -> PredictOptions:
    """Check Ultralytics-style arguments; a ValueError naming the first bad or meaningless one."""
    opts = PredictOptions()
    for key, value in kwargs.items():
        if key in NOT_FOR_SAM:
            raise ValueError(f"{key}: an Ultralytics argument that has no meaning for SAM here ({NOT_FOR_SAM[key]})")
        if key not in HANDLED:
            raise ValueError(
                f"{key}: an Ultralytics training/export setting, not a predict argument; predict takes "
                f"{', '.join(sorted(set(HANDLED) - {'task', 'mode', 'source', 'model'}))} besides its own"
            )
        if key in _BOOLS:
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{key}: expected True or False, got {value!r}")
            setattr(opts, key, bool(value))
        elif key in ("project", "name"):
            if value is not None and (not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip()):
                raise ValueError(f"{key}: expected a folder name (a str), got {value!r}")
            setattr(opts, key, None if value is None else os.fspath(value))
        elif key == "imgsz":
            from .input_size import check_imgsz

            opts.imgsz = None if value is None else check_imgsz(value)
        elif key == "line_width":
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise ValueError(f"line_width: expected a positive number of pixels or None (scaled), got {value!r}")
            opts.line_width = value
        elif key == "vid_stride":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"vid_stride: expected an int >= 1 (read every N-th frame), got {value!r}")
            opts.vid_stride = value
        elif key == "simplify":
            opts.simplify = check_simplify(value)
        elif key == "task" and value not in (None, "segment"):
            raise ValueError(f"task: SAM's task is 'segment', got {value!r}")
        elif key == "mode" and value not in (None, "predict"):
            raise ValueError(f"mode: SAM.predict runs mode 'predict', got {value!r}")
        elif key == "quantize":
            q = str(value).lower()
            if q in ("16", "fp16", "half"):
                opts.half = True
            elif q in ("32", "fp32", "none"):
                opts.half = False
            else:
                raise ValueError(f"quantize: expected 16 (float16, CUDA) or 32 / None, got {value!r}; for int8 "
                                 "pass backend='onnxruntime-int8' or 'openvino-int8' to SAM(...)")
        elif key in ("source", "model"):
            raise ValueError(f"{key}: give it to SAM({'...' if key == 'model' else ''}) / predict(source) directly")
    if not opts.retina_masks:
        logger.warning("mobilesam: retina_masks=False has no effect: masks are always at the image size "
                       "(Ultralytics' SAM forces retina_masks=True too)")
    return opts


# --- the run folder ---------------------------------------------------------------------------------
def increment_path(path: Path, exist_ok: bool = False) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... : the first that does not exist (Ultralytics' rule)."""
    if exist_ok or not path.exists():
        return path
    n = 2
    while Path(f"{path}-{n}").exists():
        n += 1
    return Path(f"{path}-{n}")


def run_folder(project: str | None, name: str | None, exist_ok: bool) -> Path:
    """Ultralytics' ``get_save_dir`` for SAM: ``runs/segment/<project>/<name or predict>``, incremented."""
    base = Path(project or "")
    if not base.is_absolute():
        base = Path("runs") / "segment" / base
    return increment_path(base / (name or "predict"), exist_ok).resolve()


def save_dir_for(owner: Any, opts: PredictOptions) -> Path:
    """The run folder for a call on ``owner`` (a ``SAM``): the previous one while project, name and exist_ok
    stay the same (as Ultralytics keeps its predictor's), else a new one."""
    key = (opts.project, opts.name, opts.exist_ok)
    state = getattr(owner, "_run_folder", None)
    if state is None or state[0] != key:
        state = (key, run_folder(*key))
        owner._run_folder = state
    return state[1]


# --- writing ----------------------------------------------------------------------------------------
def _video_format() -> tuple[str, str]:
    """(suffix, fourcc) of saved videos, as Ultralytics: MP4/avc1 on macOS, AVI/WMV2 on Windows, else AVI/MJPG."""
    if sys.platform == "darwin":
        return ".mp4", "avc1"
    if sys.platform.startswith("win"):
        return ".avi", "WMV2"
    return ".avi", "MJPG"


class RunWriter:
    """Writes a predict run's files as results stream out (see the module doc); ``close()`` finishes videos."""

    def __init__(self, opts: PredictOptions, save_dir: Path, inputs: set[Path], verbose: bool) -> None:
        self.opts, self.save_dir, self.inputs, self.verbose = opts, save_dir, inputs, verbose
        self.bases: set[str] = set()
        self.video_base: dict[str, str] = {}
        self.videos: dict[Path, tuple[Any, Path]] = {}  # final path -> (cv2.VideoWriter, temporary path)
        self.labels = 0
        if opts.save_txt:
            (save_dir / "labels").mkdir(parents=True, exist_ok=True)
        elif opts.save or opts.save_crop:
            save_dir.mkdir(parents=True, exist_ok=True)

    def _base(self, result: Any) -> str:
        p = Path(result.path)
        if result.source_mode == "video" and result.path in self.video_base:
            return self.video_base[result.path]
        base, k = p.stem or "image", 1
        while base in self.bases:  # bus.jpg + bus.png, a/clip.mp4 + b/clip.mp4 -> bus, bus-2
            k += 1
            base = f"{p.stem}-{k}"
        self.bases.add(base)
        if result.source_mode == "video":
            self.video_base[result.path] = base
        return base

    def _check(self, path: Path) -> Path:
        if path.resolve() in self.inputs:
            raise ValueError(f"project: writing '{path}' would replace an input of this run; choose another project/name")
        return path

    def write(self, result: Any) -> None:
        opts = self.opts
        result.save_dir = str(self.save_dir)
        if not opts.writes:
            return
        base = self._base(result)
        video = result.source_mode == "video"
        stem = f"{base}_{result.frame}" if video else base
        if opts.save_txt:
            txt = self._check(self.save_dir / "labels" / f"{stem}.txt")
            txt.unlink(missing_ok=True)  # this run's labels replace a previous run's (Ultralytics)
            result.save_txt(txt, save_conf=opts.save_conf, simplify=opts.simplify)
            self.labels += txt.exists()
        if opts.save_crop:
            result.save_crop(self.save_dir / "crops", file_name=f"{stem}.jpg")
        if opts.save or opts.show:
            picture = result.plot(line_width=opts.line_width, boxes=opts.show_boxes, conf=opts.show_conf,
                                  labels=opts.show_labels)
            if opts.show:
                from .results import _show

                _show(picture, result.path)
            if opts.save:
                if video:
                    self._write_frame(base, result, picture)
                else:
                    from .io import write_image

                    write_image(self._check(self.save_dir / f"{base}.jpg"), picture, image_format="BGR")

    def _write_frame(self, base: str, result: Any, picture: np.ndarray) -> None:
        import cv2

        suffix, fourcc = _video_format()
        final = self._check(self.save_dir / f"{base}{suffix}")
        if final not in self.videos:
            tmp = final.with_name(f".{final.stem}.part{suffix}")
            fps = max(1.0, (result.fps or 30.0) / self.opts.vid_stride)  # skipped frames must not shorten it
            h, w = picture.shape[:2]
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
            if not writer.isOpened():
                raise RuntimeError(f"save: OpenCV cannot write a {fourcc} video to '{tmp}'")
            self.videos[final] = (writer, tmp)
        self.videos[final][0].write(picture)
        if self.opts.save_frames:
            from .io import write_image

            write_image(self.save_dir / f"{base}_frames" / f"{base}_{result.frame}.jpg", picture, image_format="BGR")

    def close(self, completed: bool) -> None:
        """Release the video writers; a finished video is moved into place, an interrupted one removed."""
        for final, (writer, tmp) in self.videos.items():
            writer.release()
            if completed:
                os.replace(tmp, final)
            else:
                tmp.unlink(missing_ok=True)
        self.videos.clear()
        if completed and self.verbose and (self.opts.save or self.opts.save_txt or self.opts.save_crop):
            note = ""
            if self.opts.save_txt:
                note = f"\n{self.labels} label{'s' * (self.labels > 1)} saved to {self.save_dir / 'labels'}"
            print(f"Results saved to {self.save_dir}{note}")


def with_outputs(results: Iterator[Any], writer: RunWriter) -> Iterator[Any]:
    """Pass ``results`` through, writing each one's files first."""
    completed = False
    try:
        for r in results:
            writer.write(r)
            yield r
        completed = True
    finally:
        writer.close(completed)


__all__ = [
    "HANDLED",
    "NOT_FOR_SAM",
    "PredictOptions",
    "RunWriter",
    "ULTRALYTICS_KEYS",
    "parse_options",
    "run_folder",
    "save_dir_for",
    "split_kwargs",
    "with_outputs",
]
