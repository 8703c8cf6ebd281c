"""One reader and one writer per label format; every part of mobilesam that writes labels uses these.

- :mod:`~mobilesam.formats.yolo`: YOLO segmentation ``.txt`` (``class x1 y1 ...``, ``.6f`` clipped to [0, 1])
- :mod:`~mobilesam.formats.coco`: COCO instance-segmentation JSON with RLE masks
- :mod:`~mobilesam.formats.classes`: ``classes.txt`` (one class name per line)
- :mod:`~mobilesam.formats.data_yaml`: the Ultralytics ``data.yaml`` (no YAML dependency)

Import the module you need (``from mobilesam.formats import yolo``); this package imports none of
them itself, so that reading ``classes.txt`` does not load OpenCV.
"""

__all__ = ["classes", "coco", "data_yaml", "yolo"]
