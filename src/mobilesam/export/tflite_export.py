"""Export to LiteRT (TensorFlow Lite, ``.tflite``) with ``litert-torch``; int8 with the LiteRT quantizer
(``ai-edge-quantizer``).

The graphs are converted with named inputs and outputs (one ``serving_default`` signature whose names are
those of the manifest), so an app calls them by name. int8 is the quantizer's dynamic recipe: int8
weights, activations quantized per call by the kernels (no calibration set), BATCH_MATMUL in float (see
:func:`int8_recipe`). Checked by
:mod:`.edge_export` in ``ai-edge-litert``'s interpreter: fp32 against PyTorch, int8 by its mask IoU.

Running an exported folder (the ``litert`` backend) needs only ``ai-edge-litert``; converting needs
``litert-torch``, which brings JAX and pins older typing-extensions / pydantic, so its extra
``mobilesam[tflite]`` is best installed in its own environment.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .edge_export import EdgeRuntime, Runner, edge_exporter
from .edge_graphs import GraphPart

INSTALL_HINT = 'pip install "mobilesam[tflite]"'
SIGNATURE = "serving_default"


def import_litert() -> Any:
    """``ai_edge_litert.interpreter`` (the runtime), or an ImportError that says how to install it."""
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        raise ImportError('the litert backend needs the ai-edge-litert package: pip install ai-edge-litert (or '
                          f'{INSTALL_HINT} to export as well)') from None
    return interpreter


def import_litert_torch() -> Any:
    """``litert_torch`` (the converter), or an ImportError that says how to install it."""
    try:
        import litert_torch
    except ImportError:
        raise ImportError(f"TFLite export needs the litert-torch package: {INSTALL_HINT}") from None
    return litert_torch


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import_litert_torch()
    import_litert()
    return {name: version(name) for name in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer")}


class NamedGraph(nn.Module):
    """``part.module`` with keyword inputs and a dict of outputs: the converter names the signature's
    tensors after them."""

    def __init__(self, module: nn.Module, outputs: Sequence[str]) -> None:
        super().__init__()
        self.module = module
        self.output_names = list(outputs)

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.output_names, self.module(*inputs.values())))


def _quiet() -> None:
    # TensorFlow's and absl's start-up lines (oneDNN notes, logging set-up) are noise for the user.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.ERROR)


def _convert(part: GraphPart, path: Path, precision: str) -> None:
    _quiet()
    litert_torch = import_litert_torch()
    fp32 = path if precision == "fp32" else path.with_name(path.name + ".fp32.tmp")
    # litert-torch's step log and the quantizer's progress bars and summary would bury the exporter's bar.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        kwargs = dict(zip(part.input_names, part.example_inputs))
        model = litert_torch.convert(NamedGraph(part.module, part.output_names).eval(), (), kwargs)
        model.export(str(fp32))
    if precision == "fp32":
        return
    from ai_edge_quantizer import quantizer

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            result = quantizer.Quantizer(str(fp32), int8_recipe()).quantize()
            result.export_model(str(path))
    finally:
        fp32.unlink(missing_ok=True)


def int8_recipe() -> Any:
    """The quantizer's dynamic int8 recipe (int8 weights, activations quantized per call), with every
    BATCH_MATMUL kept in float: LiteRT's kernel takes an int8 operand on the right only, and the quantizer
    also quantizes constants that land on the left (SAM ViT-B's relative-position tables), which gave a
    file LiteRT refuses to prepare ("BATCH_MATMUL failed to prepare"; measured: vit_b encoder, 103 MB int8
    that does not run, 110 MB with BATCH_MATMUL in float, which does)."""
    from ai_edge_quantizer import qtyping, recipe_manager

    manager = recipe_manager.RecipeManager()
    manager.add_dynamic_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=8)
    manager.add_quantization_config(regex=".*", operation_name=qtyping.TFLOperationName.BATCH_MATMUL,
                                    algorithm_key="no_quantize")
    return manager.get_quantization_recipe()


def runner(path: str | os.PathLike, part_inputs: Sequence[str], part_outputs: Sequence[str],
           threads: int | None = None, output_shapes: Sequence[Sequence[int]] | None = None) -> Runner:
    """Run a converted graph by name in ``ai-edge-litert``'s interpreter: inputs in ``part_inputs`` order,
    outputs in ``part_outputs`` order, given ``output_shapes`` (the interpreter hands a (1, C, H, W)
    output back as (C, H, W))."""
    _quiet()
    interpreter = import_litert()
    try:
        model = interpreter.Interpreter(model_path=str(path), num_threads=int(threads or torch.get_num_threads()))
        signature = model.get_signature_runner(SIGNATURE)
        names = model.get_signature_list()[SIGNATURE]
    except (ValueError, RuntimeError, KeyError) as e:
        from .manifest import ExportError

        raise ExportError(f"litert model: cannot load '{path}' ({str(e).strip()[:300]}); re-export it with "
                          "'mobilesam export --format tflite'") from None
    if sorted(names["inputs"]) != sorted(part_inputs) or not set(part_outputs) <= set(names["outputs"]):
        from .manifest import ExportError

        raise ExportError(f"litert model: '{path}' is not the expected graph: inputs {names['inputs']} and outputs "
                          f"{names['outputs']}, expected {list(part_inputs)} and {list(part_outputs)}")

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = signature(**{n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(part_inputs, inputs)})
        got = [np.array(out[n]) for n in part_outputs]
        return got if output_shapes is None else [g.reshape(shape) for g, shape in zip(got, output_shapes)]

    return run


RUNTIME = EdgeRuntime(
    name="tflite",
    title="LiteRT",
    suffix=".tflite",
    precisions=("int8",),
    convert=_convert,
    load=lambda path, part: runner(path, part.input_names, part.output_names,
                                   output_shapes=[v["shape"] for v in part.outputs.values()]),
    versions=_versions,
    backend="litert",
    notes={"signature": f"one signature, {SIGNATURE!r}, with the manifest's input and output names",
           "int8": "ai-edge-quantizer's dynamic int8 (dynamic_wi8_afp32): int8 weights, activations quantized per "
                   "call; BATCH_MATMUL kept in float"},
)


export_tflite = edge_exporter(RUNTIME, """Export ``model`` (a ``Sam``, a checkpoint path or a weights name) to LiteRT ``.tflite`` files:
    ``{model_type}_encoder.tflite``, ``{model_type}_decoder.tflite`` (the graphs of
    :mod:`mobilesam.export.edge_graphs`), ``.int8.tflite`` variants with ``quantize="int8"``, and
    ``manifest.json``. Returns the manifest; raises :class:`~mobilesam.export.ExportError` when a file
    fails its check.
    """)
