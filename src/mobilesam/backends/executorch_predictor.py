"""The ExecuTorch backend: ``ExecuTorchSamPredictor`` runs the ``.pte`` files of ``mobilesam export
--format executorch`` in ExecuTorch's Python runtime (the XNNPACK kernels a phone runs), with the
``SamPredictor`` API. Precisions: ``fp32`` and ``int8`` (the export's dynamic int8 files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..export.edge_export import Runner
from .edge_predictor import EdgeSam2Predictor, EdgeSamPredictor


class ExecuTorchSamPredictor(EdgeSamPredictor):
    """:class:`~mobilesam.backends.edge_predictor.EdgeSamPredictor` on ExecuTorch. ``threads`` is not
    used: the XNNPACK delegate of the Python runtime sizes its own thread pool."""

    runtime = "executorch"
    backend_name = "executorch"
    precisions = ("fp32", "int8")

    def _make_runner(self, path: Path, inputs: list[str], outputs: list[str], threads: int | None) -> Runner:
        from ..export.executorch_export import runner

        return runner(path)

    @classmethod
    def _exporter(cls) -> Callable[..., dict[str, Any]]:
        from ..export.executorch_export import export_executorch

        return export_executorch

    @classmethod
    def _runtime_version(cls) -> str:
        from ..export.executorch_export import _versions

        return "et" + _versions()["executorch"]


class ExecuTorchSam2Predictor(EdgeSam2Predictor, ExecuTorchSamPredictor):
    """The same runtime over a SAM 2 / SAM 2.1 export (:class:`~mobilesam.backends.edge_predictor.EdgeSam2Predictor`)."""


ExecuTorchSamPredictor.family_classes = {"sam": ExecuTorchSamPredictor, "sam2": ExecuTorchSam2Predictor}
