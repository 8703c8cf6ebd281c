"""What importing the package costs, where the version comes from, who tunes the allocator, and the
benchmark application (``mobilesam.bench``, ``mobilesam benchmark``).

Import checks run in fresh interpreters: the test process has imported everything long before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "cv2", "pycocotools", "tqdm", "fastapi", "onnx", "onnxruntime", "mobile_sam", "segment_anything")
PUBLIC = {
    "SAM", "Results", "auto_annotate", "build_sam", "detect_model_type", "sam_model_registry", "MODEL_CONFIGS",
    "Sam", "SamPredictor", "WEIGHTS", "CheckpointError", "__version__", "tune_allocator", "register_backend",
    "available_backends", "create_predictor", "SamAutomaticMaskGenerator",
    "val", "finetune",  # issue 19: labelled validation and fine-tuning
}


def fresh(code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a new interpreter (offline, warnings off, MOBILESAM_* as given)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MOBILESAM_MALLOC")}
    environ.update({"MOBILESAM_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **env})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=environ,
                          cwd=ROOT)


def loaded_after(statement: str) -> set[str]:
    """Which of ``HEAVY`` are in sys.modules after ``statement`` in a fresh interpreter."""
    proc = fresh(f"import sys, json\n{statement}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_import_mobilesam_loads_nothing_heavy() -> None:
    assert loaded_after("import mobilesam") == set()


def test_import_modeling_loads_torch_and_nothing_else_heavy() -> None:
    # torch imports tqdm itself (torch.hub) when it is installed: only what goes beyond torch counts.
    torch_brings = loaded_after("import torch")
    loaded = loaded_after("import mobilesam.modeling")
    assert "torch" in loaded
    assert loaded - torch_brings == set()
    assert not {"cv2", "pycocotools", "fastapi", "onnx"} & loaded


def test_public_names_resolve_lazily_and_are_listed() -> None:
    import mobilesam

    assert set(mobilesam.__all__) == PUBLIC
    assert PUBLIC <= set(dir(mobilesam))
    for name in PUBLIC:
        assert getattr(mobilesam, name) is not None, name
    from mobilesam.backends import create_predictor
    from mobilesam.predictor import SamPredictor

    assert mobilesam.create_predictor is create_predictor and mobilesam.SamPredictor is SamPredictor
    # As in the official package: ``from mobile_sam import SamAutomaticMaskGenerator, SamPredictor``.
    from mobilesam.everything import SamAutomaticMaskGenerator

    assert mobilesam.SamAutomaticMaskGenerator is SamAutomaticMaskGenerator
    # Submodules stay reachable as attributes, as when __init__ imported them all.
    assert mobilesam.predictor.SamPredictor is SamPredictor
    with pytest.raises(AttributeError, match="no_such_name"):
        mobilesam.no_such_name  # noqa: B018


def test_export_package_is_lazy_and_keeps_its_names() -> None:
    # The ONNX Runtime backend imports export.graphs / export.manifest without the exporter (and without
    # the circle export/__init__ -> export.predictor -> backends.onnx_predictor).
    assert "onnx" not in loaded_after("import mobilesam.backends.onnx_predictor")
    from mobilesam.export import MANIFEST_NAME, ExportError, OnnxSamPredictor, export_onnx, quantize_int8, read_manifest

    assert all((MANIFEST_NAME, ExportError, OnnxSamPredictor, export_onnx, quantize_int8, read_manifest))


def test_version_is_defined_once() -> None:
    import importlib.metadata

    import mobilesam
    from mobilesam._version import __version__

    assert mobilesam.__version__ == __version__ == importlib.metadata.version("mobilesam")
    project = (ROOT / "pyproject.toml").read_text().split("[project]", 1)[1].split("\n[", 1)[0]
    assert 'dynamic = ["version"]' in project and "\nversion =" not in project
    # No submodule takes it from the package __init__ (which may not be initialised yet when it runs).
    users = [p for p in (ROOT / "src" / "mobilesam").rglob("*.py") if "from .. import __version__" in p.read_text()]
    assert users == []


def test_cli_help_and_argument_errors_import_no_torch() -> None:
    code = (
        "import sys\nfrom mobilesam.cli import COMMAND_MODULES, main\n"
        "for argv in (['--help'], *([c, '--help'] for c in COMMAND_MODULES)):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "code = main(['benchmark', '--rounds', '0'])\n"
        "print('EXIT', code, [m for m in ('torch', 'cv2', 'pycocotools', 'onnx') if m in sys.modules])"
    )
    proc = fresh(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "EXIT 2 []"
    assert "mobilesam benchmark: error: --rounds: expected an integer >= 1, got 0" in proc.stderr


# --------------------------------------------------------------------------------------------------
# The allocator: tuned by the entry points, never by constructing a predictor
# --------------------------------------------------------------------------------------------------
GLIBC = sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver())


def test_tune_allocator_applies_once_and_honours_the_opt_out() -> None:
    code = "import mobilesam\nprint(mobilesam.tune_allocator(), mobilesam.tune_allocator())"
    assert fresh(code, MOBILESAM_MALLOC_TUNING="0").stdout.split() == ["False", "False"]
    on = fresh(code, MOBILESAM_MALLOC_TUNING="1")
    assert on.returncode == 0, on.stderr
    if GLIBC:
        assert on.stdout.split() == ["True", "True"]


# Counts mallopt calls made through ctypes while a predictor is constructed (in a fresh process, so
# nothing has tuned the allocator before).
MALLOPT_SPY = """
import ctypes
from mobilesam.modeling import build_model
from mobilesam.allocator import allocator_tuned
{make}
calls = []
real_cdll = ctypes.CDLL

class SpyCDLL:
    def __init__(self, name, *args, **kwargs):
        self._lib = real_cdll(name, *args, **kwargs)

    def __getattr__(self, attr):
        if attr == "mallopt":
            calls.append(attr)
        return getattr(self._lib, attr)

sam = build_model("vit_t")
ctypes.CDLL = SpyCDLL
try:
    predictor = make(sam)
finally:
    ctypes.CDLL = real_cdll
print(len(calls), allocator_tuned())
"""


@pytest.mark.parametrize(
    "make",
    [
        "from mobilesam.predictor import SamPredictor as make",
        "from mobilesam.backends import create_predictor\nmake = lambda sam: create_predictor(sam, 'torch')",
    ],
    ids=["SamPredictor", "create_predictor"],
)
def test_constructing_a_predictor_changes_nothing_process_wide(make: str) -> None:
    proc = fresh(MALLOPT_SPY.format(make=make), MOBILESAM_MALLOC_TUNING="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "False"], "a predictor retuned the process's allocator"


def test_cli_tunes_the_allocator_at_start(monkeypatch) -> None:
    import mobilesam.cli as cli

    calls = []
    monkeypatch.setattr(cli, "tune_allocator", lambda: calls.append(1) or True)
    assert cli.main(["benchmark", "--runs", "0"]) == 2
    assert calls == [1]


# --------------------------------------------------------------------------------------------------
# The benchmark application
# --------------------------------------------------------------------------------------------------
def test_benchmark_backends_are_the_registry_plus_official(capsys) -> None:
    from mobilesam import bench
    from mobilesam.backends import available_backends, register_backend, unregister_backend
    from mobilesam.cli import main

    from mobilesam.bench_peers import PEERS

    assert bench.benchmark_backends() == [*available_backends(), "official", *PEERS]
    register_backend("counting-test", lambda sam, **options: None)
    try:
        assert "counting-test" in bench.benchmark_backends()
        assert bench._plugin_modules(["torch", "counting-test", "official"]) == [__name__]
    finally:
        unregister_backend("counting-test")
    assert main(["benchmark", "--backends", "torch,nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mobilesam benchmark: error: --backends: expected some of torch,")
    assert err.endswith(",official,peer:onnxruntime,peer:openvino,peer:openvino-f32, got torch,nope")
    for kwargs in ({"rounds": 0}, {"runs": -1}, {"prompts": 1.5}):
        name = next(iter(kwargs))
        with pytest.raises(ValueError, match=f"^{name}: expected an integer >= 1"):
            bench.run_benchmark("mobile_sam.pt", ["torch"], **kwargs)


def test_official_packages_are_imported_only_when_asked_for() -> None:
    from mobilesam import bench

    source = Path(bench.__file__).read_text()
    assert '"-c"' not in source and "exec(" not in source  # no code run from a string
    lines = [line.strip() for line in source.splitlines()]
    official = ("from mobile_sam", "import mobile_sam", "from segment_anything", "import segment_anything", "from sam2")
    official_imports = [i for i, line in enumerate(lines) if line.startswith(official)]
    # Only the functions that build the official models import the official packages.
    bodies = [part.split("\ndef ", 1)[0] for part in source.split("\ndef ")[1:]
              if part.startswith(("official_model(", "_official_sam2_predictor("))]
    assert len(official_imports) == 4 and len(bodies) == 2
    assert all(any(lines[i] in body for body in bodies) for i in official_imports)


@pytest.mark.slow
def test_benchmark_runs_torch_against_official(tiny_checkpoint, tmp_path) -> None:
    from mobilesam.cli import main

    out = tmp_path / "bench.md"
    argv = ["benchmark", "--model", str(tiny_checkpoint), "--backends", "torch", "--vs-official", "--rounds", "1",
            "--runs", "1", "--prompts", "2", "--threads", "1", "--no-batch", "--out", str(out)]
    assert main(argv) == 0
    report = out.read_text()
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    header = cells(next(line for line in report.splitlines() if line.startswith("| backend |")))
    rows = [line for line in report.splitlines() if line.startswith("| torch |") or line.startswith("| official |")]
    assert len(rows) == 2, report
    torch_row, official_row = (dict(zip(header, cells(row))) for row in rows)
    ratio = "vs official: encoder"
    assert torch_row[ratio].endswith("x") and official_row[ratio] == "1.00x"  # encoder time as a ratio to official's
    iou = float(official_row["mask IoU vs torch (mean / min)"].split(" / ")[0])
    assert iou > 0.9  # same weights, same masks
    assert "1 rounds x 1 encoder runs x 2 prompts" in report and "threads: 1" in report
    assert report.rstrip().endswith("Command: mobilesam benchmark " + " ".join(argv[1:]))
