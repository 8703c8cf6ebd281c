"""Distillation: embed, train (learning, bit-exact resume, torchrun), assemble and val.

Models run at 64 px (a 4x4 embedding) so that training steps take a fraction of a second on CPU;
the teacher of the training tests is a random ViT-B, whose embeddings (unlike a random TinyViT's)
differ from image to image, so a falling loss means the student learned image-specific features.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
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


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("workers", [1, 2])
def test_embed_reports_bad_images_and_embeds_the_others(
    work: Path, tiny_checkpoint: Path, workers: int, tmp_path: Path, monkeypatch, capsys, caplog
) -> None:
    """Issue 13 items 7 and 11: a truncated image and a decompression bomb are each reported in one line,
    every other image (a 1-pixel-high one too) is embedded, the bar ends at 100%, the exit code is 1."""
    images = tmp_path / "images"
    shutil.copytree(work / "images", images)
    _truncate(images / "im2.png")
    Image.fromarray(np.full((100, 100, 3), 90, np.uint8)).save(images / "bomb.png")
    Image.fromarray(np.full((1, 50, 3), 200, np.uint8)).save(images / "thin.png")
    # Over twice the limit PIL refuses to open the file; the loader workers are forked with the low limit.
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 4096)
    out = tmp_path / "emb"
    argv = ["embed", "--model", str(tiny_checkpoint), "--data", str(images), "--out", str(out),
            "--img-size", str(SIZE), "--workers", str(workers)]
    with caplog.at_level(logging.WARNING, logger="mobilesam.train.store"):
        rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 1
    skipped = {r.getMessage().split("'")[1]: r.getMessage() for r in caplog.records if "skipped" in r.getMessage()}
    assert skipped.keys() == {"bomb.png", "im2.png"}
    assert skipped["im2.png"] == "embed: skipped 'im2.png': OSError: image file is truncated"
    assert skipped["bomb.png"].startswith("embed: skipped 'bomb.png': DecompressionBombError: Image size (10000 pixels)")
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith("mobilesam embed: error: 2 image(s) could not be read") and "'bomb.png'" in error
    assert "Traceback" not in captured.err
    assert "8/8" in captured.err.split("\r")[-1]  # the bar counts the bad images as done
    assert "6 computed" in captured.out and "2 failed" in captured.out
    stored = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy"))
    assert stored == sorted(f"{r}.npy" for r in ["im0.png", "im1.png", "im3.png", "im4.png", "sub/im5.png", "thin.png"])

    # A damaged stored file is recomputed by the next run; the bad images are reported again.
    _truncate(out / "im3.png.npy", keep=0.3)
    with caplog.at_level(logging.WARNING, logger="mobilesam.train.store"):
        r = embed_folder(tiny_checkpoint, images, out, img_size=SIZE, workers=workers, progress=False)
    assert (r["computed"], r["skipped"], r["failed"]) == (1, 5, 2)
    assert "1 stored embedding(s) are damaged and will be recomputed" in caplog.text
    assert EmbeddingStore.open(out).read("im3.png").shape == (256, SIZE // 16, SIZE // 16)


def test_train_stops_on_a_damaged_embedding_or_image(work: Path, emb_b: Path, tmp_path: Path, capsys) -> None:
    """Issue 13 item 11: one line naming the bad file and what to do, not a loader traceback."""
    emb = tmp_path / "emb"
    shutil.copytree(emb_b, emb)
    _truncate(emb / "im3.png.npy")
    rc = main(["train", "--data", str(work / "images"), "--embeddings", str(emb), "--out", str(tmp_path / "run"),
               "--steps", "2", "--batch-size", "2", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert f"embeddings: '{emb / 'im3.png.npy'}' is damaged (truncated: " in err
    assert "run 'mobilesam embed' again with the same --data and --out" in err
    assert not (tmp_path / "run" / "last.pt").exists()  # refused before training

    # Damage a stat cannot see (the right size, not an array) is found when the loader reads the file.
    (emb / "im3.png.npy").write_bytes(b"\0" * EmbeddingStore.open(emb).file_bytes)
    with pytest.raises(ValueError, match=r"^embeddings: '.*im3\.png\.npy' is damaged \(not a readable \.npy file") as e:
        train(_cfg(work, emb, str(tmp_path / "run2"), steps=6, workers=1))
    assert "\n" not in str(e.value) and "Caught" not in str(e.value)

    images = tmp_path / "images"
    shutil.copytree(work / "images", images)
    _truncate(images / "im1.png")
    with pytest.raises(ValueError, match=r"^data: cannot read image '.*im1\.png' \(OSError: image file is truncated\)") as e:
        train(_cfg(work, emb_b, str(tmp_path / "run3"), data=str(images), steps=6, workers=1))
    assert "\n" not in str(e.value)


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
    """On CPU with one thread. With more, even two uninterrupted runs differ in the last digits at 256 px
    (multi-threaded kernels do not fix the order of their sums); README says which holds."""
    assert torch.get_num_threads() == 1  # the _one_thread fixture: what makes the result reproducible
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


def test_resume_takes_the_runs_settings(work: Path, emb_b: Path, tmp_path: Path, capsys) -> None:
    """Issue 13 item 19: --resume RUN needs no repeated flags; one that would change the run is refused,
    naming it; options of one call are free. Item 23: no '0.0 img/s' (nor a nan loss) for a resumed run."""
    run = tmp_path / "run"
    start = ["train", "--data", str(work / "images"), "--embeddings", str(emb_b), "--out", str(run),
             "--steps", "4", "--batch-size", "3", "--lr", "0.002", "--warmup-steps", "1", "--workers", "0"]
    assert main([*start, "--stop-after", "2"]) == 0
    capsys.readouterr()
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)  # a run folder that moved: --resume writes where it is now

    rc = main(["train", "--resume", str(run), "--lr", "0.01"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert f"--lr: 0.01 differs from the run's 0.002 (saved in '{run / 'last.pt'}'); drop it to resume" in err
    with pytest.raises(ValueError, match="^batch_size: 2 differs from the run's 3"):
        TrainConfig.resumed(run, batch_size=2)
    fewer = tmp_path / "fewer"
    shutil.copytree(work / "images", fewer, ignore=shutil.ignore_patterns("im0.png"))
    with pytest.raises(ValueError, match="^data: the run .* trained on 6 images, .* has 5 with embeddings now"):
        train(TrainConfig.resumed(run, data=str(fewer)), resume=run)
    on_gpu = tmp_path / "on_gpu.pt"  # as if started on CUDA, where precision "auto" is bf16
    torch.save({**load_checkpoint(run / "last.pt"), "precision": "bf16"}, on_gpu)
    with pytest.raises(ValueError, match="^device: the run .* trained in bf16, this call on cpu would use fp32"):
        train(TrainConfig.resumed(on_gpu, device="cpu"), resume=on_gpu)

    assert main(["train", "--resume", str(moved), "--lr", "0.002", "--save-every", "1", "--log-every", "1"]) == 0
    out = capsys.readouterr().out
    ckpt = load_checkpoint(moved / "last.pt")
    assert ckpt["step"] == 4 and ckpt["config"]["batch_size"] == 3 and ckpt["config"]["lr"] == 0.002
    assert load_checkpoint(run / "last.pt")["step"] == 2  # the original folder is left as it was
    line = next(x for x in out.splitlines() if x.startswith("train: done"))
    rate = float(line.split(" img/s")[0].rsplit(" ", 1)[1])
    seconds = float(line.split("over this call's ")[1].split(" s ")[0])
    assert rate == pytest.approx(2 * 3 / seconds, rel=0.01), line  # this call's 2 steps of 3 images

    # Through the API: the run's settings, nothing repeated; a finished run does nothing and says so.
    r = train(resume=moved)
    assert r["finished"] and r["step"] == 4 and r["images_per_s"] is None and r["loss"] == ckpt["loss"]
    assert main(["train", "--resume", str(moved)]) == 0
    out = capsys.readouterr().out
    assert "the run was already complete at step 4 (loss " in out and "img/s" not in out and "nan" not in out


def test_train_summary_rate_keeps_its_digits(work: Path, emb_b: Path, monkeypatch, capsys) -> None:
    """Issue 13 item 23: a slow run (large images on CPU) printed '0.0 img/s'."""
    import mobilesam.train.trainer as trainer

    summary = {"rank": 0, "finished": True, "step": 10, "loss": 0.5, "seconds": 650.0, "checkpoint": "x/last.pt"}
    summary["images_per_s"] = 10 * 2 / summary["seconds"]
    monkeypatch.setattr(trainer, "train", lambda cfg, resume=None: summary)
    assert main(["train", "--data", str(work / "images"), "--embeddings", str(emb_b)]) == 0
    assert f" {summary['images_per_s']:.3g} img/s " in capsys.readouterr().out


@pytest.mark.slow
def test_torchrun_two_processes(work: Path, emb_b: Path, emb_t: Path, tiny_checkpoint: Path) -> None:
    """Two gloo ranks: distributed embed gives the single-process files (to fp16 rounding); DDP training
    gives the loss curve of one process with the same global batch (same micro-batches through accumulation)."""
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
    # Equal up to one fp16 rounding step: the two runs are separate processes, and oneDNN may pick other
    # kernels (another summation order) in each, which moves a float32 value across an fp16 rounding
    # boundary now and then (CI saw it once in 256x4x4 values).
    files = sorted(emb_t.rglob("*.npy"))
    assert len(files) == 6
    for f in files:
        got = np.load(work / "emb_ddp" / f.relative_to(emb_t)).astype(np.float32)
        np.testing.assert_allclose(got, np.load(f).astype(np.float32), rtol=2**-10, atol=2**-14, err_msg=str(f))
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


def test_val_checks_out_before_validating(work: Path, emb_b: Path, tiny_checkpoint: Path, tmp_path: Path,
                                          monkeypatch, capsys) -> None:
    """Issue 13 item 15: a bad --out is refused before validation (which may take hours) runs, in one
    line naming --out; a good one is written atomically, missing parent folders created."""
    import mobilesam.train.val as val_mod

    ran = []

    def fake_validate(*args, **kwargs):
        ran.append(args)
        summary = {"miou": 0.5, "embedding_mse": 0.1, "images": 1, "prompts": {"point": 1, "two_points": 0, "box": 1}}
        summary.update({"miou_point": 0.5, "miou_two_points": None, "miou_box": 0.5})
        return {"summary": summary, "settings": {}, "images": []}

    monkeypatch.setattr(val_mod, "validate", fake_validate)
    base = ["val", "--model", str(tiny_checkpoint), "--teacher", str(tiny_checkpoint), "--data", str(work / "images"),
            "--embeddings", str(emb_b), "--out"]
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))  # even as root
    bad = {
        str(tmp_path): "is a folder",
        str(work / "images" / "sub" / "im5.png"): "is an input of this run",
        str(tiny_checkpoint): "is an input of this run",
        str(emb_b / "val.json"): "is inside the --embeddings folder",
        str(tiny_checkpoint / "val.json"): f"'{tiny_checkpoint}' is a file, not a folder",
        str(locked / "new" / "val.json"): f"no permission to write in '{locked}'",
    }
    for out, why in bad.items():
        rc = main([*base, out])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and err.startswith("mobilesam val: error: --out: ") and why in err, err
    assert not ran

    out = tmp_path / "new" / "deeper" / "val.json"
    assert main([*base, str(out)]) == 0 and len(ran) == 1
    assert json.loads(out.read_text())["summary"]["miou"] == 0.5
    assert [p.name for p in out.parent.iterdir()] == ["val.json"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
