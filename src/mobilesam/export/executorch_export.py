"""Export to ExecuTorch (``.pte``): ``torch.export``, then the XNNPACK partitioner (the CPU backend of
ExecuTorch on Android, iOS and Linux boards); int8 through the XNNPACK quantizer (PT2E).

int8 is dynamic per-channel on the linear layers (attention, MLPs: most of the weights of both graphs):
weights int8 per output channel, activations quantized per call by XNNPACK (no calibration set, so nothing
the user's images could miss); convolutions and everything else stay fp32. Checked, like every edge format, by :mod:`.edge_export`: the fp32 files against PyTorch in
ExecuTorch's Python runtime, the int8 pair by its mask IoU against fp32.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .edge_export import EdgeRuntime, Runner, edge_exporter
from .edge_graphs import GraphPart

INSTALL_HINT = 'pip install "mobilesam[executorch]"'


def import_executorch() -> Any:
    """The ``executorch`` package, or an ImportError that says how to install it."""
    try:
        import executorch
        import executorch.runtime  # noqa: F401 - the runtime is what the backend needs
    except ImportError:
        raise ImportError(f"ExecuTorch export and the executorch backend need the executorch package: "
                          f"{INSTALL_HINT}") from None
    return executorch


def _versions() -> dict[str, str]:
    import_executorch()
    from importlib.metadata import version

    return {"executorch": version("executorch")}


def _quantize_int8(module: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> torch.nn.Module:
    """Dynamic per-channel int8 of the linear layers (PT2E with the XNNPACK quantizer) of an exported copy of
    ``module``."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    # Linear layers only: they hold most weights of both graphs, and XNNPACK's channels-last pass fails on
    # TinyViT's dynamically quantized convolutions (executorch 1.5).
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    quantizer = XNNPACKQuantizer().set_module_type(torch.nn.Linear, config)
    graph = torch.export.export(module, example).module()
    prepared = prepare_pt2e(graph, quantizer)
    prepared(*example)  # dynamic quantization observes nothing; one pass initialises the observers
    return convert_pt2e(prepared)


def _convert(part: GraphPart, path: Path, precision: str) -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = part.module if precision == "fp32" else _quantize_int8(part.module, part.example_inputs)
        program = torch.export.export(module, part.example_inputs)
        # The IR check re-verifies every pass's output (minutes on a big graph); the runtime comparison
        # with PyTorch that follows is the check that matters.
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                           compile_config=EdgeCompileConfig(_check_ir_validity=False))
        buffer = edge.to_executorch().buffer
    path.write_bytes(buffer)


def load_method(path: str | os.PathLike) -> Any:
    """The ``forward`` method of a ``.pte`` in ExecuTorch's Python runtime (XNNPACK kernels)."""
    import_executorch()
    from executorch.runtime import Runtime

    try:
        return Runtime.get().load_program(Path(path)).load_method("forward")
    except (RuntimeError, ValueError) as e:
        from .manifest import ExportError

        raise ExportError(f"executorch model: cannot load '{path}' ({str(e).strip()[:300]}); re-export it with "
                          "'mobilesam export --format executorch'") from None


def runner(path: str | os.PathLike) -> Runner:
    method = load_method(path)

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        outs = method.execute([torch.from_numpy(np.ascontiguousarray(a)) for a in inputs])
        return [o.numpy().copy() for o in outs]  # the runtime reuses its output buffers

    return run


RUNTIME = EdgeRuntime(
    name="executorch",
    title="ExecuTorch",
    suffix=".pte",
    precisions=("int8",),
    convert=_convert,
    load=lambda path, part: runner(path),
    versions=_versions,
    backend="executorch",
    # The image encoder only: the dynamically quantized decoder fails XNNPACK's partitioner (executorch 1.5.1:
    # "Invalid partition, found dependency cycles"); the decoder is the smaller graph anyway.
    reduced_parts=("encoder",),
    notes={"delegate": "XNNPACK (CPU); operators it lacks (LayerNorm) run in ExecuTorch's portable kernels",
           "int8": "image encoder only, dynamic per-channel on linear layers: int8 weights, activations "
                   "quantized per call; the decoder stays fp32"},
)


export_executorch = edge_exporter(RUNTIME, """Export ``model`` (a ``Sam``, a checkpoint path or a weights name) to ExecuTorch ``.pte`` files.

    Writes ``{model_type}_encoder.pte`` (padded square image (1, 3, S, S) -> embedding),
    ``{model_type}_decoder.pte`` (``max_points`` prompt slots -> IoU predictions and low-res masks; see
    :mod:`mobilesam.export.edge_graphs`), an int8 encoder ``.int8.pte`` with ``quantize="int8"``, and
    ``manifest.json``. Returns the manifest; raises :class:`~mobilesam.export.ExportError` when a file
    fails its check (see :mod:`mobilesam.export.edge_export`).
    """)
