"""Validation on labelled data (``mobilesam val --data``): box and interactive-click mIoU, NoC@85/90 and
COCO mask AP, overall and by object size.

    import mobilesam
    r = mobilesam.val("mobile_sam.pt", "coco/annotations/instances_val2017.json", images="coco/val2017",
                      out="runs/val.json")
    r["summary"]["box_miou"]["all"], r["summary"]["point_miou"]["1"]["all"]

The student-vs-teacher measure of the MobileSAM paper is :func:`mobilesam.train.validate`.
"""

from .clicks import first_click, next_click
from .protocols import ClickRun, box_ious, click_ious, mask_box
from .report import format_table
from .runner import val

__all__ = ["ClickRun", "box_ious", "click_ious", "first_click", "format_table", "mask_box", "next_click", "val"]
