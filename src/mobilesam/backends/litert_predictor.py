"""The LiteRT backend: ``LiteRtSamPredictor`` runs the ``.tflite`` files of ``mobilesam export --format
tflite`` in ``ai-edge-litert``'s interpreter (the runtime Android apps embed), by signature name, with the
``SamPredictor`` API. Precisions: ``fp32`` and ``int8`` (the export's dynamic int8 files). Running needs
only ``ai-edge-litert``; exporting (``from_sam``) needs ``litert-torch`` as well."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..export.edge_export import Runner
from .edge_predictor import EdgeSam2Predictor, EdgeSamPredictor


class LiteRtSamPredictor(EdgeSamPredictor):
    """:class:`~mobilesam.backends.edge_predictor.EdgeSamPredictor` on LiteRT's interpreter, ``threads``
    interpreter threads (None: torch's thread count)."""

    runtime = "tflite"
    backend_name = "litert"
    precisions = ("fp32", "int8")

    def _make_runner(self, path: Path, inputs: list[str], outputs: list[str], threads: int | None) -> Runner:
        from ..export.tflite_export import runner

        entry = next(e for e in self.manifest["files"].values() if e["path"] == path.name)
        return runner(path, inputs, outputs, threads, output_shapes=[entry["outputs"][n]["shape"] for n in outputs])

    @classmethod
    def _exporter(cls) -> Callable[..., dict[str, Any]]:
        from ..export.tflite_export import export_tflite

        return export_tflite

    @classmethod
    def _runtime_version(cls) -> str:
        from importlib.metadata import version

        return "litert" + version("ai-edge-litert")


class LiteRtSam2Predictor(EdgeSam2Predictor, LiteRtSamPredictor):
    """The same runtime over a SAM 2 / SAM 2.1 export (:class:`~mobilesam.backends.edge_predictor.EdgeSam2Predictor`)."""


LiteRtSamPredictor.family_classes = {"sam": LiteRtSamPredictor, "sam2": LiteRtSam2Predictor}
