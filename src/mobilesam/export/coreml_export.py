"""Export to Core ML (``.mlpackage``, ML program) with ``coremltools``; fp16 as the reduced precision
(what the Apple neural engine runs).

Core ML runs only on macOS and iOS: on Linux the conversion is produced and validated as far as
``coremltools`` can without its runtime. The package is loaded back (``MLModel(...,
skip_model_load=True)``), its spec must have the manifest's input names, shapes and types and its output
names, and the ML program must hold operations. Predictions, and so the comparison with PyTorch, need a
Mac: ``MLModel(path).predict({...})`` there.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .edge_export import EdgeRuntime, Runner, edge_exporter
from .edge_graphs import GraphPart
from .manifest import ExportError

INSTALL_HINT = 'pip install "mobilesam[coreml]"'
DEPLOYMENT_TARGET = "iOS17"  # ML programs with fp16 and fp32 compute; iOS 17 / macOS 14 and later


def import_coremltools() -> Any:
    """``coremltools``, or an ImportError that says how to install it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import coremltools
    except ImportError:
        raise ImportError(f"Core ML export needs the coremltools package: {INSTALL_HINT}") from None
    return coremltools


def _versions() -> dict[str, str]:
    return {"coremltools": import_coremltools().__version__}


def _convert(part: GraphPart, path: Path, precision: str) -> None:
    ct = import_coremltools()
    # coremltools' own progress bars (one per pass pipeline) would bury the exporter's one.
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.export.export(part.module, part.example_inputs).run_decompositions({})
        model = ct.convert(
            program,
            # float32 in and out at every precision: an fp16 package computes in fp16 but keeps the interface.
            inputs=[ct.TensorType(name=n, shape=tuple(v["shape"]), dtype=np.float32) for n, v in part.inputs.items()],
            outputs=[ct.TensorType(name=n, dtype=np.float32) for n in part.outputs],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
            minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
        )
    model.save(str(path))


def describe_spec(path: str | os.PathLike) -> dict[str, Any]:
    """Inputs (name -> shape, type), outputs (name -> shape) and the number of operations of a saved
    ``.mlpackage``, read without Core ML's runtime."""
    ct = import_coremltools()
    try:
        model = ct.models.MLModel(str(path), skip_model_load=True)
    except Exception as e:  # noqa: BLE001 - coremltools raises its own and protobuf's errors
        raise ExportError(f"coreml model: cannot load '{path}' in coremltools ({str(e).strip()[:300]})") from None
    spec = model.get_spec()
    types = {v: k for k, v in ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.items()}
    inputs = {f.name: {"shape": list(f.type.multiArrayType.shape), "dtype": types[f.type.multiArrayType.dataType]}
              for f in spec.description.input}
    outputs = {f.name: {"shape": list(f.type.multiArrayType.shape)} for f in spec.description.output}
    functions = spec.mlProgram.functions
    ops = sum(len(block.operations) for fn in functions.values() for block in fn.block_specializations.values())
    return {"spec_version": int(spec.specificationVersion), "inputs": inputs, "outputs": outputs, "operations": ops}


def validate(path: Path, part: GraphPart) -> dict[str, Any]:
    """The spec of ``path`` has the part's inputs (names, shapes, float32) and outputs, and operations."""
    got = describe_spec(path)
    want_in = {n: v["shape"] for n, v in part.inputs.items()}
    have_in = {n: v["shape"] for n, v in got["inputs"].items()}
    bad_types = [n for n, v in got["inputs"].items() if v["dtype"] != "FLOAT32"]
    if have_in != want_in or bad_types or list(got["outputs"]) != part.output_names or got["operations"] == 0:
        raise ExportError(f"export: the Core ML package {path.name} has inputs {got['inputs']}, outputs "
                          f"{list(got['outputs'])} and {got['operations']} operations; expected float32 inputs "
                          f"{want_in} and outputs {part.output_names}")
    return {"validated": "spec (inputs, outputs, operations) read back with coremltools; predictions need macOS",
            "operations": got["operations"], "spec_version": got["spec_version"]}


def _load(path: Path, part: GraphPart) -> Runner | None:
    """Core ML's runtime exists only on macOS; elsewhere the export is validated instead of run."""
    if sys.platform != "darwin":
        return None
    ct = import_coremltools()
    # CPU only: the GPU and the neural engine may compute an fp32 program in fp16, which the fp32 check refuses.
    model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)

    def run(inputs):  # type: ignore[no-untyped-def]
        out = model.predict(dict(zip(part.input_names, inputs)))
        return [out[n] for n in part.output_names]

    return run


RUNTIME = EdgeRuntime(
    name="coreml",
    title="Core ML",
    suffix=".mlpackage",
    precisions=("fp16",),
    convert=_convert,
    load=_load,
    validate=validate,
    versions=_versions,
    backend="",
    notes={"runtime": "Core ML runs on macOS / iOS only; on Linux the conversion is validated, not run",
           "deployment_target": DEPLOYMENT_TARGET},
)


export_coreml = edge_exporter(RUNTIME, """Export ``model`` (a ``Sam``, a checkpoint path or a weights name) to Core ML ML programs:
    ``{model_type}_encoder.mlpackage``, ``{model_type}_decoder.mlpackage`` (the graphs of
    :mod:`mobilesam.export.edge_graphs`), ``.fp16.mlpackage`` variants with ``quantize="fp16"``, and
    ``manifest.json``. On Linux each package is validated with coremltools (see the module doc), on macOS
    it is also run and compared with PyTorch.
    """)
