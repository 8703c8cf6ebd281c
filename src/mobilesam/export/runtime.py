"""ONNX Runtime sessions: the optional import, session options, and readable errors for bad files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from .manifest import ExportError

INSTALL_HINT = 'pip install "mobilesam[onnx]"'


def import_onnxruntime() -> Any:
    """``onnxruntime``, or an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(f"the onnxruntime backend needs the onnxruntime package: {INSTALL_HINT}") from None
    return onnxruntime


def make_session(
    path: str | os.PathLike,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
) -> Any:
    """An ``InferenceSession`` with full graph optimisation; a file that is not ONNX gives an ExportError."""
    ort = import_onnxruntime()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"onnx model: file '{p}' not found")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(p), opts, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(
            f"onnx model: cannot load '{p}' as an ONNX model ({type(e).__name__}: {str(e).strip()[:300]}); "
            "re-export it with 'mobilesam export --model mobile_sam.pt --format onnx'"
        ) from None


def check_io(session: Any, path: str | os.PathLike, role: str, inputs: Sequence[str], outputs: Sequence[str]) -> None:
    """Fail clearly when a valid ONNX file is not the graph expected (a foreign model)."""
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    if got_in != list(inputs) or not set(outputs) <= set(got_out):
        raise ExportError(
            f"onnx model: '{path}' is not a MobileSAM {role}: expected inputs {list(inputs)} and outputs "
            f"{list(outputs)}, got inputs {got_in} and outputs {got_out}"
        )
