"""``mobilesam finetune``: a few steps lower the loss, a resumed run equals an uninterrupted one bit for bit
(CPU, one thread), best.pt is the official flat format, LoRA merges exactly, DDP under torchrun gives the
single-process losses, and the CLI runs end to end."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilesam.build import build_sam
from mobilesam.masks import encode_rle
from mobilesam.train import EmbeddingStore, finetune
from mobilesam.train.finetuner import FinetuneConfig, _set_trainable, corrective_clicks, load_checkpoint_of
from mobilesam.train.store import encoder_fingerprint
from mobilesam.train.lora import LoRALinear, add_lora, merged_state_dict
from mobilesam.train.models import build_encoder


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what makes a resumed run bit-identical (and the 2 shared CI cores faster)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Two images with two objects each (COCO)."""
    root = tmp_path_factory.mktemp("ft")
    (root / "img").mkdir()
    rng = np.random.default_rng(1)
    images, anns = [], []
    for k, (h, w) in enumerate([(80, 100), (90, 70)]):
        img = rng.integers(0, 40, (h, w, 3)).astype(np.uint8)
        for j in range(2):
            m = np.zeros((h, w), bool)
            y, x = 10 + 30 * j, 10 + 20 * j
            m[y : y + 25, x : x + 35] = True
            img[m] = (200, 60 + 90 * j, 50)
            anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": 1, "segmentation": encode_rle(m),
                         "area": int(m.sum()), "bbox": [x, y, 35, 25], "iscrowd": 0})
        Image.fromarray(img).save(root / "img" / f"f{k}.png")
        images.append({"id": k + 1, "file_name": f"f{k}.png", "width": w, "height": h})
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                               "categories": [{"id": 1, "name": "thing"}]}))
    return {"root": root, "json": root / "ann.json", "images": root / "img"}


def _kw(data: dict, tiny_checkpoint: Path, **extra) -> dict:
    return dict(data=str(data["json"]), images=str(data["images"]), val_data=str(data["json"]),
                val_images=str(data["images"]), val_max_images=1, model=str(tiny_checkpoint), steps=2, batch_size=2,
                accumulate=2, objects_per_image=1, click_rounds=1, lr=5e-3, workers=0, log_every=1, progress=False,
                **extra)


def _losses(run: Path) -> list[tuple[str, str, str, str]]:
    with open(run / "log.csv", newline="") as f:
        return [(r["step"], r["loss"], r["val_box_miou"], r["val_point_miou"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def store(data, vit_t_pair) -> Path:
    """Stored embeddings for the two images, marked as written by the checkpoint's encoder (the weights of
    ``tiny_checkpoint``). Random values: the loop, not the encoder, is under test, and no encoder runs."""
    path = data["root"] / "emb"
    store = EmbeddingStore.create(path, "test", "vit_t", 1024, encoder_fingerprint(vit_t_pair[1].image_encoder))
    gen = torch.Generator().manual_seed(0)
    for name in ("f0.png", "f1.png"):
        store.write(name, torch.randn(256, 64, 64, generator=gen))
    return path


@pytest.fixture(scope="module")
def full_run(data, tiny_checkpoint, store, tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("ft_runs") / "full"
    return out, finetune(out=str(out), **_kw(data, tiny_checkpoint, embeddings=str(store)))


@pytest.mark.slow
def test_steps_lower_the_loss_and_resume_is_bit_identical(data, tiny_checkpoint, store, full_run, tmp_path) -> None:
    out, full = full_run
    emb = str(store)
    assert full["finished"] and full["loss"] < full["first_logged_loss"]
    assert [v["step"] for v in full["validation"]] == [0, 1, 2]  # the start, then every epoch (1 step)
    kw = _kw(data, tiny_checkpoint, embeddings=emb)
    assert finetune(out=str(tmp_path / "split"), stop_after=1, **kw)["finished"] is False
    finetune(resume=tmp_path / "split", progress=False)
    a, b = load_checkpoint_of(out / "last.pt"), load_checkpoint_of(tmp_path / "split" / "last.pt")
    assert a["step"] == b["step"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i][n], sb[i][n]) for i in sa for n in sa[i])
    assert _losses(out) == _losses(tmp_path / "split")

    # best.pt: the official flat format, loaded by mobile_sam and by this package; only the decoder moved.
    best = torch.load(out / "best.pt", weights_only=True)
    init = torch.load(tiny_checkpoint, weights_only=True)
    assert best.keys() == init.keys()
    assert all(torch.equal(best[k], init[k]) for k in best if not k.startswith("mask_decoder."))
    moved = any(not torch.equal(best[k], init[k]) for k in best if k.startswith("mask_decoder."))
    assert moved == (full["best"]["step"] > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam import sam_model_registry
    official = sam_model_registry["vit_t"](checkpoint=str(out / "best.pt"))
    ours = build_sam(out / "best.pt")
    assert all(torch.equal(official.state_dict()[k], v) for k, v in ours.state_dict().items())

    with pytest.raises(ValueError, match="lr: 0.005 in the checkpoint, 0.001 now"):
        finetune(FinetuneConfig(out=str(tmp_path / "split"), **{**kw, "lr": 1e-3}), resume=tmp_path / "split")
    with pytest.raises(FileExistsError, match="--resume"):
        finetune(out=str(out), **kw)
    with Image.open(out / "curves.png") as im:
        assert im.size == (800, 720)  # loss and validation panels


def test_lora_merges_exactly_and_trains_only_adapters() -> None:
    torch.manual_seed(0)
    enc = build_encoder("vit_t", 64).eval()
    plain = build_encoder("vit_t", 64).eval()
    plain.load_state_dict(enc.state_dict())
    names = add_lora(enc, rank=4, alpha=8)
    assert len(names) == 4 * (2 + 6 + 2) and all(n.endswith(("qkv", "proj", "fc1", "fc2")) for n in names)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(enc(x), plain(x))  # B = 0: the adapted model starts as the original
        for m in enc.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(0, 0.05)
        adapted = enc(x)
        plain.load_state_dict(merged_state_dict(enc))
        torch.testing.assert_close(plain(x), adapted, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(plain(x), build_encoder("vit_t", 64).eval()(x))

    sam = build_sam(None, model_type="vit_t")
    cfg = FinetuneConfig(data="x.json", encoder="lora", lora_rank=2)
    _set_trainable(sam, cfg)
    trained = {n for n, p in sam.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("mask_decoder.") or n.endswith(("lora_a", "lora_b")) for n in trained)
    assert not any(n.startswith("prompt_encoder.") for n in trained)


def test_corrective_clicks_sample_the_error_region() -> None:
    target = torch.zeros(3, 8, 8)
    target[:, 2:6, 2:6] = 1
    valid = torch.ones(3, 8, 8)
    logits = torch.full((3, 8, 8), -1.0)
    logits[0, 2:6, 2:4] = 1  # misses the right half: positive clicks there
    logits[1] = 1  # spills everywhere: negative clicks outside the object
    logits[2, 2:6, 2:6] = 1  # perfect: a positive click in the object
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        coords, labels = corrective_clicks(logits, target, valid, gen)
        cells = (coords // 4).long()
        assert labels.tolist() == [1, 0, 1]
        assert 4 <= cells[0, 0] < 6 and 2 <= cells[0, 1] < 6
        assert not (2 <= cells[1, 0] < 6 and 2 <= cells[1, 1] < 6)
        assert 2 <= cells[2, 0] < 6 and 2 <= cells[2, 1] < 6


def test_frozen_encoder_refuses_image_augmentation_and_foreign_embeddings(data, tiny_checkpoint, store,
                                                                         tmp_path) -> None:
    with pytest.raises(ValueError, match="hflip: with a frozen image encoder"):
        finetune(**{**_kw(data, tiny_checkpoint), "hflip": 0.5})
    with pytest.raises(ValueError, match="embeddings: the image encoder trains"):
        finetune(**{**_kw(data, tiny_checkpoint), "encoder": "lora", "embeddings": "emb"})
    foreign = tmp_path / "foreign"
    shutil.copytree(store, foreign)
    meta = json.loads((foreign / "meta.json").read_text())
    meta["encoder_sha256"] = "0" * 64  # written by another encoder
    (foreign / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"embeddings: .* was not written by this model's image encoder"):
        finetune(**{**_kw(data, tiny_checkpoint), "embeddings": str(foreign)})
    (foreign / "f1.png.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"embeddings: 1 of the 2 images have no embedding .*f1.png"):
        finetune(**{**_kw(data, tiny_checkpoint), "embeddings": str(foreign)})


@pytest.mark.slow
def test_cli_finetune_under_torchrun(data, tiny_checkpoint, store, full_run, tmp_path) -> None:
    """Two gloo ranks through the command line give the losses and validation of one process with the
    same global batch (there through accumulation), and a best.pt."""
    single, _ = full_run
    out = tmp_path / "ddp"
    args = ["finetune", "--data", str(data["json"]), "--images", str(data["images"]), "--val-data", str(data["json"]),
            "--val-images", str(data["images"]), "--val-max-images", "1", "--model", str(tiny_checkpoint),
            "--embeddings", str(store), "--steps", "2", "--batch-size", "2", "--objects-per-image", "1",
            "--click-rounds", "1", "--lr", "5e-3", "--workers", "0", "--log-every", "1", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mobilesam",
         *args], capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "finetune: done, 2 steps" in proc.stdout and "best at step" in proc.stdout
    ddp, one = _losses(out), _losses(single)
    assert [r[0] for r in ddp] == [r[0] for r in one] == ["0", "1", "2"]
    for a, b in zip(ddp, one):
        np.testing.assert_allclose([float(v) if v else np.nan for v in a[1:]], [float(v) if v else np.nan for v in b[1:]],
                                   rtol=1e-4)
    assert load_checkpoint_of(out / "last.pt")["world_size"] == 2
    assert torch.load(out / "best.pt", weights_only=True).keys() == torch.load(tiny_checkpoint, weights_only=True).keys()


def test_yolo_data_yaml_trains_on_train_and_validates_on_val(tmp_path) -> None:
    from test_datasets import _yolo

    from mobilesam.datasets import load_dataset
    from mobilesam.train.finetuner import _default_val

    yaml = _yolo(tmp_path)
    ds = load_dataset(yaml, split="train")
    assert _default_val(FinetuneConfig(data=str(yaml)), ds) == (str(yaml), None, "val")
    given = FinetuneConfig(data=str(yaml), val_data="v.json", val_images="v")
    assert _default_val(given, ds) == ("v.json", "v", None)
    assert _default_val(FinetuneConfig(data=str(yaml)), load_dataset(yaml, split="val")) == (None, None, None)
