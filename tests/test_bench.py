"""``mobilesam benchmark``'s comparison of masks between backends (the timing itself is not unit-tested:
ratios are measured in benchmarks/, never asserted)."""

from __future__ import annotations

import numpy as np


def test_mask_comparison_reports_a_size_mismatch_instead_of_failing():
    """A backend whose masks have another size (plain OpenVINO bf16 rounds 853 rows to 852) is named in the
    report with both shapes; equal shapes give per-mask IoUs."""
    from mobilesam.bench import compare_masks

    ref = np.zeros((2, 853, 40), bool)
    ref[:, 100:300, 5:20] = True
    iou, note = compare_masks(ref, ref.copy(), "torch", "peer:openvino")
    assert iou == [1.0, 1.0] and note is None
    iou, note = compare_masks(ref, ref[:, :852], "torch", "peer:openvino")
    assert iou is None and note == ("peer:openvino gives masks of shape (2, 852, 40) where torch gives (2, 853, 40): "
                                    "no IoU")
