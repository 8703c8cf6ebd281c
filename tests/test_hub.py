"""The model-family registry: what it holds, detection by key signature, and a family added at run time."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import torch
from torch import nn

from mobilesam import CheckpointError, build_sam, detect_model_type, weights
from mobilesam.hub import (
    SAM2_FAMILY,
    SAM_FAMILY,
    ModelFamily,
    Preprocessing,
    WeightsEntry,
    closest_architecture,
    detect_family,
    families,
    family_for_size,
    family_of,
    find_weights,
    get_family,
    register_family,
    unregister_family,
)
from mobilesam.modeling import MODEL_CONFIGS, Sam, build_model
from mobilesam.transforms import ResizeLongestSide, transform_for

SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)


def _meta_state_dict(size: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return build_model(size).state_dict()


# --- what the registry holds --------------------------------------------------


def test_sam_family_entry() -> None:
    assert families()[0] is SAM_FAMILY and get_family("sam") is SAM_FAMILY
    assert SAM_FAMILY.model_class is Sam
    assert SAM_FAMILY.sizes is MODEL_CONFIGS and list(SAM_FAMILY.sizes) == ["vit_t", "vit_b", "vit_l", "vit_h"]
    assert SAM_FAMILY.preprocessing == Preprocessing("longest_side", 1024, SAM_MEAN, SAM_STD)
    assert dict(SAM_FAMILY.feature_layout) == {"image_embeddings": (256, 64, 64)}
    assert [SAM_FAMILY.display_name(s) for s in SAM_FAMILY.sizes] == [
        "MobileSAM (vit_t)", "SAM (vit_b)", "SAM (vit_l)", "SAM (vit_h)"
    ]
    with pytest.raises(ValueError, match="size: expected one of .*got 'vit_x'"):
        SAM_FAMILY.display_name("vit_x")


def test_weights_index_is_the_families_weights() -> None:
    listed = SAM_FAMILY.weights + SAM2_FAMILY.weights
    assert weights.WEIGHTS == {e.name: e for e in listed}
    assert weights.ALIASES == {a: e.name for e in listed for a in e.aliases}
    assert {e.family for e in SAM_FAMILY.weights} == {"sam"}
    assert {e.family for e in SAM2_FAMILY.weights} == {"sam2"}
    assert find_weights("sam_b.pt") is weights.WEIGHTS["sam_vit_b_01ec64.pth"]


def test_built_model_matches_its_preprocessing() -> None:
    sam = build_model("vit_t")
    pre = family_of(sam).preprocessing
    assert sam.img_size == pre.image_size
    assert torch.equal(sam.pixel_mean.flatten(), torch.tensor(pre.pixel_mean))
    assert torch.equal(sam.pixel_std.flatten(), torch.tensor(pre.pixel_std))


@pytest.mark.parametrize("size", list(MODEL_CONFIGS))
def test_every_sam_size_is_detected_from_its_own_build(size: str) -> None:
    sd = _meta_state_dict(size)
    assert detect_family(sd) == (SAM_FAMILY, size)
    encoder_only = {k: v for k, v in sd.items() if k.startswith("image_encoder.")}
    assert detect_family(encoder_only) == (SAM_FAMILY, size)  # what train/ passes


def test_nothing_is_detected_in_an_unrelated_state_dict() -> None:
    sd = {"conv1.weight": torch.zeros(3, 3), "image_encoder.pos_embed": torch.zeros(())}
    assert detect_family(sd) is None
    assert closest_architecture(sd) is None


def test_family_of_and_family_for_size() -> None:
    class Derived(Sam):
        pass

    with torch.device("meta"):
        base = build_model("vit_b")
    derived = Derived(base.image_encoder, base.prompt_encoder, base.mask_decoder)
    assert family_of(derived) is SAM_FAMILY
    with pytest.raises(TypeError, match="model: expected a module of a registered family .*got Linear"):
        family_of(nn.Linear(1, 1))
    assert family_for_size("vit_h") is SAM_FAMILY
    with pytest.raises(ValueError, match="model_type: expected one of .*got 'vit_x'"):
        family_for_size("vit_x")


def test_checkpoint_missing_a_signature_key_is_a_mismatch_of_its_architecture(tmp_path: Path) -> None:
    """Issue 13 item 13: the nearest architecture is named, with the key that is missing."""
    sd = build_model("vit_t").state_dict()
    del sd["image_encoder.patch_embed.seq.0.c.weight"]
    path = tmp_path / "one_key_short.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="does not match the vit_t architecture; missing keys: "
                       r"image_encoder\.patch_embed\.seq\.0\.c\.weight;"):
        build_sam(path)


# --- preprocessing and transforms ---------------------------------------------


def test_preprocessing_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="resize: expected one of .*got 'stretch'"):
        Preprocessing("stretch", 1024, SAM_MEAN, SAM_STD)
    with pytest.raises(ValueError, match="image_size: expected a positive int, got 0"):
        Preprocessing("square", 0, SAM_MEAN, SAM_STD)
    with pytest.raises(ValueError, match=r"pixel_std: expected 3 numbers \(R, G, B\), got \(1.0, 2.0\)"):
        Preprocessing("square", 1024, SAM_MEAN, (1.0, 2.0))
    assert Preprocessing("square", 8, [0, 0, 0], [1, 1, 1]).pixel_mean == (0.0, 0.0, 0.0)


def test_transform_for() -> None:
    transform = transform_for(SAM_FAMILY.preprocessing)
    assert isinstance(transform, ResizeLongestSide) and transform.target_length == 1024
    from mobilesam.transforms import ResizeSquare

    assert isinstance(transform_for(Preprocessing("square", 1024, SAM_MEAN, SAM_STD)), ResizeSquare)
    with pytest.raises(ValueError, match="expected resize 'longest_side' or 'square', got None"):
        transform_for(object())


# --- a second family registered at run time -----------------------------------


class Blob(nn.Module):
    """A stand-in for another family: its own class and its own parameter names."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.blob_stem = nn.Linear(3, width)
        self.blob_head = nn.Linear(width, 1)


_BLOB_WIDTHS = {"blob_s": 4, "blob_m": 8}


def _build_blob(size: str) -> Blob:
    return Blob(_BLOB_WIDTHS[size]).eval()


def _detect_blob(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    stem = state_dict.get("blob_stem.weight")
    if stem is None or stem.ndim != 2:
        return None
    return next((size for size, width in _BLOB_WIDTHS.items() if width == stem.shape[0]), None)


@pytest.fixture
def blob_family() -> Iterator[ModelFamily]:
    family = ModelFamily(
        name="blob",
        title="Blob",
        model_class=Blob,
        sizes=_BLOB_WIDTHS,
        build=_build_blob,
        detect=_detect_blob,
        preprocessing=Preprocessing("square", 64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        feature_layout={"level0": (8, 16, 16), "level1": (8, 8, 8)},
        weights=(
            WeightsEntry(
                name="blob_m_v1.pt",
                model_type="blob_m",
                url="https://example.invalid/blob_m_v1.pt",
                sha256="0" * 64,
                size_mb=0.001,
                description="test family",
                aliases=("blob_m.pt",),
            ),
        ),
    )
    before = (families(), dict(weights.WEIGHTS), dict(weights.ALIASES))
    register_family(family)
    try:
        yield family
    finally:
        unregister_family("blob")
    assert (families(), weights.WEIGHTS, weights.ALIASES) == before


def test_registered_family_is_detected_and_built_from_a_file(blob_family: ModelFamily, tmp_path: Path) -> None:
    saved = _build_blob("blob_m")
    path = tmp_path / "anything.bin"
    torch.save({"model": saved.state_dict()}, path)
    model = build_sam(path)
    assert type(model) is Blob and not model.training
    assert torch.equal(model.blob_stem.weight, saved.blob_stem.weight)
    assert family_of(model) is blob_family
    assert detect_model_type(saved.state_dict()) == "blob_m"
    assert type(build_sam(model_type="blob_s")) is Blob
    # Another family's checkpoint is still recognised, and the error lists both families.
    assert detect_family(_meta_state_dict("vit_t")) == (SAM_FAMILY, "vit_t")
    torch.save({"x.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a SAM / MobileSAM / SAM 2 / Blob checkpoint.*blob_s, blob_m"):
        build_sam(tmp_path / "other.pt")


def test_registered_family_weights_resolve_by_name(
    blob_family: ModelFamily, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOBILESAM_HOME", str(tmp_path))
    torch.save(_build_blob("blob_m").state_dict(), tmp_path / "blob_m_v1.pt")
    entry = weights.get_weights_entry("blob_m.pt")
    assert entry is not None and entry.family == "blob" and entry.model_type == "blob_m"
    assert weights.resolve_weights("blob_m.pt") == tmp_path / "blob_m_v1.pt"
    assert type(build_sam("blob_m.pt")) is Blob


def test_unregistered_family_is_forgotten(blob_family: ModelFamily, tmp_path: Path) -> None:
    path = tmp_path / "blob.pt"
    torch.save(_build_blob("blob_s").state_dict(), path)
    unregister_family("blob")
    try:
        assert weights.get_weights_entry("blob_m.pt") is None
        with pytest.raises(CheckpointError, match="not a SAM / MobileSAM / SAM 2 checkpoint"):
            build_sam(path)
    finally:
        register_family(blob_family)  # the fixture unregisters it again


def test_registration_conflicts(blob_family: ModelFamily) -> None:
    with pytest.raises(ValueError, match="'blob' is already registered; pass replace=True"):
        register_family(blob_family)
    register_family(blob_family, replace=True)
    assert families().count(blob_family) == 1
    clash = ModelFamily(
        name="clash", title="Clash", model_class=Blob, sizes=_BLOB_WIDTHS, build=_build_blob, detect=_detect_blob,
        preprocessing=blob_family.preprocessing, feature_layout=blob_family.feature_layout,
        weights=(WeightsEntry("x.pt", "blob_s", "https://example.invalid/x.pt", "0" * 64, 1.0, "", ("sam_b.pt",)),),
    )
    with pytest.raises(ValueError, match=r"weights names \['sam_b.pt'\] are already known for another family"):
        register_family(clash)
    assert "clash" not in [f.name for f in families()] and "x.pt" not in weights.WEIGHTS


def test_family_entry_is_checked() -> None:
    with pytest.raises(ValueError, match=r"family 'bad': sizes \['blob_x'\] are not among"):
        ModelFamily(
            name="bad", title="Bad", model_class=Blob, sizes=_BLOB_WIDTHS, build=_build_blob, detect=_detect_blob,
            preprocessing=SAM_FAMILY.preprocessing, feature_layout={"f": (1,)},
            weights=(WeightsEntry("y.pt", "blob_x", "https://example.invalid/y.pt", "0" * 64, 1.0, ""),),
        )


# --- import weight ------------------------------------------------------------


def test_hub_weights_and_build_import_light() -> None:
    """The registry, weights and build modules add none of the heavy optional modules to torch's own.

    The package's own ``__init__`` is bypassed so that only these modules' imports are measured, and
    what ``import torch`` loads by itself (some versions load tqdm through torch.hub) is not counted.
    """
    code = (
        "import importlib.util, sys, types\n"
        "heavy = ('cv2', 'pycocotools', 'tqdm', 'fastapi', 'onnx', 'onnxruntime')\n"
        "import torch\n"
        "before = {m for m in heavy if m in sys.modules}\n"
        "spec = importlib.util.find_spec('mobilesam')\n"
        "pkg = types.ModuleType('mobilesam'); pkg.__path__ = list(spec.submodule_search_locations)\n"
        "sys.modules['mobilesam'] = pkg\n"
        "import mobilesam.hub, mobilesam.weights, mobilesam.build, mobilesam.transforms\n"
        "print(sorted(m for m in heavy if m in sys.modules and m not in before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
