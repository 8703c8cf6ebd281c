"""Distillation: embed, train (learning, bit-exact resume, torchrun), assemble and val.

Models run at 64 px (a 4x4 embedding) so that training steps take a fraction of a second on CPU;
the teacher of the training tests is a random ViT-B, whose embeddings (unlike a random TinyViT's)
differ from image to image, so a falling loss means the student learned image-specific features.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilesam.build import build_sam
from mobilesam.cli import main
from mobilesam.modeling import build_model
from mobilesam.predictor import SamPredictor
from mobilesam.train import (
    EmbeddingStore,
    StepSampler,
    TrainConfig,
    build_distill_sam,
    build_encoder,
    embed_folder,
    flip_pair,
    lr_factor,
    sample_prompts,
    train,
    validate,
)
from mobilesam.train.checkpoint import load_checkpoint
from mobilesam.train.store import ResizedImages, preprocess_batch
from mobilesam.weights import load_state_dict

SIZE = 64  # model input size of the training tests


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The CI box has 2 shared cores: one thread is faster than two fighting for them.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_images(folder: Path) -> None:
    rng = np.random.default_rng(0)
    shapes = [(48, 64), (64, 40), (56, 56), (40, 64), (64, 64), (30, 60)]
    for i, (h, w) in enumerate(shapes):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([np.sin(xx / (3 + i)) * 100 + 128, np.cos(yy / (2 + i)) * 100 + 128,
                        rng.integers(0, 255, (h, w))], -1)
        path = folder / ("sub" if i == 5 else "") / f"im{i}.png"  # one in a sub-folder: search is recursive
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("distill")
    _write_images(root / "images")
    return root


@pytest.fixture(scope="module")
def emb_b(work: Path) -> Path:
    """Embeddings of a random ViT-B teacher at 64 px (through the Python API, with an in-memory teacher)."""
    torch.manual_seed(0)
    teacher = build_model("vit_t")
    teacher.image_encoder = build_encoder("vit_b", SIZE).eval()
    embed_folder(teacher, work / "images", work / "emb_b", img_size=SIZE, workers=0, progress=False)
    return work / "emb_b"


@pytest.fixture(scope="module")
def emb_t(work: Path, tiny_checkpoint: Path) -> Path:
    """Embeddings of the (perturbed random) vit_t checkpoint, through the CLI."""
    out = work / "emb_t"
    assert main(["embed", "--model", str(tiny_checkpoint), "--data", str(work / "images"), "--out", str(out),
                 "--img-size", str(SIZE), "--workers", "0"]) == 0
    return out


def _cfg(work: Path, emb: Path, out: str, **kw) -> TrainConfig:
    base = {
        "data": str(work / "images"), "embeddings": str(emb), "out": str(work / out), "batch_size": 2,
        "workers": 0, "log_every": 1, "save_every": 1000, "warmup_steps": 2, "progress": False,
    }
    return TrainConfig(**{**base, **kw})


def _losses(run: Path) -> list[float]:
    with open(run / "log.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def trained_run(work: Path, emb_b: Path) -> Path:
    train(_cfg(work, emb_b, "run_learn", steps=24, lr=1e-3, workers=1))  # one worker process: the loader path
    return work / "run_learn"


# ---------------------------------------------------------------- embeddings store


def test_embed_store_values_and_resume(work: Path, emb_t: Path, tiny_checkpoint: Path) -> None:
    store = EmbeddingStore.open(emb_t)
    assert store.meta["model_type"] == "vit_t" and store.meta["img_size"] == SIZE
    files = sorted(p.relative_to(emb_t).as_posix() for p in emb_t.rglob("*.npy"))
    assert files == [f"im{i}.png.npy" for i in range(5)] + ["sub/im5.png.npy"]
    arr = store.read("sub/im5.png")
    assert arr.dtype == np.float16 and arr.shape == (256, SIZE // 16, SIZE // 16)

    # Same numbers as the teacher run directly on the officially preprocessed image.
    sam = build_distill_sam("vit_t", SIZE, init=tiny_checkpoint).eval()
    _, img, _ = ResizedImages(work / "images", ["sub/im5.png"], SIZE)[0]
    with torch.no_grad():
        direct = sam.image_encoder(preprocess_batch(sam, [img], torch.device("cpu")))[0]
    torch.testing.assert_close(torch.from_numpy(arr).float(), direct, atol=2e-3, rtol=2e-3)

    # Resumable: nothing is recomputed; a deleted file alone is.
    stamps = {p: p.stat().st_mtime_ns for p in emb_t.rglob("*.npy")}
    (emb_t / "im2.png.npy").unlink()
    r = embed_folder(tiny_checkpoint, work / "images", emb_t, img_size=SIZE, workers=0, progress=False)
    assert (r["computed"], r["skipped"]) == (1, 5)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.name != "im2.png.npy")
    np.testing.assert_array_equal(store.read("im2.png"), np.load(emb_t / "im2.png.npy"))

    with pytest.raises(ValueError, match="img_size: 64 there, 128 now"):
        embed_folder(tiny_checkpoint, work / "images", emb_t, img_size=128, workers=0, progress=False)


# ---------------------------------------------------------------- data: flips and sampler


def test_flip_pair_moves_pixels_and_cells_together() -> None:
    """With a patch-local 'encoder' (16x16 average pooling), flipping the embedding the way flip_pair
    does is exactly the embedding of the flipped input, whatever the padding."""
    g = torch.Generator().manual_seed(0)
    for h, w in [(64, 40), (37, 64), (64, 64), (23, 9)]:
        x = torch.zeros(3, 64, 64)
        x[:, :h, :w] = torch.randn(3, h, w, generator=g)  # image top-left, zero padding bottom/right
        y = torch.nn.functional.avg_pool2d(x[None], 16)[0]
        for horizontal in (True, False):
            fx, fy = flip_pair(x, y, (h, w), horizontal)
            torch.testing.assert_close(fy, torch.nn.functional.avg_pool2d(fx[None], 16)[0])
            back_x, back_y = flip_pair(fx, fy, (h, w), horizontal)
            assert torch.equal(back_x, x) and torch.equal(back_y, y)  # an involution
            n = w if horizontal else h
            if n % 16 == 0:  # cells fully covered: exactly the mirrored image, padding untouched
                dim = -1 if horizontal else -2
                assert torch.equal(fx.narrow(dim, 0, n), x.narrow(dim, 0, n).flip(dim))
    y0 = y.clone()  # inputs are not modified in place
    flip_pair(x, y, (23, 9), True)
    assert torch.equal(y, y0)


def test_step_sampler_same_global_batches_for_any_split() -> None:
    def global_batches(world: int, accumulate: int, start: int = 0) -> list[list[int]]:
        per_rank = [list(StepSampler(10, 4, accumulate, world, r, seed=3, start=start, total=7)) for r in range(world)]
        steps = []
        for s in range(7 - start):
            keys = []
            for k in range(accumulate):
                for r in range(world):
                    keys += per_rank[r][s * accumulate + k]
            steps.append(keys)
        return steps

    one = global_batches(1, 1)
    assert global_batches(2, 1) == one == global_batches(2, 2) == global_batches(1, 4)
    assert global_batches(2, 1, start=3) == one[3:]  # a resumed sampler continues the same sequence
    assert [e for _, e in one[1]] == [0] * 4 and [e for _, e in one[2]] == [1] * 4  # 10 // 4 = 2 steps per epoch
    assert sorted(i for step in one[:2] for i, _ in step) == sorted({i for step in one[:2] for i, _ in step})


# ---------------------------------------------------------------- training


def test_lr_schedule() -> None:
    f = [lr_factor(s, total=100, warmup=10, schedule="cosine", min_ratio=0.01) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and max(f) == 1.0
    assert all(a >= b for a, b in zip(f[9:], f[10:]))  # decays monotonically after warmup
    assert f[-1] == pytest.approx(0.01, abs=1e-3)
    assert lr_factor(50, 100, 0, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(99, 100, 0, "constant", 0.0) == 1.0


def test_student_learns_the_teacher_embeddings(trained_run: Path, emb_b: Path, work: Path) -> None:
    losses = _losses(trained_run)
    assert len(losses) == 24
    first, last = losses[0], float(np.mean(losses[-5:]))
    store = EmbeddingStore.open(emb_b)
    targets = np.stack([store.read(r).astype(np.float32) for r in ["im0.png", "im1.png", "im2.png", "im3.png",
                                                                     "im4.png", "sub/im5.png"]])
    best_constant = float(((targets - targets.mean(0)) ** 2).mean())  # MSE of the best image-blind answer
    assert best_constant > 0.3, "the teacher's embeddings should differ from image to image"
    assert last < 0.15 * first, (first, last)
    assert last < 0.5 * best_constant, (last, best_constant)

    ckpt = load_checkpoint(trained_run / "last.pt")
    assert ckpt["step"] == 24 and ckpt["img_size"] == SIZE
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "rng", "config"}
    assert all(k.startswith("image_encoder.") for k in ckpt["model"])
    with Image.open(trained_run / "loss.png") as im:
        assert im.size == (800, 480)
    assert json.loads((trained_run / "config.json").read_text())["steps"] == 24


def test_resume_is_bit_identical(work: Path, emb_b: Path) -> None:
    kw = {"steps": 4, "accumulate": 2, "hflip": 0.5, "vflip": 0.5, "lr": 2e-3}
    train(_cfg(work, emb_b, "run_full", **kw))
    assert train(_cfg(work, emb_b, "run_split", stop_after=2, **kw))["finished"] is False
    train(_cfg(work, emb_b, "run_split", **kw), resume=work / "run_split")
    a, b = load_checkpoint(work / "run_full" / "last.pt"), load_checkpoint(work / "run_split" / "last.pt")
    assert a["step"] == b["step"] == 4
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i][n], sb[i][n]) for i in sa for n in sa[i])
    assert _losses(work / "run_full") == _losses(work / "run_split")

    with pytest.raises(ValueError, match="lr: 0.002 in the checkpoint, 0.001 now"):
        train(_cfg(work, emb_b, "run_split", **{**kw, "lr": 1e-3}), resume=work / "run_split")
    with pytest.raises(FileExistsError, match="--resume"):
        train(_cfg(work, emb_b, "run_full", **kw))


@pytest.mark.slow
def test_torchrun_two_processes(work: Path, emb_b: Path, emb_t: Path, tiny_checkpoint: Path) -> None:
    """Two gloo ranks: distributed embed gives the single-process files; DDP training gives the loss
    curve of one process with the same global batch (same micro-batches through accumulation)."""
    driver = work / "ddp_driver.py"
    driver.write_text(
        "import sys\nfrom mobilesam.cli import main\n"
        f"rc = main(['embed', '--model', {str(tiny_checkpoint)!r}, '--data', {str(work / 'images')!r},"
        f" '--out', {str(work / 'emb_ddp')!r}, '--img-size', '{SIZE}', '--workers', '0'])\n"
        f"rc = rc or main(['train', '--data', {str(work / 'images')!r}, '--embeddings', {str(emb_b)!r},"
        f" '--out', {str(work / 'run_ddp')!r}, '--steps', '4', '--batch-size', '4', '--workers', '0',"
        " '--log-every', '1', '--warmup-steps', '2'])\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver)],
        check=False, capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + "\n".join(
        line for line in proc.stderr.splitlines() if "Error" in line or "error" in line)[-3000:]
    for f in emb_t.rglob("*.npy"):
        assert np.array_equal(np.load(f), np.load(work / "emb_ddp" / f.relative_to(emb_t))), f
    ckpt = load_checkpoint(work / "run_ddp" / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2

    train(_cfg(work, emb_b, "run_single", steps=4, batch_size=4, accumulate=2))
    ddp, single = _losses(work / "run_ddp"), _losses(work / "run_single")
    assert len(ddp) == 4 and ddp[-1] < ddp[0]
    np.testing.assert_allclose(ddp, single, rtol=1e-4)


def test_train_errors_are_clear(work: Path, emb_b: Path) -> None:
    with pytest.raises(ValueError, match=r"batch_size: the global batch \(3\) must be a multiple"):
        train(_cfg(work, emb_b, "run_err", batch_size=3, accumulate=2))
    with pytest.raises(ValueError, match="bf16 autocast needs a CUDA device"):
        train(_cfg(work, emb_b, "run_err", precision="bf16", device="cpu"))
    partial = work / "emb_partial"
    partial.mkdir()
    (partial / "meta.json").write_text((emb_b / "meta.json").read_text())
    (partial / "im0.png.npy").write_bytes((emb_b / "im0.png.npy").read_bytes())
    with pytest.raises(FileNotFoundError, match="5 of 6 images .* --allow-missing"):
        train(_cfg(work, partial, "run_err"))
    with pytest.raises(FileNotFoundError, match="not an embeddings folder"):
        train(_cfg(work, work / "images", "run_err"))


def test_cli_train_error_is_one_line(work: Path, emb_b: Path, capsys) -> None:
    rc = main(["train", "--data", str(work / "images"), "--embeddings", str(emb_b), "--out", str(work / "x"),
               "--batch-size", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "batch_size: expected a positive number, got 0" in err


# ---------------------------------------------------------------- assemble


def test_assemble_loads_in_ours_and_official(work: Path, trained_run: Path, tiny_checkpoint: Path, capsys) -> None:
    out = work / "my_mobile_sam.pt"
    assert main(["assemble", "--encoder", str(trained_run / "last.pt"), "--decoder-from", str(tiny_checkpoint),
                 "--out", str(out)]) == 0
    assert "trained at 64 px" in capsys.readouterr().out
    flat = load_state_dict(out)
    trained = load_state_dict(trained_run / "last.pt")
    teacher = load_state_dict(tiny_checkpoint)
    assert flat.keys() == teacher.keys()
    for k, v in flat.items():
        torch.testing.assert_close(v, trained[k] if k.startswith("image_encoder.") else teacher[k], rtol=0, atol=0)

    ours = build_sam(out)
    predictor = SamPredictor(ours)
    predictor.set_embedding(torch.randn(1, 256, 64, 64), (48, 64))
    masks, scores, _ = predictor.predict(point_coords=np.array([[20, 30]]), point_labels=np.array([1]))
    assert masks.shape == (3, 48, 64) and scores.shape == (3,)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam import sam_model_registry
    official = sam_model_registry["vit_t"](checkpoint=str(out))
    for k, v in official.state_dict().items():
        assert torch.equal(v, flat[k]), k


# ---------------------------------------------------------------- val


def test_sample_prompts_follow_the_protocol() -> None:
    a = sample_prompts(300, 400, 20, np.random.default_rng([0, 1]))
    b = sample_prompts(300, 400, 20, np.random.default_rng([0, 1]))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["point"].shape == (20, 1, 2) and a["two_points"].shape == (20, 2, 2) and a["box"].shape == (20, 4)
    d = np.linalg.norm(a["two_points"][:, 0] - a["two_points"][:, 1], axis=1)
    assert (d >= 100).all() and (d <= 500).all()
    for pts in (a["point"], a["two_points"]):
        assert (pts[..., 0] >= 0).all() and (pts[..., 0] < 400).all() and (pts[..., 1] < 300).all()
    box = a["box"]
    assert (box[:, 2] > box[:, 0]).all() and (box[:, 2] <= 400).all() and (box[:, 3] <= 300).all()
    assert sample_prompts(40, 50, 3, np.random.default_rng(0))["two_points"].shape == (0, 2, 2)  # too small


@pytest.mark.slow
def test_val_self_is_one_and_perturbed_is_lower(work: Path, tiny_checkpoint: Path) -> None:
    from oracle import perturb_

    folder = work / "val_images"
    folder.mkdir()
    from skimage import data as skdata

    Image.fromarray(skdata.astronaut()).resize((400, 300)).save(folder / "astronaut.jpg")
    same = validate(tiny_checkpoint, tiny_checkpoint, folder, prompts=2, progress=False)["summary"]
    assert same["miou"] == 1.0 and same["embedding_mse"] == 0.0
    assert all(same[f"miou_{k}"] == 1.0 for k in ("point", "two_points", "box"))
    assert same["prompts"] == {"point": 2, "two_points": 2, "box": 2}

    student = build_sam(tiny_checkpoint)
    perturb_(student.image_encoder, seed=5, scale=0.02)
    torch.save(student.state_dict(), work / "perturbed.pt")
    assert main(["val", "--model", str(work / "perturbed.pt"), "--teacher", str(tiny_checkpoint), "--data",
                 str(folder), "--prompts", "2", "--out", str(work / "val.json")]) == 0
    result = json.loads((work / "val.json").read_text())
    s = result["summary"]
    assert s["embedding_mse"] > 0 and s["miou"] < 1.0
    assert s["prompts"] == same["prompts"]
    assert len(result["images"]) == 1 and len(result["images"][0]["box"]) == 2
