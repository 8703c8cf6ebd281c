"""A script of Ultralytics-style calls, run unchanged against ``ultralytics.SAM`` and ``mobilesam.SAM``.

``run_calls`` records what a user's script can observe (types, shapes, field names, files written, string
formats), never mask pixels: those follow the official predictor in mobilesam and differ in Ultralytics.
``tests/data/ultralytics_calls.json`` holds the record of Ultralytics itself (with its version), made by
``python tests/ultralytics_calls.py OUT.json`` in a venv with ``pip install ultralytics``;
``tests/test_ultralytics_compat.py`` compares mobilesam's record with it (and with a live Ultralytics
run when it is installed).
"""

from __future__ import annotations

import io
import json
import re
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np

# The brief's prompts on a 1280 x 720 image, and the calls of the "Done when".
PROMPT_CALLS = {
    "one_point": dict(points=[900, 370], labels=[1]),
    "two_objects": dict(points=[[400, 370], [900, 370]], labels=[1, 1]),
    "one_object_two_points": dict(points=[[[400, 370], [900, 370]]], labels=[[1, 1]]),
    "positive_negative": dict(points=[[[400, 370], [900, 370]]], labels=[[1, 0]]),
    "boxes": dict(bboxes=[[100, 50, 700, 700], [800, 100, 1200, 500]]),
}
IMAGE_SIZE = (720, 1280)


def make_inputs(root: Path) -> tuple[Path, Path]:
    """A 1280 x 720 JPEG with shapes (zidane.jpg) and a 2-frame MJPG video of it moving (clip.avi)."""
    import cv2

    h, w = IMAGE_SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 0.2) % 256, (yy * 0.3) % 256, np.full_like(xx, 90)], -1).astype(np.uint8)
    cv2.rectangle(img, (300, 200), (520, 600), (40, 200, 240), -1)
    cv2.circle(img, (900, 370), 150, (230, 60, 60), -1)
    image = root / "zidane.jpg"
    cv2.imwrite(str(image), img)
    video = root / "clip.avi"
    small = cv2.resize(img, (320, 180))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 180))
    for k in range(2):
        writer.write(np.roll(small, 8 * k, axis=1))
    writer.release()
    return image, video


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _label_shape(text: str) -> list[list[Any]]:
    """Each line as [class, number of values after it mod 2 (1: a confidence), all values within [0, 1]]."""
    out = []
    for line in text.splitlines():
        v = line.split()
        vals = [float(x) for x in v[1:]]
        out.append([int(v[0]), len(vals) % 2, all(0.0 <= x <= 1.0 for x in vals)])
    return out


def _result_record(r: Any) -> dict[str, Any]:
    n = len(r)
    summary = r.summary()
    rec: dict[str, Any] = {
        "len": n,
        "type": type(r).__name__,
        "orig_shape": list(r.orig_shape),
        "orig_img": [type(r.orig_img).__name__, str(r.orig_img.dtype), list(r.orig_img.shape)],
        "names": sorted((int(k), v) for k, v in r.names.items()),
        "path_name": Path(r.path).name,
        "boxes_shape": list(r.boxes.data.shape),
        "masks_shape": list(r.masks.data.shape) if r.masks is not None else None,
        "masks_dtype": str(r.masks.data.dtype) if r.masks is not None else None,
        "cls": [int(c) for c in r.boxes.cls.tolist()],
        "xy": [[type(p).__name__, str(p.dtype), p.ndim, p.shape[-1]] for p in (r.masks.xy if n else [])],
        "xyn_in_unit": all(bool((p >= 0).all() and (p <= 1).all()) for p in (r.masks.xyn if n else [])),
        "absent": {k: getattr(r, k) is None for k in ("probs", "keypoints", "obb")},
        "speed_keys": sorted(r.speed),
        "verbose": re.sub(r"\d+ ", "N ", r.verbose()),
        "summary_keys": [sorted(s) for s in summary],
        "summary_box_keys": sorted(summary[0]["box"]) if summary else None,
        "summary_segment_keys": sorted(summary[0]["segments"]) if summary else None,
        "to_json_keys": [sorted(d) for d in json.loads(r.to_json())],
        "to_csv_header": r.to_csv().split("\n", 1)[0],
        "plot": list(r.plot(conf=False, line_width=2, font_size=12, labels=True, boxes=True, masks=True,
                            color_mode="instance", txt_color=(0, 0, 0)).shape),
        "new_len": len(r.new()),
        "getitem_len": len(r[0]) if n else None,
    }
    return rec


def run_calls(SAM: Any, root: Path, checkpoint: str) -> dict[str, Any]:
    """Run the script in ``root`` (the current folder must be ``root``); return what it observed."""
    image, video = make_inputs(root)
    model = SAM(checkpoint)
    out: dict[str, Any] = {}
    info = model.info(verbose=True)
    out["info"] = [len(info), [type(v).__name__ for v in info][:3]]
    for key, prompts in PROMPT_CALLS.items():
        results = model.predict(str(image), **prompts)
        out[key] = {"type": type(results).__name__, "n": len(results), "result": _result_record(results[0])}
    r = model(str(image), points=[900, 370], labels=[1])[0]
    out["call"] = _result_record(r)

    # save=True, save_txt=True, save_conf, save_crop into a project / name
    results = model.predict(str(image), points=[[400, 370], [900, 370]], labels=[1, 1], save=True, save_txt=True,
                            save_conf=True, save_crop=True, project=str(root / "proj"), name="exp")
    save_dir = Path(results[0].save_dir)
    out["save"] = {
        "save_dir": str(save_dir.relative_to(root)),
        "files": _files(save_dir),
        "labels": _label_shape((save_dir / "labels" / "zidane.txt").read_text()),
    }
    # The default folder: runs/segment/predict, then -2 when it exists and a new folder is asked for
    r1 = model.predict(str(image), points=[900, 370], save=True)[0]
    r2 = model.predict(str(image), points=[900, 370], save=True, name="predict")[0]
    out["default_dirs"] = [str(Path(r1.save_dir).relative_to(root)), str(Path(r2.save_dir).relative_to(root))]

    # Results.save_txt appends; nothing to write -> no file
    txt = root / "direct.txt"
    r.save_txt(str(txt))
    r.save_txt(str(txt), save_conf=True)
    out["save_txt_append"] = _label_shape(txt.read_text())
    empty = r.new()
    empty.save_txt(str(root / "none.txt"))
    out["save_txt_nothing"] = (root / "none.txt").exists()
    r.save_crop(str(root / "crops"), file_name="shot")
    r.save_crop(str(root / "crops"), file_name="shot")
    out["save_crop"] = _files(root / "crops")
    out["save"]["returned"] = Path(r.save(str(root / "plots" / "out.jpg"))).name
    out["default_save_name"] = Path(r.save()).name

    # show() under a headless environment: must not raise
    r.show()
    out["show"] = "ok"
    # to_df (polars in Ultralytics)
    try:
        df = r.to_df()
        out["to_df"] = [type(df).__module__.split(".")[0], list(df.columns), len(df)]
    except ImportError:  # polars (or pandas for mobilesam) is not installed
        out["to_df"] = None
    r.update(boxes=r.boxes.data.clone() + 5000)
    out["update_clips"] = [float(v) for v in r.boxes.xyxy[0].tolist()]

    # imgsz: the encoder at another input size
    results = model.predict(str(image), points=[900, 370], imgsz=512)
    out["imgsz"] = {"n": len(results), "masks_shape": list(results[0].masks.data.shape)}

    # a video source, frame by frame, saving an annotated video and one label file per frame
    stream = model.predict(str(video), points=[160, 90], stream=True, save=True, save_txt=True, name="video",
                           imgsz=256)
    frames = list(stream)
    save_dir = Path(frames[0].save_dir)
    out["video"] = {
        "generator": type(stream).__name__ == "generator",
        "n": len(frames),
        "path_names": sorted({Path(f.path).name for f in frames}),
        "orig_shape": list(frames[0].orig_shape),
        "files": _files(save_dir),
    }
    # Arguments that make no sense for SAM: Ultralytics ignores or accepts them; we refuse (recorded for docs)
    return out


def _record_ultralytics(path: str) -> None:
    """Run the calls against Ultralytics in a temporary folder with a random MobileSAM checkpoint."""
    import os
    import tempfile

    import torch
    import ultralytics
    import ultralytics.cfg as cfg

    root = Path(tempfile.mkdtemp())
    os.chdir(root)
    cfg.SETTINGS = {**dict(cfg.SETTINGS), "runs_dir": str(root / "runs")}
    cfg.TESTS_RUNNING = False
    ckpt = root / "mobile_sam.pt"
    torch.save(random_checkpoint(), ckpt)
    with redirect_stdout(io.StringIO()):
        record = run_calls(ultralytics.SAM, root, str(ckpt))
    record["ultralytics_version"] = ultralytics.__version__
    Path(path).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def random_checkpoint(seed: int = 0) -> dict[str, Any]:
    """A random MobileSAM state_dict whose predicted IoUs are high (so Ultralytics' default conf=0.25 keeps
    every mask and both packages return the same number of masks)."""

    sys.path.insert(0, str(Path(__file__).parent))
    from oracle import reference_model

    sd = {k: v.clone() for k, v in reference_model("vit_t", seed=seed).state_dict().items()}
    sd["mask_decoder.iou_prediction_head.layers.2.bias"] += 5.0
    return sd


if __name__ == "__main__":
    _record_ultralytics(sys.argv[1])
